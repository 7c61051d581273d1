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
