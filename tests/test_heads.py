"""The streaming kernel-map head equals its in-memory scikit-learn counterpart."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.kernel_approximation import AdditiveChi2Sampler, Nystroem, RBFSampler
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernelbank.heads import KernelMapRidge
from kernelbank.image_patterns import power_normalize


def _table(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(["a", "b", "c"]), 40)
    histograms = rng.dirichlet(np.ones(6), size=len(y)) + (y == "b")[:, None] * 0.05
    signed = rng.normal(size=(len(y), 3)) + (y == "c")[:, None]
    return np.hstack([histograms, signed]), y


@pytest.mark.parametrize("kernel_map", ["chi2", "rbf", "nystroem", None])
def test_streaming_head_equals_sklearn_pipeline(kernel_map):
    X, y = _table()
    mask = np.array([True] * 6 + [False] * 3)
    # blocks of 25 rows: the sums of 5 blocks must give the in-memory fit
    head = KernelMapRidge(kernel_map=kernel_map, n_components=64, alpha=0.7, block_size=25,
                          histogram=mask, sample=len(X), random_state=3).fit(X, y)
    if kernel_map == "chi2":
        chi2 = AdditiveChi2Sampler(sample_steps=2).fit(X[:, mask])
        mapped = np.hstack([chi2.transform(X[:, mask]), X[:, ~mask]])
    else:
        mapped = StandardScaler().fit_transform(X)
        if kernel_map == "rbf":
            mapped = RBFSampler(gamma=1 / 9, n_components=64, random_state=3).fit_transform(mapped)
        elif kernel_map == "nystroem":
            mapped = Nystroem(gamma=1 / 9, n_components=64, random_state=3).fit_transform(mapped)
    reference = make_pipeline(StandardScaler(), RidgeClassifier(alpha=0.7)).fit(mapped, y)
    # float64 sums merged block by block (Chan's update) against one dense solve
    np.testing.assert_allclose(head.decision_function(X), reference.decision_function(mapped),
                               atol=1e-6, rtol=0)
    assert list(head.predict(X)) == list(reference.predict(mapped))


def test_chi2_map_refuses_negative_histograms_and_power_map():
    X, y = _table()
    with pytest.raises(ValueError, match="non-negative"):
        KernelMapRidge(kernel_map="chi2").fit(X, y)           # signed columns in the map
    mapped = power_normalize(np.array([[4.0, -9.0, 0.25]]), np.array([True, True, False]))
    np.testing.assert_array_equal(mapped, [[2.0, -3.0, 0.25]])


def test_kernel_head_equals_sklearn_nystroem_pipeline():
    from sklearn.kernel_approximation import Nystroem
    from kernelbank.heads import fit_kernel_head, kernel_head_scores
    X, y = _table(seed=1)
    ids = np.array([f"img{(37 * i) % len(X):04d}" for i in range(len(X))])   # not sorted
    model = fit_kernel_head(X, y, ids, n_components=50, alpha=0.3, random_state=5)
    order = np.argsort(ids)            # the head draws its landmarks from the id order
    reference = make_pipeline(StandardScaler(),
                              Nystroem(gamma=1 / 9, n_components=50, random_state=5),
                              StandardScaler(), RidgeClassifier(alpha=0.3))
    reference.fit(X[order], y[order])
    rng = np.random.default_rng(2)
    fresh = X + rng.normal(scale=0.1, size=X.shape)            # rows the head never saw
    # the folded weights (N^T diag(1/σ) W) reassociate float64 products: 1e-6 is far
    # above their rounding and far below any change of landmark, scale or alpha
    np.testing.assert_allclose(kernel_head_scores(model, fresh, block_rows=17),
                               reference.decision_function(fresh), atol=1e-6, rtol=0)
    assert model["n_components"] == 50 and model["n_sample"] == len(X)


def test_kernel_head_alpha_by_cv_accuracy_from_fold_sums():
    from sklearn.kernel_approximation import Nystroem
    from kernelbank.core.ridge import fold_of
    from kernelbank.heads import fit_kernel_head
    X, y = _table(seed=4)
    ids = np.array([f"r{i}" for i in range(len(X))])
    model = fit_kernel_head(X, y, ids, n_components=40, cv_folds=4)
    # the same choice from scikit-learn: held-out accuracy per alpha, refitted per fold
    order = np.argsort(ids)
    X, y, ids = X[order], y[order], ids[order]
    mapped = make_pipeline(StandardScaler(), Nystroem(gamma=1 / 9, n_components=40,
                                                      random_state=0)).fit_transform(X)
    fold = fold_of(list(ids), 4)
    accuracy = {}
    for key, got in model["cv_accuracy"].items():
        right = 0
        for k in range(4):
            fit = make_pipeline(StandardScaler(), RidgeClassifier(alpha=float(key)))
            fit.fit(mapped[fold != k], y[fold != k])
            right += int((fit.predict(mapped[fold == k]) == y[fold == k]).sum())
        accuracy[key] = right / len(X)
        assert got == pytest.approx(accuracy[key], abs=1e-12)
    best = max(accuracy.values())
    assert model["alpha"] == pytest.approx(max(float(a) for a, v in accuracy.items()
                                               if v == best), rel=1e-5)
    assert len(set(accuracy.values())) > 1          # the grid's alphas do differ here


def test_sample_is_the_same_however_the_rows_are_split():
    from kernelbank.heads import bottom_rows, sample_keys
    rng = np.random.default_rng(0)
    ids = np.array([f"id{i}" for i in range(500)], dtype=object)
    labels = rng.choice(np.array(["a", "b", "c"], dtype=object), size=500)
    keys = sample_keys(ids)
    whole = set(ids[bottom_rows(keys, ids, labels, 20)])
    merged = None                        # files of 77 rows, merged as the classify stage does
    for start in range(0, 500, 77):
        part = [a[start:start + 77] for a in (keys, ids, labels)]
        part = [a[bottom_rows(*part, 20)] for a in part]
        if merged is not None:
            part = [np.concatenate([m, p]) for m, p in zip(merged, part)]
        merged = [a[bottom_rows(*part, 20)] for a in part]
    assert set(merged[1]) == whole
    assert len(whole) == 60 and all((labels[np.isin(ids, list(whole))] == c).sum() == 20
                                    for c in "abc")
