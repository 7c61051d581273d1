"""ClassStats: exact sums, merge laws, pooled kernel against an independent lstsq."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images
from kernelbank.io.bank_file import load_bank, save_bank
from kernelbank.io.stats_file import load_stats, save_stats

from .reference import channel_design_matrix, design_matrix, zscore

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


def test_grey_statistics_are_the_one_channel_format():
    stats = _stats(np.arange(30))
    grey = stats["grass"]
    m = BASIS.n_components
    assert grey.sum_gram.shape == (m + 1, m + 1) and grey.sum_sq.shape == (1, 1)
    # the same images with a channel axis and a one-channel basis: the same statistics
    one = kb.ClassStats.from_fit(kb.fit(IMAGES[:, None], kb.Basis.isotropic(2, channels=1)),
                                 LABELS, reservoir_size=4)
    _assert_same(stats, one)


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


# ---------------------------------------------------------------------------- channels
# Class statistics and banks of vector AR fits against explicit pooled least squares (C > 1; one channel is the case above)
def _images(seed, n=6, channels=2, size=22):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=(n, channels, size, size))
    fields = np.stack([[gaussian_filter(c, 1.0) + 0.3 * c for c in image] for image in noise])
    fields[:, 1] += 0.6 * fields[:, 0]
    return fields


def _pooled_reference(images, basis):
    """(coef (C, m), covariance (C, C)) of one lstsq over every pixel of every image."""
    kernels = basis.kernels.numpy()
    normalised = [np.stack([zscore(c) for c in image]) for image in images]
    coefs, residuals = [], []
    for output in range(basis.channels):
        parts = [channel_design_matrix(im, kernels, basis.dilation, output) for im in normalised]
        design = torch.cat([p[0] for p in parts])
        target = torch.cat([p[1] for p in parts])
        coef = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
        coefs.append(coef)
        residuals.append(target - design @ coef)
    residuals = torch.stack(residuals)
    return torch.stack(coefs), residuals @ residuals.T / residuals.shape[1]


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_pooled_bank_kernel_is_the_least_squares_kernel_of_all_class_pixels(kind):
    basis = getattr(kb.Basis, kind)(1, channels=2)
    images = _images(0)
    labels = ["a"] * 3 + ["b"] * 3
    stats = kb.ClassStats.from_fit(kb.fit(images, basis), labels)
    bank = kb.KernelBank.from_stats(stats, "pooled", ridge=0)
    assert bank.channels == 2 and bank.kernels.shape == (2, 2, 2, 3, 3)
    for index, rows in ((0, slice(0, 3)), (1, slice(3, 6))):
        coef, cov = _pooled_reference(images[rows], basis)
        # float64 normal equations vs lstsq on the stacked design: cond·eps apart
        assert torch.allclose(bank.kernels[index], basis.to_kernels(coef), atol=1e-9)
        model = kb.LikelihoodClassifier.from_stats(stats, ridge=0).models[0]
        assert torch.allclose(model.covariance[index], cov, rtol=1e-8, atol=1e-12)


def test_statistics_merge_like_the_fit_of_the_union():
    basis = kb.Basis.isotropic(1, channels=2)
    images = _images(1, n=8)
    labels = ["a", "b"] * 4
    whole = kb.ClassStats.from_fit(kb.fit(images, basis), labels, reservoir_size=3)
    parts = [kb.ClassStats.from_fit(kb.fit(images[i:i + 3], basis), labels[i:i + 3],
                                    reservoir_size=3) for i in (0, 3, 6)]
    merged = sum(reversed(parts))
    for name in ("a", "b"):
        a, b = whole[name], merged[name]
        assert a.n == b.n and a.n_pixels == b.n_pixels
        for key in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq"):
            assert np.allclose(getattr(a, key), getattr(b, key), rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(a.sample, b.sample)
    # the blocks: regressors × targets and targets × targets of Σ A
    part = whole["a"]
    targets = basis.targets.numpy()
    np.testing.assert_allclose(part.sum_rhs, part.sum_gram[:, targets])
    np.testing.assert_allclose(part.sum_sq, part.sum_gram[np.ix_(targets, targets)])
    assert part.sum_coef.shape == (2 * basis.n_components,)


def test_channel_statistics_round_trip_through_dicts_and_files():
    basis = kb.Basis.full(1, channels=2, centre_mask="all")
    stats = kb.ClassStats.from_fit(kb.fit(_images(2), basis), ["a", "b"] * 3)
    flat = stats.to_dict()
    for part in flat["classes"].values():       # as Arrow would hand them back: flat lists
        for key in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq", "sample"):
            part[key] = np.asarray(part[key]).reshape(-1).tolist()
    buffer = io.BytesIO()
    save_stats(stats, buffer)
    buffer.seek(0)
    for again in (kb.ClassStats.from_dict(flat), load_stats(buffer)):
        assert again.basis.describe() == stats.basis.describe()
        assert torch.equal(again.basis.regressors, stats.basis.regressors)
        for name in stats.classes:
            for key in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq", "sample"):
                np.testing.assert_array_equal(getattr(again[name], key),
                                              getattr(stats[name], key))
    with pytest.raises(ValueError, match="different bases"):
        stats + kb.ClassStats.from_fit(kb.fit(_images(2), kb.Basis.full(1, channels=2)),
                                       ["a", "b"] * 3)


def test_statistics_from_sums_equal_statistics_from_pixels():
    basis = kb.Basis.isotropic(2, channels=2)
    images = torch.from_numpy(_images(3))
    labels = ["a", "b"] * 3
    pixel = kb.ClassStats.from_fit(kb.fit(images, basis), labels)
    level = normalize_images(images.reshape(12, 22, 22)).reshape(6, 2, 22, 22)
    [sums] = kb.window_sums(level, 2, [1], channels=2)
    from_sums = kb.ClassStats.from_sums(sums, labels, basis)
    for name in ("a", "b"):
        for key in ("sum_coef", "sum_gram", "sum_sq"):
            assert np.allclose(getattr(from_sums[name], key), getattr(pixel[name], key),
                               rtol=1e-9, atol=1e-9)
        assert from_sums[name].sum_mse == pytest.approx(pixel[name].sum_mse, rel=1e-9)


@pytest.mark.parametrize("method", ["pca", "kmeans"])
def test_pca_and_kmeans_banks_are_vector_kernels_of_the_basis(method, tmp_path):
    basis = kb.Basis.isotropic(1, channels=3)
    rng = np.random.default_rng(4)
    images = rng.normal(size=(8, 3, 20, 20)).cumsum(-1)
    stats = kb.ClassStats.from_fit(kb.fit(images, basis), ["a", "b"] * 4)
    bank = kb.KernelBank.from_stats(stats, method, n_components=2)
    assert bank.kernels.shape[1:] == (3, 3, 3, 3)
    # every kernel is a combination of the basis: projecting and rebuilding is exact
    design = basis.kernels.flatten(2)                                  # (C, m, C·t)
    coef = torch.stack([torch.linalg.lstsq(design[c].T, bank.kernels[:, c].flatten(1).T
                                           ).solution.T for c in range(3)], 1)
    assert torch.allclose(basis.to_kernels(coef), bank.kernels, atol=1e-10)
    if method == "pca":     # the mean kernel of a class is its mean coefficient row
        mean = torch.from_numpy(stats["a"].mean_coef).reshape(3, basis.n_components)
        assert torch.allclose(bank.kernels[0], basis.to_kernels(mean))
    path = tmp_path / "bank.npz"
    save_bank(bank, str(path))
    again = load_bank(str(path))
    assert again.channels == 3 and torch.equal(again.kernels, bank.kernels)


def test_vector_bank_validation():
    with pytest.raises(ValueError, match=r"\(M, 3, 3, \*window\)"):
        kb.KernelBank(np.zeros((2, 3, 3, 3)), [1, 1], [-1, -1], [], "x", channels=3)
    kernels = np.zeros((1, 2, 2, 3, 3))
    kernels[0, 0, 1, 1, 1] = 1.0            # another channel's centre: allowed
    kb.KernelBank(kernels, [1], [-1], [], "x", channels=2)
    kernels[0, 1, 1, 1, 1] = 1.0            # the own centre: refused
    with pytest.raises(ValueError, match="zero centre"):
        kb.KernelBank(kernels, [1], [-1], [], "x", channels=2)
