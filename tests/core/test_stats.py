"""ClassStats: exact sums, merge laws, pooled kernel against an independent lstsq."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import kernelbank as kb
from tests.core.reference import design_matrix, zscore

RNG = np.random.default_rng(7)
IMAGES = RNG.normal(size=(30, 20, 20)).cumsum(axis=2)      # some structure, not white
LABELS = [("brick", "grass", "gravel")[i % 3] for i in range(30)]
BASIS = kb.Basis.isotropic(radius=2)


def _stats(indices, reservoir_size=4):
    result = kb.fit(IMAGES[indices], BASIS)
    return kb.ClassStats.from_fit(result, [LABELS[i] for i in indices],
                                  reservoir_size=reservoir_size)


def _assert_same(a: kb.ClassStats, b: kb.ClassStats):
    assert a.classes == b.classes
    for name in a.classes:
        x, y = a[name], b[name]
        assert (x.n, x.n_pixels) == (y.n, y.n_pixels)
        # float sums in a different order: equal up to float64 rounding (~1e-15 relative)
        for key in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq", "sum_mse",
                    "sum_mse_sq"):
            np.testing.assert_allclose(getattr(x, key), getattr(y, key), rtol=1e-12, atol=1e-12)
        # the reservoir is a selection, not a sum: exactly equal
        np.testing.assert_array_equal(x.sample, y.sample)
        np.testing.assert_array_equal(x.sample_priority, y.sample_priority)


def test_sums_match_direct_computation():
    stats = _stats(np.arange(30), reservoir_size=100)
    result = kb.fit(IMAGES, BASIS)
    rows = [i for i in range(30) if LABELS[i] == "grass"]
    part = stats["grass"]
    coef = result.coef[rows].numpy()
    assert part.n == 10 and stats.count("grass") == 10 and stats.count("sand") == 0
    np.testing.assert_allclose(part.sum_outer, coef.T @ coef, rtol=1e-12)
    np.testing.assert_allclose(part.mean_coef, coef.mean(0), rtol=1e-12)
    np.testing.assert_allclose(part.covariance, np.cov(coef.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(part.sum_mse, result.mse[rows].sum().item(), rtol=1e-12)
    assert part.n_pixels == 10 * 16 * 16
    # reservoir larger than the class: every row kept
    np.testing.assert_array_equal(np.sort(part.sample, 0), np.sort(coef, 0))


def test_merge_is_order_and_grouping_invariant():
    whole = _stats(np.arange(30))
    rng = np.random.default_rng(0)
    for trial in range(3):
        order = rng.permutation(30)
        cuts = np.sort(rng.choice(np.arange(1, 30), size=5, replace=False))
        parts = [_stats(chunk) for chunk in np.split(order, cuts)]
        left_fold = sum(parts)
        shuffled = [parts[i] for i in rng.permutation(len(parts))]
        while len(shuffled) > 1:                         # a random merge tree
            i = int(rng.integers(len(shuffled) - 1))
            shuffled[i:i + 2] = [shuffled[i + 1] + shuffled[i]]
        for merged in (left_fold, shuffled[0]):
            _assert_same(merged, whole)
            for method in ("pooled", "pca", "kmeans"):
                a = kb.KernelBank.from_stats(merged, method, n_components=2)
                b = kb.KernelBank.from_stats(whole, method, n_components=2)
                np.testing.assert_allclose(a.kernels, b.kernels, rtol=1e-9, atol=1e-12)


def test_identity_and_round_trip():
    stats = _stats(np.arange(12))
    _assert_same(0 + stats, stats)
    _assert_same(kb.ClassStats.empty(reservoir_size=4) + stats, stats)
    _assert_same(stats + kb.ClassStats.empty(reservoir_size=4), stats)
    assert kb.ClassStats.merge([]).classes == []
    again = kb.ClassStats.from_dict(pickle.loads(pickle.dumps(stats.to_dict())))
    _assert_same(again, stats)
    assert again.basis_meta == stats.basis_meta
    assert torch.equal(again.basis.weights, stats.basis.weights)


def test_merge_refuses_other_basis_and_checks_labels():
    a = _stats(np.arange(6))
    other = kb.ClassStats.from_fit(kb.fit(IMAGES[:3], kb.Basis.full(radius=1)), ["x"] * 3,
                                   reservoir_size=4)
    with pytest.raises(ValueError, match="different bases"):
        a + other
    with pytest.raises(ValueError, match="labels has 2 entries"):
        kb.ClassStats.from_fit(kb.fit(IMAGES[:3], BASIS), ["a", "b"])
    multi = kb.fit(IMAGES[:3], BASIS, dilations=[1, 2])
    with pytest.raises(ValueError, match="scale axis"):
        kb.ClassStats.from_fit(multi, ["a"] * 3)
    second = kb.ClassStats.from_fit(multi, ["a"] * 3, scale=1)
    assert second.basis.dilation == 2
    np.testing.assert_allclose(second["a"].sum_coef, multi.coef[:, 1].sum(0).numpy())


def test_pooled_equals_lstsq_on_stacked_design_matrix():
    """The pooled kernel of a class is the least-squares fit of all its images at once."""
    basis = kb.Basis.full(radius=1, dilation=2)
    sizes = [(14, 17), (20, 20), (16, 13)]                  # different sizes on purpose
    images = [RNG.normal(size=s).cumsum(0) for s in sizes]
    result = kb.fit(images, basis)
    stats = kb.ClassStats.from_fit(result, ["a"] * 3)
    bank = kb.KernelBank.from_stats(stats, "pooled", ridge=0.0)
    designs, targets = zip(*(design_matrix(zscore(x), basis.kernels.numpy(), 2) for x in images))
    coef = torch.linalg.lstsq(torch.cat(designs), torch.cat(targets)[:, None],
                              driver="gelsd").solution[:, 0]
    np.testing.assert_allclose(bank.kernels[0], basis.to_kernels(coef), atol=1e-9)
