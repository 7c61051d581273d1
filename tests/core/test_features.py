"""bank_features / ar_features against a direct per-pixel numpy computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images

from .reference import design_matrix, zscore


def _bank():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(3, 3, 3))
    k[:, 1, 1] = 0
    return kb.KernelBank(k, [1, 2, 1], [0, 1, -1], ["brick", "grass wall"], "pooled")


def _reference(image, bank, grid):
    """Loops over pixels; shares no code with kernelbank.core.features."""
    x = zscore(image)
    r = bank.radius
    reach = bank.max_reach
    errors, rows = [], []
    for k, d in zip(bank.kernels.numpy(), bank.dilations.tolist()):
        own = r * d                                   # this kernel's own valid region
        h, w = x.shape[0] - 2 * own, x.shape[1] - 2 * own
        target = x[own:own + h, own:own + w]
        p = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                for a in range(-r, r + 1):
                    for b in range(-r, r + 1):
                        p[i, j] += k[a + r, b + r] * x[own + i + a * d, own + j + b * d]
        g = (p * target).sum() / (p * p).sum()
        e = target - g * p
        cells = []
        for ci in range(grid):            # adaptive pooling cell edges: floor/ceil
            for cj in range(grid):
                i0, i1 = (ci * h) // grid, -((-(ci + 1) * h) // grid)
                j0, j1 = (cj * w) // grid, -((-(cj + 1) * w) // grid)
                cells.append((e[i0:i1, j0:j1] ** 2).mean())
        rows.append([np.abs(e).mean(), (e ** 2).mean(), e.var(), g] + cells)
        cut = reach - own                 # the win rate compares kernels on the common region
        errors.append(np.abs(e[cut:h - cut, cut:w - cut]))
    winner = np.argmin(np.stack(errors), axis=0)
    wins = [(winner == m).mean() for m in range(len(errors))]
    return np.concatenate([np.ravel(rows), wins])


def test_features_match_direct_computation_for_mixed_sizes():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(13, 15)), rng.normal(size=(11, 11)) * 5 + 3,
              rng.normal(size=(13, 15))]
    bank = _bank()
    feats, names = kb.bank_features(images, bank, grid=2)
    assert feats.dtype == torch.float64 and feats.shape == (3, len(names))
    for image, row in zip(images, feats.numpy()):
        np.testing.assert_allclose(row, _reference(image, bank, 2), rtol=1e-10, atol=1e-12)
    assert names[:9] == ["k00_brick_d1_mae", "k00_brick_d1_mse", "k00_brick_d1_var",
                         "k00_brick_d1_gain", "k00_brick_d1_energy_0_0", "k00_brick_d1_energy_0_1",
                         "k00_brick_d1_energy_1_0", "k00_brick_d1_energy_1_1", "k01_grass_wall_d2_mae"]
    assert names[-3:] == ["k00_brick_d1_win", "k01_grass_wall_d2_win", "k02_pooled_d1_win"]
    np.testing.assert_allclose(feats[:, -3:].sum(1).numpy(), 1.0)


def test_grid_three_and_float32_agree():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 14, 12))
    bank = _bank()
    f64, names = kb.bank_features(image, bank, grid=3)
    np.testing.assert_allclose(f64[0].numpy(), _reference(image[0], bank, 3), rtol=1e-10, atol=1e-12)
    f32, _ = kb.bank_features(image.astype(np.float32), bank, grid=3)
    # float32 convolutions on O(1) values: ~1e-6 relative; win rates may flip on near-ties
    np.testing.assert_allclose(f32[0, :-3].numpy(), f64[0, :-3].numpy(), rtol=1e-4, atol=1e-5)
    assert len(names) == 3 * (4 + 9) + 3


def test_joint_coefficients_equal_lstsq_on_bank_basis():
    rng = np.random.default_rng(4)
    k = rng.normal(size=(4, 5, 5))
    k[:, 2, 2] = 0
    bank = kb.KernelBank(k, [2] * 4, [-1] * 4, [], "random")
    image = rng.normal(size=(30, 28)).cumsum(0)
    feats, names = kb.bank_features(image[None], bank, joint=True, ridge=0.0)
    design, target = design_matrix(zscore(image), k, 2)
    coef = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
    np.testing.assert_allclose(feats[0, -4:].numpy(), coef.numpy(), rtol=1e-8, atol=1e-10)
    assert names[-4:] == [f"joint_k0{i}_random_d2" for i in range(4)]


def test_ar_features_are_fit_coefficients_at_each_dilation():
    rng = np.random.default_rng(5)
    images = rng.normal(size=(3, 24, 24)).cumsum(1)
    basis = kb.Basis.isotropic(radius=2)
    feats, names = kb.ar_features(images, basis, dilations=(1, 3))
    assert names[:2] == ["ar_d1_c00", "ar_d1_c01"] and names[5] == "ar_d3_c00"
    for col, d in ((0, 1), (5, 3)):
        coef = kb.fit(images, basis.with_dilation(d)).coef
        np.testing.assert_allclose(feats[:, col:col + 5].numpy(), coef.numpy(), rtol=1e-10)


def test_bad_input_names_the_image():
    bank = _bank()
    with pytest.raises(ValueError, match="image 1 has shape"):
        kb.bank_features([np.zeros((20, 20)), np.zeros((4, 30))], bank)
    with pytest.raises(ValueError, match="grid"):
        kb.bank_features(np.zeros((1, 20, 20)), bank, grid=0)


def test_volumes_match_scipy_correlate():
    from scipy.signal import correlate

    rng = np.random.default_rng(6)
    k = rng.normal(size=(2, 3, 3, 3))
    k[:, 1, 1, 1] = 0
    bank = kb.KernelBank(k, [1, 1], [-1, -1], [], "random")
    volume = rng.normal(size=(9, 10, 11)).cumsum(0)
    feats, names = kb.bank_features(volume[None], bank, grid=1)
    x = zscore(volume)
    target = x[1:-1, 1:-1, 1:-1]
    for m in range(2):
        p = correlate(x, k[m], mode="valid")
        e = target - (p * target).sum() / (p * p).sum() * p
        np.testing.assert_allclose(feats[0, 5 * m + 1].item(), (e ** 2).mean(), rtol=1e-10)
    assert names[5] == "k01_random_d1_mae" and names[4] == "k00_random_d1_energy_0_0_0"


# ---------------------------------------------------------------------------- channels
# Bank features and likelihood scores of vector kernels: brute force and the sums path (C > 1; one channel is the case above)
def _vector_bank(channels=2):
    return kb.KernelBank.concat([kb.KernelBank.random(1, 3, dilation=1, channels=channels),
                                 kb.KernelBank.random(1, 2, dilation=2, channels=channels,
                                                      random_state=1)])


def _images(seed, n=3, channels=2, shape=(17, 19)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, channels) + shape).cumsum(-1) + rng.normal(size=(n, channels)
                                                                          + shape)


def _prediction(image, kernel, dilation):
    """Σ_{c', o} kernel[c', o] x_{c'}(p + dilation·o) over the valid p, by plain slicing."""
    radius = kernel.shape[-1] // 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in image.shape[1:]]
    out = np.zeros(valid)
    for source, a, b in itertools.product(range(image.shape[0]), range(2 * radius + 1),
                                          range(2 * radius + 1)):
        rows = slice(a * dilation, a * dilation + valid[0])
        cols = slice(b * dilation, b * dilation + valid[1])
        out += kernel[source, a, b] * image[source, rows, cols]
    return out


def test_vector_bank_features_equal_brute_force():
    bank = _vector_bank()
    images = _images(0)
    feats, names = kb.bank_features(images, bank, grid=2, joint=True)
    column = {n: i for i, n in enumerate(names)}
    kernels = bank.kernels.numpy()
    reach = bank.max_reach
    for i, image in enumerate(images):
        x = np.stack([zscore(c) for c in image])
        errors = {}
        for j, (name, d) in enumerate(zip(bank.kernel_names, bank.dilations.tolist())):
            for c in range(2):
                p = _prediction(x, kernels[j, c], d)
                t = x[c, d:-d, d:-d]                       # radius 1: margin d
                g = (p * t).sum() / (p * p).sum()
                e = t - g * p
                errors[j, c] = e
                key = f"{name}_c{c}"
                # float64 sums of a few hundred terms: 1e-12
                assert feats[i, column[f"{key}_mse"]] == pytest.approx((e ** 2).mean(), rel=1e-10)
                assert feats[i, column[f"{key}_var"]] == pytest.approx(e.var(), rel=1e-10)
                assert feats[i, column[f"{key}_gain"]] == pytest.approx(g, rel=1e-10)
                assert feats[i, column[f"{key}_mae"]] == pytest.approx(np.abs(e).mean(), rel=1e-10)
                rows = [(0, (e.shape[0] + 1) // 2), (e.shape[0] // 2, e.shape[0])]
                cols = [(0, (e.shape[1] + 1) // 2), (e.shape[1] // 2, e.shape[1])]
                assert feats[i, column[f"{key}_energy_1_0"]] == pytest.approx(
                    (e[rows[1][0]:rows[1][1], cols[0][0]:cols[0][1]] ** 2).mean(), rel=1e-10)
        # win: per channel, which kernel has the smallest |e| on the common region
        for c in range(2):
            common = np.stack([_crop(np.abs(errors[j, c]), reach - d)
                               for j, d in enumerate(bank.dilations.tolist())])
            wins = np.bincount(common.reshape(len(bank), -1).argmin(0), minlength=len(bank))
            for j, name in enumerate(bank.kernel_names):
                assert feats[i, column[f"{name}_c{c}_win"]] == pytest.approx(
                    wins[j] / common[0].size)
        # joint: channel c on the predictions of the dilation-1 kernels of channel c
        for c in range(2):
            design = np.stack([_prediction(x, kernels[j, c], 1).ravel() for j in range(3)], 1)
            target = x[c, 1:-1, 1:-1].ravel()
            coef = np.linalg.lstsq(design, target, rcond=None)[0]
            got = [feats[i, column[f"joint_{bank.kernel_names[j]}_c{c}"]] for j in range(3)]
            np.testing.assert_allclose(got, coef, rtol=1e-5, atol=1e-7)   # ridge 1e-6·n


def _crop(error, margin):
    """``error`` without ``margin`` pixels on every side (its part in the common region)."""
    stop = [s - margin for s in error.shape]
    return error[margin:stop[0], margin:stop[1]]


def test_vector_bank_features_from_sums_equal_the_pixel_path():
    bank = _vector_bank()
    images = torch.from_numpy(_images(1, n=4))
    pixel, names = kb.bank_features(images, bank, grid=2, joint=True)
    level = normalize_images(images.reshape(8, 17, 19)).reshape(4, 2, 17, 19)
    sums = kb.window_sums(level, 1, [1, 2], channels=2) + \
        kb.window_sums(level, 1, [1, 2], grid=2, channels=2)
    feats, stat_names = kb.bank_features_from_sums(sums, bank, joint=True)
    assert len(stat_names) == len(bank) * 2 * (3 + 4) + len(bank) * 2
    index = [names.index(n) for n in stat_names]
    # differences of float64 sums vs sums of squares: ~1e-12 relative on these images
    assert torch.allclose(feats, pixel[:, index], rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="predicts 2 channel"):
        kb.bank_features_from_sums(kb.window_sums(level[:, 0], 1, [1, 2]), bank)


def test_vector_likelihood_equals_the_gaussian_of_explicit_residuals():
    basis = kb.Basis.full(1, channels=2)
    train = _images(2, n=6, shape=(20, 20))
    labels = ["a", "b"] * 3
    stats = kb.ClassStats.from_fit(kb.fit(train, basis), labels)
    clf = kb.LikelihoodClassifier.from_stats(stats)
    test = _images(3, n=2, shape=(20, 20))
    loglik = clf.log_likelihood(test)
    bank = kb.KernelBank.from_stats(stats, "pooled")
    for i, image in enumerate(test):
        x = np.stack([zscore(c) for c in image])
        for k, name in enumerate(clf.classes):
            residual = np.stack([x[c, 1:-1, 1:-1] - _prediction(x, bank.kernels[k, c].numpy(), 1)
                                 for c in range(2)]).reshape(2, -1)
            s = residual @ residual.T / residual.shape[1]
            sigma = clf.models[0].covariance[k].numpy()
            expected = -0.5 * (2 * np.log(2 * np.pi) + np.linalg.slogdet(sigma)[1]
                               + np.trace(np.linalg.solve(sigma, s)))
            assert loglik[i, k].item() == pytest.approx(expected, rel=1e-9)


def test_vector_likelihood_from_sums_and_on_simulated_classes():
    from kernelbank.datasets import random_stable_vector_kernel, simulate_vector_gmrf
    kernels = [random_stable_vector_kernel(1, channels=3, random_state=s) for s in (1, 2)]
    train = np.concatenate([simulate_vector_gmrf(k, (32, 32), n=8, random_state=i)
                            for i, k in enumerate(kernels)])
    test = np.concatenate([simulate_vector_gmrf(k, (32, 32), n=4, random_state=10 + i)
                           for i, k in enumerate(kernels)])
    basis = kb.Basis.full(1, channels=3)
    result = kb.fit(train, basis, dilations=[1, 2])
    stats = [kb.ClassStats.from_fit(result, ["a"] * 8 + ["b"] * 8, scale=s) for s in (0, 1)]
    clf = kb.LikelihoodClassifier.from_stats(stats)
    assert list(clf.predict(test)) == ["a"] * 4 + ["b"] * 4
    level = normalize_images(torch.from_numpy(test).reshape(24, 32, 32)).reshape(8, 3, 32, 32)
    sums = kb.window_sums(level, 1, [1, 2], channels=3)
    assert torch.allclose(clf.log_likelihood_from_sums(sums), clf.log_likelihood(test),
                          rtol=1e-12, atol=1e-12)
    assert torch.allclose(clf.deviation_from_sums(sums), clf.deviation(test), atol=1e-9)
