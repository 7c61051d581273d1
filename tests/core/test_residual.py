"""Residual descriptors against closed forms and brute-force references.

The references share no code with kernelbank.core.residual/patterns: residuals come from
the explicit design matrix of tests/core/reference.py, moments from scipy.stats, quantiles
from numpy, and local binary patterns / co-occurrences from per-pixel Python loops.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

import kernelbank as kb
from kernelbank.core.fit import default_descriptors
from kernelbank.core.residual import ResidualDescriptors, describe_residuals
from kernelbank.datasets import random_stable_kernel, simulate_gmrf

from .reference import design_matrix, zscore

FULL1 = kb.Basis.full(radius=1)
ONLY_MOMENTS = ResidualDescriptors(quantiles=(), patterns=(), cooccurrence=0)


def _columns(names: list[str], prefix: str) -> list[int]:
    return [j for j, n in enumerate(names) if n.startswith(prefix)]


def _describe(e: np.ndarray, descriptors=None) -> tuple[np.ndarray, list[str]]:
    """Descriptors of a given residual: zero kernels make e = x exactly."""
    spec = descriptors or ResidualDescriptors()
    x = torch.as_tensor(e, dtype=torch.float64)
    zero = torch.zeros((len(x), 3, 3), dtype=torch.float64)
    # radius-1 zero kernels crop one pixel: pad so the residual is e itself
    padded = torch.nn.functional.pad(x[:, None], (1, 1, 1, 1))[:, 0]
    out = describe_residuals(padded, zero, 1, spec)
    return out.numpy(), kb.residual_descriptor_names(spec)


# ---------------------------------------------------------------------------- helpers
NEIGHBOURS = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]


def _lbp_reference(e: np.ndarray, lag: int = 1) -> list[int]:
    """8-bit codes by a loop over pixels: bit k = [e(p + lag o_k) >= e(p)], o_k as documented."""
    codes = []
    for i in range(lag, e.shape[0] - lag):
        for j in range(lag, e.shape[1] - lag):
            codes.append(sum(1 << k for k, (dr, dc) in enumerate(NEIGHBOURS)
                             if e[i + lag * dr, j + lag * dc] >= e[i, j]))
    return codes


def _uniform_bins(code: int) -> tuple[int, int]:
    """(ri bin, nri bin) of a code, straight from the definitions in the patterns docstring."""
    bits = [(code >> k) & 1 for k in range(8)]
    if sum(bits[k] != bits[(k + 1) % 8] for k in range(8)) > 2:
        return 9, 58
    ones = sum(bits)
    if ones in (0, 8):
        return ones, 0 if ones == 0 else 57
    start = [k for k in range(8) if bits[k] == 1 and bits[k - 1] == 0][0]
    return ones, 1 + 8 * (ones - 1) + start


def _ar1_rows(noise: np.ndarray, a: float) -> np.ndarray:
    """x[i, j] = a x[i, j-1] + noise[i, j] along each row, after a 64-column burn-in."""
    x = np.zeros_like(noise)
    for j in range(1, noise.shape[-1]):
        x[..., j] = a * x[..., j - 1] + noise[..., j]
    return x[..., 64:]


# ---------------------------------------------------------------------------- distribution shape
def test_gaussian_ar_texture_has_gaussian_residual():
    kernel = random_stable_kernel(FULL1, max_response=0.9, random_state=3)
    images = simulate_gmrf(kernel, (160, 160), n=6, random_state=4)
    feats, names = kb.residual_features(images, FULL1, descriptors=ONLY_MOMENTS)
    skew, kurt = feats[:, names.index("res_s1_d1_skew")], feats[:, names.index("res_s1_d1_kurt")]
    # 158² correlated pixels per image: standard errors ~0.02 (skew) and ~0.04 (kurtosis)
    np.testing.assert_allclose(skew.numpy(), 0, atol=0.1)
    np.testing.assert_allclose(kurt.numpy(), 3, atol=0.2)
    assert abs(float(kurt.mean()) - 3) < 0.1


@pytest.mark.parametrize("noise, excess", [("laplace", 3.0), ("binary", -2.0)])
def test_non_gaussian_innovations_give_the_predicted_kurtosis(noise, excess):
    # For x_t = a x_(t-1) + e_t the least-squares interpolator from both neighbours is
    # a/(1+a²)(x_(t-1) + x_(t+1)) and its residual is (e_t - a e_(t+1))/(1+a²), whose excess
    # kurtosis is excess(e) (1 + a⁴)/(1 + a²)²; rows are independent, so the other window
    # taps get zero weight.
    a = 0.6
    rng = np.random.default_rng(7)
    shape = (4, 256, 320)
    drive = rng.laplace(size=shape) if noise == "laplace" else rng.choice([-1.0, 1.0], size=shape)
    images = _ar1_rows(drive, a)
    feats, names = kb.residual_features(images, FULL1, descriptors=ONLY_MOMENTS)
    expected = 3 + excess * (1 + a**4) / (1 + a**2) ** 2
    kurt = feats[:, names.index("res_s1_d1_kurt")].numpy()
    # 64k pixels per image: standard error ~0.06 for the Laplace mixture, far less for binary
    np.testing.assert_allclose(kurt.mean(), expected, atol=0.15)
    np.testing.assert_allclose(feats[:, names.index("res_s1_d1_skew")].numpy(), 0, atol=0.05)


def test_moments_and_quantiles_equal_an_independent_reference():
    rng = np.random.default_rng(0)
    images = np.exp(rng.normal(size=(3, 30, 27)))            # skewed, so skew is not ~0
    basis = kb.Basis.full(radius=2, dilation=2)
    spec = ResidualDescriptors(patterns=(), cooccurrence=0)
    feats, names = kb.residual_features(images.astype(np.float64), basis, descriptors=spec)
    fitted = kb.fit(images.astype(np.float64), basis)
    for i, image in enumerate(images):
        column, target = design_matrix(zscore(image), fitted.kernels[i:i + 1].numpy(), 2)
        e = (target - column[:, 0]).numpy()
        sigma = np.sqrt(np.mean(e**2))
        expected = [np.log(np.mean(e**2)), np.log(np.mean(np.abs(e))), stats.skew(e),
                    stats.kurtosis(e, fisher=False)]
        expected += list(np.quantile(np.abs(e) / sigma, spec.quantiles))
        np.testing.assert_allclose(feats[i].numpy(), expected, rtol=1e-9, atol=1e-12)
    assert names[:4] == ["res_s1_d2_log_mse", "res_s1_d2_log_mae", "res_s1_d2_skew",
                         "res_s1_d2_kurt"]


# ---------------------------------------------------------------------------- sign patterns
def test_checkerboard_residual_hits_the_expected_bins():
    board = (-1.0) ** np.add.outer(np.arange(14), np.arange(14))
    feats, names = _describe(board[None])
    row = dict(zip(names, feats[0]))
    # +1 pixels: axial neighbours lower, diagonal ones equal -> 10101010, not uniform;
    # -1 pixels: every neighbour >= -> 11111111 (8 ones); half of the 12x12 inner pixels each
    ri = [row[f"lbp_ri_lag1_{b:02d}"] for b in range(10)]
    np.testing.assert_array_equal(ri, [0] * 8 + [0.5, 0.5])
    nri = np.array([row[f"lbp_nri_lag1_{b:02d}"] for b in range(59)])
    assert nri[57] == nri[58] == 0.5 and nri.sum() == 1
    # every horizontal and vertical pair is (+1, -1) or (-1, +1)
    for axis in (0, 1):
        assert row[f"cooc_ax{axis}_lag1_p1_m1"] == row[f"cooc_ax{axis}_lag1_m1_p1"] == 0.5
    assert row["kurt"] == 1 and row["skew"] == 0 and row["log_mse"] == 0 and row["log_mae"] == 0


def test_ramp_residual_has_one_known_uniform_code():
    ramp = np.tile(np.arange(12.0), (9, 1))                  # increases eastwards
    feats, names = _describe(ramp[None])
    row = dict(zip(names, feats[0]))
    # E, NE, N, S, SE are >= the centre: bits 0, 1, 2, 6, 7 -> 5 ones in a run from bit 6
    assert _uniform_bins(0b11000111) == (5, 1 + 8 * 4 + 6)
    assert row["lbp_ri_lag1_05"] == 1 and row["lbp_nri_lag1_39"] == 1


@pytest.mark.parametrize("lag", [1, 2])
def test_histograms_equal_brute_force_codes(lag):
    e = np.random.default_rng(lag).normal(size=(2, 15, 13))
    e[0, 3:6, 4:8] = 0.25                                    # ties count as >=
    spec = ResidualDescriptors(lags=(lag,), ternary=None)
    feats, names = _describe(e, spec)
    for i in range(2):
        codes = _lbp_reference(e[i], lag)
        bins = [_uniform_bins(c) for c in codes]
        ri = np.bincount([b[0] for b in bins], minlength=10) / len(codes)
        nri = np.bincount([b[1] for b in bins], minlength=59) / len(codes)
        np.testing.assert_allclose(feats[i, _columns(names, f"lbp_ri_lag{lag}_")], ri, atol=1e-15)
        np.testing.assert_allclose(feats[i, _columns(names, f"lbp_nri_lag{lag}_")], nri, atol=1e-15)
        # pairs of clip(round(e / σ), -2, 2) along each axis
        sigma = np.sqrt(np.mean(e[i] ** 2))
        v = np.clip(np.round(e[i] / sigma), -2, 2).astype(int)
        for axis in (0, 1):
            w = v if axis == 0 else v.T
            pairs = Counter(zip(w[:-lag].ravel(), w[lag:].ravel()))
            total = sum(pairs.values())
            for (p, q), count in pairs.items():
                name = f"cooc_ax{axis}_lag{lag}_{'m' if p < 0 else 'p'}{abs(p)}_" \
                       f"{'m' if q < 0 else 'p'}{abs(q)}"
                assert feats[i, names.index(name)] == pytest.approx(count / total, abs=1e-15)


def test_ternary_patterns_equal_brute_force():
    e = np.random.default_rng(5).normal(size=(1, 11, 12))
    spec = ResidualDescriptors(quantiles=(), patterns=("ri",), ternary=0.5, cooccurrence=0,
                               moments=False)
    feats, names = _describe(e, spec)
    t = 0.5 * np.sqrt(np.mean(e[0] ** 2))
    upper, lower = [], []
    for i in range(1, 10):
        for j in range(1, 11):
            diffs = [e[0, i + dr, j + dc] - e[0, i, j] for dr, dc in NEIGHBOURS]
            upper.append(sum(1 << k for k, d in enumerate(diffs) if d > t))
            lower.append(sum(1 << k for k, d in enumerate(diffs) if d < -t))
    for half, codes in (("up", upper), ("lo", lower)):
        expected = np.bincount([_uniform_bins(c)[0] for c in codes], minlength=10) / len(codes)
        np.testing.assert_allclose(feats[0, _columns(names, f"ltp_{half}_ri_")], expected,
                                   atol=1e-15)


def _rotated_nri(hist: np.ndarray) -> np.ndarray:
    """Where each nri bin goes when the image turns 90° counter-clockwise (np.rot90).

    A neighbour offset (dr, dc) becomes (-dc, dr): E -> N, NE -> NW, ... so bit k moves
    to bit k + 2 and a uniform code's run start s to s + 2 (mod 8).
    """
    out = hist.copy()
    for ones in range(1, 8):
        for start in range(8):
            out[1 + 8 * (ones - 1) + (start + 2) % 8] = hist[1 + 8 * (ones - 1) + start]
    return out


def test_rotation_by_90_degrees_permutes_nri_and_keeps_ri():
    e = np.random.default_rng(11).normal(size=(1, 17, 23))
    feats, names = _describe(e)
    turned, _ = _describe(np.rot90(e, axes=(1, 2)).copy())
    ri, nri = _columns(names, "lbp_ri_"), _columns(names, "lbp_nri_")
    np.testing.assert_array_equal(turned[0, ri], feats[0, ri])
    np.testing.assert_array_equal(turned[0, nri], _rotated_nri(feats[0, nri]))
    assert not np.array_equal(turned[0, nri], feats[0, nri])   # the permutation is not trivial
    # horizontal pairs (a, b) become vertical pairs read upwards, i.e. (b, a) along axis 0
    index = {n: j for j, n in enumerate(names)}
    for name in names:
        if name.startswith("cooc_ax1_"):
            a, b = name.split("_")[-2:]
            assert turned[0, index[f"cooc_ax0_lag1_{b}_{a}"]] == feats[0, index[name]]


def test_rotation_of_a_textured_image_through_the_fit():
    # The full basis is equivariant: the rotated image's kernel is the rotated kernel, so the
    # residual rotates too (up to rounding, which could only flip exact ties: none in noise).
    image = simulate_gmrf(random_stable_kernel(FULL1, random_state=2), (40, 36), n=1,
                          random_state=9)
    both = [image[0], np.rot90(image[0]).copy()]
    feats, names = kb.residual_features(both, FULL1)
    feats = feats.numpy()
    ri, nri = _columns(names, "res_s1_d1_lbp_ri_"), _columns(names, "res_s1_d1_lbp_nri_")
    np.testing.assert_array_equal(feats[1, ri], feats[0, ri])
    np.testing.assert_array_equal(feats[1, nri], _rotated_nri(feats[0, nri]))
    shape = _columns(names, "res_s1_d1_log_") + _columns(names, "res_s1_d1_absq_")
    np.testing.assert_allclose(feats[1, shape], feats[0, shape], rtol=1e-9)


# ---------------------------------------------------------------------------- batching and API
def test_batch_equals_one_at_a_time_and_lists_of_sizes():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=s) for s in [(24, 24), (31, 26), (24, 24), (40, 33)]]
    basis = kb.Basis.full(radius=1)
    feats, names = kb.residual_features(images, basis, dilations=(1, 2), scales=(1, 2),
                                        coefficients=True)
    assert feats.shape == (4, len(names))
    for i, image in enumerate(images):
        alone, alone_names = kb.residual_features(image[None], basis, dilations=(1, 2),
                                                  scales=(1, 2), coefficients=True)
        np.testing.assert_allclose(feats[i].numpy(), alone[0].numpy(), rtol=1e-5, atol=1e-6)
        assert alone_names == names
    same = np.stack([images[0], images[2]])
    batch = kb.describe_residuals(torch.as_tensor(same), kb.fit(same, basis).kernels, 1)
    for i in range(2):
        one = kb.describe_residuals(torch.as_tensor(same[i:i + 1]),
                                    kb.fit(same[i:i + 1], basis).kernels, 1)
        np.testing.assert_allclose(batch[i].numpy(), one[0].numpy(), rtol=1e-9, atol=1e-12)


def test_coefficients_equal_fit_and_names_match_columns():
    images = np.random.default_rng(2).normal(size=(3, 30, 30))
    basis = kb.Basis.full(radius=2)
    feats, names = kb.residual_features(images, basis, dilations=(1, 3), coefficients=True)
    fitted = kb.fit(images, basis, dilations=[1, 3])
    m = basis.n_components
    per = len(kb.residual_descriptor_names())
    np.testing.assert_array_equal(feats[:, :m].numpy(), fitted.coef[:, 0].numpy())
    np.testing.assert_array_equal(feats[:, m + per:2 * m + per].numpy(), fitted.coef[:, 1].numpy())
    assert names[m + per] == "ar_s1_d3_c00" and names[m] == "res_s1_d1_log_mse"
    assert len(names) == feats.shape[1] == 2 * (m + per) and len(set(names)) == len(names)


@pytest.mark.parametrize("spec", [ResidualDescriptors(), ResidualDescriptors(ternary=0.3),
                                  ResidualDescriptors(lags=(1, 2), cooccurrence=3, levels=1),
                                  ResidualDescriptors(moments=False, patterns=("nri",)),
                                  ResidualDescriptors(patterns=(), ternary=0.5, quantiles=())])
def test_names_length_equals_columns(spec):
    x = torch.randn(2, 20, 20, dtype=torch.float64)
    out = describe_residuals(x, kb.fit(x, FULL1).kernels, 1, spec)
    names = kb.residual_descriptor_names(spec)
    assert out.shape == (2, len(names)) and len(set(names)) == len(names)
    assert torch.isfinite(out).all()


def test_volumes_get_moments_and_cooccurrences_and_refuse_patterns():
    volumes = np.random.default_rng(3).normal(size=(2, 9, 10, 11))
    basis = kb.Basis.full(radius=1, ndim=3)
    spec = ResidualDescriptors(patterns=())
    feats, names = kb.residual_features(volumes, basis, descriptors=spec)
    assert feats.shape == (2, len(names)) and any("cooc_ax2_" in n for n in names)
    with pytest.raises(ValueError, match="2-D residuals only"):
        kb.residual_features(volumes, basis)


def test_degenerate_and_bad_inputs():
    flat = np.ones((1, 16, 16))
    feats, _ = kb.residual_features(flat, FULL1)
    assert torch.isfinite(feats).all()
    x = torch.randn(2, 12, 12)
    with pytest.raises(ValueError, match="kernels must have shape"):
        describe_residuals(x, torch.zeros(3, 3, 3), 1)
    with pytest.raises(ValueError, match="smaller than"):
        describe_residuals(x, torch.zeros(2, 3, 3), 6)
    with pytest.raises(ValueError, match="too small for lag"):
        describe_residuals(x, torch.zeros(2, 3, 3), 1, ResidualDescriptors(lags=(5,)))
    with pytest.raises(TypeError, match="floating"):
        describe_residuals(x.to(torch.int32), torch.zeros(2, 3, 3), 1)
    for bad in ({"patterns": ("riu2",)}, {"ternary": 0.0}, {"quantiles": (1.5,)},
                {"cooccurrence": -1}, {"levels": 0}, {"lags": (0,)}):
        with pytest.raises(ValueError):
            ResidualDescriptors(**bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_descriptors_match_cpu():
    import os
    device = os.environ.get("KERNELBANK_TEST_DEVICE", "cuda")
    images = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 40, 37)))
    spec = ResidualDescriptors(ternary=0.5, lags=(1, 2))
    cpu, names = kb.residual_features(images, kb.Basis.full(2), dilations=(1, 2),
                                      coefficients=True, descriptors=spec)
    gpu, gpu_names = kb.residual_features(images.to(device), kb.Basis.full(2), dilations=(1, 2),
                                          coefficients=True, descriptors=spec)
    assert gpu.device.type == device and gpu_names == names
    # float64 on both: summation order differs, which could flip a comparison only at a tie
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-8, atol=1e-10)


def test_colour_residual_descriptors_are_each_channels_own():
    from kernelbank.core.residual import describe_residuals, residual_descriptor_names
    rng = np.random.default_rng(11)
    images = torch.from_numpy(rng.normal(size=(3, 3, 28, 30)).cumsum(-1))
    basis = kb.Basis.full(1, channels=3)
    spec = ResidualDescriptors(quantiles=(0.5,), patterns=("ri",), cooccurrence=2)
    fitted = kb.fit(images, basis, normalize=False)
    out = describe_residuals(images, fitted.kernels, 1, spec)
    names = residual_descriptor_names(spec, 2, channels=3)
    assert out.shape == (3, len(names)) and names[0] == "c0_log_mse"
    per_channel = len(names) // 3
    for c in range(3):
        # the residual of channel c by explicit shifted sums over every channel's taps
        e = images[:, c, 1:-1, 1:-1].clone()
        for source, a, b in np.ndindex(3, 3, 3):
            e -= fitted.kernels[:, c, source, a, b, None, None] * images[:, source, a:a + 26,
                                                                         b:b + 28]
        expected = describe_residuals(e, torch.zeros(3, 1, 1, dtype=torch.float64), 1, spec)
        assert torch.allclose(out[:, c * per_channel:(c + 1) * per_channel], expected,
                              rtol=1e-9, atol=1e-9)
        # the residual MSE is the fit's own channel MSE
        assert torch.allclose(out[:, c * per_channel].exp(), fitted.mse[:, c], rtol=1e-9)
    feats, feat_names = kb.residual_features(images, basis, dilations=(1, 2), coefficients=True,
                                             descriptors=spec)
    assert feats.shape[1] == len(feat_names) == 2 * (3 * basis.n_components + len(names))
    assert feat_names[0] == "ar_s1_d1_ch0_c00" and "res_s1_d2_c2_log_mse" in feat_names


# ---------------------------------------------------------------------------- image patterns
def test_image_patterns_are_the_images_own_codes_at_lag_times_dilation():
    """``image_patterns``: LBP histograms of each channel of the image itself (a zero
    kernel's residual, the whole image) at lag ``lag × dilation``; the own kernel's
    descriptors are unchanged beside them."""
    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.integers(0, 4, size=(2, 3, 17, 19)), dtype=torch.float64)  # ties
    kernels = kb.fit(x, kb.Basis.full(1, channels=3), normalize=False).kernels
    own = ResidualDescriptors(quantiles=(0.5,), patterns=("ri",), cooccurrence=0, lags=(1, 2))
    spec = ResidualDescriptors(quantiles=(0.5,), patterns=("ri",), cooccurrence=0, lags=(1, 2),
                               image_patterns=("ri", "nri"))
    names = kb.residual_descriptor_names(spec, 2, 3)
    for engine in ("compiled", "torch"):
        out = describe_residuals(x, kernels, 2, spec, engine=engine).numpy()
        assert out.shape[1] == len(names)
        width = len(kb.residual_descriptor_names(own, 2, 3))
        np.testing.assert_allclose(out[:, :width],
                                   describe_residuals(x, kernels, 2, own, engine=engine),
                                   atol=1e-12)
        for i in range(2):
            for c in range(3):
                for lag in (1, 2):
                    codes = _lbp_reference(x[i, c].numpy(), lag * 2)     # dilation 2
                    bins = [_uniform_bins(code) for code in codes]
                    for k, (kind, n_bins) in enumerate((("ri", 10), ("nri", 59))):
                        hist = np.bincount([b[k] for b in bins], minlength=n_bins) / len(codes)
                        got = out[i, _columns(names, f"img_c{c}_lbp_{kind}_lag{lag}_")]
                        np.testing.assert_allclose(got, hist, atol=1e-15)


def test_fit_stores_image_patterns_of_each_dilation():
    """Through the one pass (z-scored images, two dilations): entry ``d`` holds the image's
    codes at lag ``d``; a z-score is monotone, so the raw image's codes are the reference."""
    rng = np.random.default_rng(12)
    images = rng.integers(0, 6, size=(2, 16, 18)).astype(np.float32)
    spec = default_descriptors(2, image_patterns=True)
    result = kb.fit(images, FULL1, dilations=(1, 2), descriptors=spec)
    columns = _columns(result.descriptor_names, "img_lbp_ri_lag1_")
    assert len(columns) == 10 and columns[-1] == len(result.descriptor_names) - 1
    for i in range(2):
        for e, dilation in enumerate((1, 2)):
            codes = _lbp_reference(images[i], dilation)
            ri = np.bincount([_uniform_bins(c)[0] for c in codes], minlength=10) / len(codes)
            np.testing.assert_allclose(result.descriptors[i, e, columns].numpy(), ri, atol=1e-12)
