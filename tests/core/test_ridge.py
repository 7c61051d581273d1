"""The streaming ridge classifier: sums merge exactly, solve to scikit-learn's model, and its
held-out losses from sums equal those of scikit-learn models trained fold by fold."""

from __future__ import annotations

import numpy as np
import pytest

from kernelbank.core.ridge import StreamingRidge, fold_of


def _data(seed=0, n=90, f=7):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["a", "b", "c"], size=n)
    # offset features with a large mean: the case where Σxxᵀ - nμμᵀ would cancel
    x = rng.normal(size=(n, f)) * rng.uniform(0.1, 3, f) + 1e4
    x[:, 0] += (labels == "b") * 0.5
    return x, list(labels)


def test_merge_of_blocks_equals_one_block():
    x, y = _data()
    cuts = [0, 13, 14, 50, 90]           # uneven blocks, one of a single row
    parts = [StreamingRidge.from_block(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    merged = parts[3] + (parts[0] + parts[2]) + parts[1]          # any order, any grouping
    whole = StreamingRidge.from_block(x, y)
    assert merged.n == whole.n and merged.class_n == whole.class_n
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)
    # float64 rounding of sums of ~1e1 values; the 1e4 offset is removed exactly by the update
    np.testing.assert_allclose(merged.scatter, whole.scatter, rtol=1e-9, atol=1e-9)
    empty = StreamingRidge.from_block(np.zeros((0, 7)), [])
    assert (empty + merged) is merged and (merged + empty) is merged


def test_solution_matches_scikit_learn_standard_scaler_ridge_classifier():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = _data(1)
    model = StreamingRidge.from_block(x[:40], y[:40]) + StreamingRidge.from_block(x[40:], y[40:])
    solved = model.solve(alpha=2.0)
    reference = make_pipeline(StandardScaler(), RidgeClassifier(alpha=2.0)).fit(x, y)
    scores = ((x - solved["mean"]) / solved["scale"]) @ solved["weights"] + solved["intercept"]
    np.testing.assert_allclose(scores, reference.decision_function(x), rtol=1e-7, atol=1e-8)
    assert solved["classes"] == list(reference.classes_)


def test_solve_without_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="no training rows"):
        StreamingRidge.from_block(np.zeros((0, 3)), []).solve(1.0)


def test_held_out_losses_from_sums_equal_sklearn_fold_by_fold():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = _data(seed=3, n=120)
    y = np.array(y)
    ids = [f"img{i}" for i in range(len(y))]
    fold = fold_of(ids, 4)
    assert len(set(fold.tolist())) == 4
    parts = [StreamingRidge.from_block(x[fold == k], list(y[fold == k])) for k in range(4)]
    alphas = (0.1, 10.0, 1000.0)
    best, losses = StreamingRidge.choose_alpha(parts, alphas)
    classes = sorted(set(y))
    for alpha in alphas:
        total = 0.0
        for k in range(4):
            train, held = fold != k, fold == k
            model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))
            model.fit(x[train], y[train])
            scores = model.decision_function(x[held])
            targets = np.where(y[held][:, None] == np.array(classes)[None], 1.0, -1.0)
            total += ((targets - scores) ** 2).sum()
        # sums of ~1e2 squared terms from float64 sums: rounding ~1e-12 relative
        assert losses[alpha] == pytest.approx(total / len(y), rel=1e-8)
    assert best == min(alphas, key=lambda a: losses[a])
    with pytest.raises(ValueError, match="2 non-empty folds"):
        StreamingRidge.choose_alpha(parts[:1], alphas)
