"""The streaming ridge classifier's sums merge exactly and solve to scikit-learn's model."""

from __future__ import annotations

import numpy as np
import pytest

from kernelbank.stages.classify import StreamingRidge


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
