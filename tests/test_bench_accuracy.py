"""``bench/accuracy.py``'s protocol: every choice from the train split only, and on the
hard set each fold scored on test-like views of its validation rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
accuracy = pytest.importorskip("accuracy")

HEADS = [{"kernel": "linear", "C": 1.0}, {"kernel": "rbf", "C": 10.0}]


def _problem(seed: int = 0):
    """Two variants of 3-class features. ``steady`` separates the classes on the rows
    and on their views; ``turned`` separates the rows better, but its views (the rows
    "turned") carry no class at all, as orientation-bound features of a turned patch."""
    rng = np.random.default_rng(seed)
    n, views_per_row = 90, 1
    y = np.repeat(np.array(["a", "b", "c"]), n // 3)
    centre = {"a": 0.0, "b": 1.0, "c": 2.0}
    signal = np.array([centre[c] for c in y])
    steady = signal[:, None] + rng.normal(scale=0.45, size=(n, 2))
    turned = signal[:, None] + rng.normal(scale=0.05, size=(n, 2))
    source = np.repeat(np.arange(n), views_per_row)
    steady_views = signal[source, None] + rng.normal(scale=0.45, size=(len(source), 2))
    turned_views = rng.normal(loc=1.0, scale=0.8, size=(len(source), 2))
    test = rng.permutation(n)[:30]
    train = np.setdiff1d(np.arange(n), test)
    # views of the train rows only, indexed by their position in the train split
    keep = np.isin(source, train)
    position = {row: k for k, row in enumerate(train)}
    view_source = np.array([position[r] for r in source[keep]])
    variants = {"steady": (steady[train], steady[test]), "turned": (turned[train], turned[test])}
    views = {"steady": steady_views[keep], "turned": turned_views[keep]}
    return variants, y[train], y[test], views, y[source[keep]], view_source


def test_test_labels_change_nothing_but_the_test_accuracy():
    variants, y_train, y_test, *_ = _problem()
    folds = accuracy.cv_folds(y_train, 1, 3)
    first = accuracy.select_and_test(variants, y_train, y_test, folds, 1, HEADS)
    permuted = np.random.default_rng(1).permutation(y_test)
    second = accuracy.select_and_test(variants, y_train, permuted, folds, 1, HEADS)
    assert first["accuracy"] != second["accuracy"]
    del first["accuracy"], second["accuracy"]
    assert first == second


def test_folds_scored_on_test_like_views_choose_the_variant_that_holds_on_them():
    variants, y_train, y_test, views, view_labels, view_source = _problem()
    folds = accuracy.cv_folds(y_train, 1, 3)
    on_rows = accuracy.select_and_test(variants, y_train, y_test, folds, 1, HEADS)
    on_views = accuracy.select_and_test(variants, y_train, y_test, folds, 1, HEADS, views,
                                        view_labels, view_source)
    assert on_rows["recipe"].startswith("turned")          # the rows alone prefer it
    assert on_views["recipe"].startswith("steady")
    turned = on_views["variants_cv"]["turned"]
    assert turned["cv"] < 0.6 < turned["cv_rows"]          # its rows CV is printed beside
    # --augment: the fits also train on the views of their rows; the choice still holds
    augmented = accuracy.select_and_test(variants, y_train, y_test, folds, 1, HEADS, views,
                                         view_labels, view_source, augment=True)
    assert augmented["recipe"].startswith("steady")


def test_the_spectral_variant_equals_the_pipelines_own_kernel_spectra():
    """``ownspec`` in the bench is what the feature stage computes (the same function on
    the same coefficients): a recipe named in the bench is the pipeline's."""
    import kernelbank as kb
    from kernelbank.core.spectrum import spectral_invariants, spectrum_operator
    coef = np.random.default_rng(2).normal(scale=0.1, size=(4, 24))
    names = [f"ar_s1_d1_c{j:02d}" for j in range(24)] + ["res_s1_d1_skew"]
    table = np.hstack([coef, np.ones((4, 1))])
    out = accuracy.own_spectra(table, names)
    expected = spectral_invariants(coef, spectrum_operator(kb.Basis.full(2).kernels.numpy()))
    np.testing.assert_allclose(out[:, :-1], expected)
    assert (out[:, -1] == 1).all()
