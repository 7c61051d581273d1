"""bank_features / ar_features against a direct per-pixel numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from tests.core.reference import design_matrix, zscore


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
