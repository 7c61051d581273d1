import importlib

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank import image_statistics as channel_image_statistics
from kernelbank.core import normalize_images, pyramid_level
from kernelbank.core._strips import plane_gram, residual_sums
from kernelbank.core.residual import ResidualDescriptors, _describe, residual_descriptor_names

from .reference import channel_lstsq_fit, lstsq_fit, window_sums, zscore


def _images(rng, n, shape):
    # a smoothed field: neighbouring pixels correlate, so the fit is not trivial
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=(n,) + shape)
    return np.stack([gaussian_filter(a, 1.0) + 0.3 * a for a in noise])


CASES = [(kind, ndim, radius, dilation)
         for kind in ("full", "isotropic")
         for ndim in (2, 3)
         for radius in (1, 2, 3, 4)
         for dilation in (1, 3)]


@pytest.mark.parametrize("kind,ndim,radius,dilation", CASES)
def test_fit_equals_lstsq_on_explicit_design_matrix(kind, ndim, radius, dilation):
    basis = getattr(kb.Basis, kind)(radius=radius, dilation=dilation, ndim=ndim)
    # enough valid pixels for a well-posed problem: at least 2·m and a 6-pixel core
    core = max(6, int(np.ceil((2.5 * basis.n_components) ** (1 / ndim))))
    if ndim == 2:
        core = max(core, 24)
    side = 2 * basis.reach + core
    rng = np.random.default_rng(radius * 10 + dilation)
    images = _images(rng, 2, (side,) * ndim)
    result = kb.fit(images, basis, ridge=0)
    for i, image in enumerate(images):
        coef, mse = lstsq_fit(image, basis.kernels.numpy(), dilation)
        expected_kernel = basis.to_kernels(coef)
        # float64 on a well-conditioned problem: both sides are backward-stable solvers,
        # so they agree to ~cond·eps; 1e-6 leaves ample room
        rel = (result.kernels[i] - expected_kernel).norm() / expected_kernel.norm()
        assert rel < 1e-6
        assert result.mse[i].item() == pytest.approx(mse, rel=1e-8)
    assert result.kernels.dtype == torch.float64


def test_output_precision_follows_input():
    rng = np.random.default_rng(0)
    images = _images(rng, 3, (40, 40))
    basis = kb.Basis.isotropic(3)
    r64 = kb.fit(images, basis)
    r32 = kb.fit(images.astype(np.float32), basis)
    r8 = kb.fit(np.clip(images * 40 + 128, 0, 255).astype(np.uint8), basis)
    assert r64.coef.dtype == torch.float64 and r32.coef.dtype == torch.float32
    assert r8.coef.dtype == torch.float32
    # float32 responses, float64 accumulation: agreement to float32 resolution
    assert torch.allclose(r32.coef.double(), r64.coef, rtol=0, atol=1e-4)


def test_centre_of_kernels_is_zero_and_kernels_match_coefficients():
    rng = np.random.default_rng(1)
    basis = kb.Basis.isotropic(4)
    result = kb.fit(_images(rng, 2, (50, 60)), basis)
    assert torch.all(result.kernels[:, 4, 4] == 0)
    # every tap of a ring carries that ring's coefficient
    assert result.kernels[0, 4, 5] == result.coef[0, 0] == result.kernels[0, 3, 4]
    assert result.kernels[0, 0, 0] == result.coef[0, -1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_isotropic_coefficients_invariant_to_rotation_and_transpose(ndim):
    rng = np.random.default_rng(2)
    shape = (48, 40) if ndim == 2 else (20, 18, 22)
    image = _images(rng, 1, shape)[0]
    variants = [image, np.rot90(image, 1, axes=(0, 1)), np.rot90(image, 2, axes=(0, 1)),
                np.swapaxes(image, 0, 1), image[::-1]]
    if ndim == 3:
        variants.append(np.transpose(image, (2, 0, 1)))
    result = kb.fit([np.ascontiguousarray(v) for v in variants],
                    kb.Basis.isotropic(2, ndim=ndim))
    for coef in result.coef[1:]:
        assert torch.allclose(coef, result.coef[0], rtol=1e-10, atol=1e-12)
    # a full basis is not invariant: the test above could fail
    full = kb.fit([np.ascontiguousarray(v) for v in variants[:2]], kb.Basis.full(1, ndim=ndim))
    assert not torch.allclose(full.coef[0], full.coef[1], atol=1e-3)


def test_list_of_different_sizes_matches_individual_fits():
    rng = np.random.default_rng(3)
    images = [_images(rng, 1, s)[0] for s in [(30, 30), (41, 37), (30, 30), (64, 20)]]
    basis = kb.Basis.full(2)
    together = kb.fit(images, basis)
    for i, image in enumerate(images):
        alone = kb.fit(image[None], basis)
        assert torch.allclose(together.coef[i], alone.coef[0], rtol=1e-12, atol=1e-12)
        assert int(together.n_pixels[i]) == (image.shape[0] - 4) * (image.shape[1] - 4)


def test_multiscale_matches_single_scale_fits():
    rng = np.random.default_rng(4)
    images = _images(rng, 3, (64, 64))
    basis = kb.Basis.isotropic(2)
    multi = kb.fit(images, basis, dilations=[1, 2], scales=[1, 2])
    assert multi.coef.shape == (3, 4, basis.n_components)
    assert multi.scale_index == [(1, 1), (1, 2), (2, 1), (2, 2)]
    single = kb.fit(images, basis.with_dilation(2))
    assert torch.allclose(multi.coef[:, 1], single.coef, atol=1e-12)
    level = pyramid_level(torch.as_tensor(images), 2)
    coarse = kb.fit(level, basis)
    assert torch.allclose(multi.coef[:, 2], coarse.coef, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_pyramid_level_is_gaussian_blur_then_subsample(factor):
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 33))
    ours = pyramid_level(torch.as_tensor(image)[None], factor)[0].numpy()
    # torch's "reflect" padding is scipy's "mirror"; both truncate at 4σ here
    expected = gaussian_filter(image, (factor - 1) / 2, mode="mirror", truncate=4.0)
    assert np.allclose(ours, expected[::factor, ::factor], atol=1e-12)


def test_no_normalization_fits_raw_values():
    rng = np.random.default_rng(6)
    image = _images(rng, 1, (32, 32))[0] * 5 + 3
    basis = kb.Basis.isotropic(1)
    raw = kb.fit(image[None], basis, normalize=False, ridge=0)
    # reference with the same raw image: pass it through zscore's inverse by fitting
    # the design matrix of the raw values directly
    from .reference import design_matrix
    design, target = design_matrix(image, basis.kernels.numpy(), 1)
    coef = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
    assert torch.allclose(raw.coef[0], coef, rtol=1e-9)


def test_robust_fit_minimises_absolute_error():
    rng = np.random.default_rng(7)
    image = _images(rng, 1, (64, 64))[0]
    outliers = rng.random(image.shape) < 0.03
    image = image + outliers * rng.normal(scale=20, size=image.shape)
    basis = kb.Basis.isotropic(2)
    l2 = kb.fit(image[None], basis)
    l1 = kb.fit(image[None], basis, robust=True, robust_iterations=10)
    assert l1.mae is not None and l2.mae is None
    l2_mae = kb.fit(image[None], basis, robust=True, robust_iterations=0).mae
    assert l1.mae[0] < l2_mae[0]           # L1 fit wins on L1 error
    assert l2.mse[0] <= l1.mse[0]          # and L2 fit on squared error
    # a small step in any coordinate direction does not lower the L1 error
    for j in range(basis.n_components):
        for step in (-1e-2, 1e-2):
            coef = l1.coef.clone()
            coef[0, j] += step
            x = torch.as_tensor(zscore(image))[None]
            mae, _ = residual_sums(x, basis, coef)
            assert mae[0] / l1.n_pixels[0] >= l1.mae[0] - 1e-9


def test_constant_and_perfectly_predictable_images_give_finite_results():
    basis = kb.Basis.isotropic(2)
    yy, xx = np.mgrid[0:40, 0:40]
    images = np.stack([np.full((40, 40), 7.0), np.sin(0.3 * xx + 0.2 * yy)])
    for ridge in (0.0, 1e-6):
        result = kb.fit(images, basis, ridge=ridge)
        assert torch.isfinite(result.coef).all() and torch.isfinite(result.mse).all()
        assert torch.all(result.coef[0] == 0)
        assert result.mse[1] < 1e-6


def test_nearly_predictable_float32_image_is_solved_accurately():
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[0:96, 0:96]
    image = np.sin(0.21 * xx + 0.13 * yy) + 1e-3 * rng.normal(size=xx.shape)
    basis = kb.Basis.isotropic(2)
    r64 = kb.fit(image[None], basis, ridge=0)
    r32 = kb.fit(image[None].astype(np.float32), basis, ridge=0)
    # the Gram matrix is ill-conditioned (cond ~1e7): float64 accumulation keeps the
    # float32 fit's error within a few times the optimum instead of orders of magnitude
    assert float(r32.mse[0]) < 5 * float(r64.mse[0]) + 1e-6
    assert torch.isfinite(r32.coef).all()


@pytest.mark.parametrize("images,message", [
    (np.zeros((0, 20, 20)), "empty"),
    (np.zeros((20, 20)), "single image"),
    (np.zeros((2, 3, 20, 20)), "dimensions"),
    ([np.zeros((20, 20)), np.zeros((4, 20, 20))], "image 1 has 3 dimensions"),
    ([np.zeros((20, 20)), np.zeros((20, 4))], r"image 1 has shape \(20, 4\)"),
])
def test_bad_input_shapes_raise_value_error(images, message):
    with pytest.raises(ValueError, match=message):
        kb.fit(images, kb.Basis.isotropic(2))


def test_nan_and_inf_name_the_image():
    images = np.random.default_rng(9).normal(size=(4, 20, 20))
    images[2, 3, 4] = np.nan
    images[2, 5, 5] = np.inf
    with pytest.raises(ValueError, match="image 2 contains 2 NaN or inf"):
        kb.fit(images, kb.Basis.isotropic(2))


def test_too_small_at_a_pyramid_scale_is_reported():
    with pytest.raises(ValueError, match="image 0 .* at pyramid scale 5"):
        kb.fit(np.zeros((1, 20, 20)), kb.Basis.isotropic(2), scales=[1, 5])
    with pytest.raises(ValueError, match="dilation 3"):
        kb.fit(np.zeros((1, 12, 40)), kb.Basis.isotropic(2, dilation=3))


def test_bad_parameters():
    images = np.zeros((1, 20, 20))
    with pytest.raises(ValueError, match="ridge"):
        kb.fit(images, kb.Basis.isotropic(2), ridge=-1)
    with pytest.raises(ValueError, match="dilations"):
        kb.fit(images, kb.Basis.isotropic(2), dilations=[0])
    with pytest.raises(TypeError, match="Basis"):
        kb.fit(images, "isotropic")


@pytest.mark.parametrize("basis", [kb.Basis.isotropic(3), kb.Basis.full(2, dilation=2),
                                   kb.Basis.isotropic(1, ndim=3)], ids=repr)
def test_strips_and_image_chunks_sum_to_the_whole(monkeypatch, basis):
    # tiny strips force many row strips and many image chunks; the sums must not change
    rng = np.random.default_rng(10)
    shape = (37, 45) if basis.ndim == 2 else (11, 12, 13)
    images = _images(rng, 7, shape)
    whole = kb.fit(images, basis, ridge=0)
    monkeypatch.setattr("kernelbank.core._strips._STRIP_ELEMENTS", 50)
    pieces = kb.fit(images, basis, ridge=0)
    assert torch.allclose(pieces.gram, whole.gram, rtol=1e-12)
    assert torch.allclose(pieces.coef, whole.coef, rtol=1e-10, atol=1e-12)
    reference, _ = lstsq_fit(images[6], basis.kernels.numpy(), basis.dilation)
    assert torch.allclose(pieces.coef[6], reference, rtol=1e-8, atol=1e-10)


def test_image_chunks_of_fit_keep_order_and_values(monkeypatch):
    rng = np.random.default_rng(11)
    images = [_images(rng, 1, s)[0] for s in [(30, 30), (31, 33)] * 4]
    basis = kb.Basis.isotropic(2)
    whole = kb.fit(images, basis, scales=[1, 2])
    fit_module = importlib.import_module("kernelbank.core.images")
    monkeypatch.setattr(fit_module, "_CHUNK_ELEMENTS", 1500)       # 1 image per chunk
    chunked = kb.fit(images, basis, scales=[1, 2])
    assert torch.allclose(chunked.coef, whole.coef, rtol=1e-12, atol=1e-12)
    alone = kb.fit(images[5][None], basis, scales=[1, 2])
    assert torch.allclose(chunked.coef[5], alone.coef[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- engines
def _strip_sums(level, basis):
    """The previous Gram path: responses strip by strip (kernelbank.core._strips)."""
    m = basis.n_components
    full = plane_gram(level[:, None], basis)
    return full[:, :m, :m], full[:, :m, m], full[:, m, m]


def _engine_shapes(radius, ndim):
    """(shape, dilations): as small as the window at dilation 3; non-square; and large
    enough for the run engine at every dilation fitted (4·reach per side)."""
    small = 6 * radius + 1
    if ndim == 3:
        # volumes stay small: the strip reference costs (m + 1)² per voxel
        return [((small, small + 1, small), (1, 2, 3))] + \
            ([((8 * radius + 1,) * 3, (1, 2))] if radius <= 2 else [])
    return [((small, small), (1, 2, 3)), ((small + 3, small + 11), (1, 2, 3)),
            ((12 * radius + 5, 12 * radius + 13), (1, 2, 3))]


ENGINE_CASES = [pytest.param(kind, ndim, radius,
                             marks=[pytest.mark.slow] if ndim == 3 and radius > 1 else [])
                for kind in ("full", "isotropic")
                for ndim, radii in ((2, (1, 2, 3, 4)), (3, (1, 2, 3)))
                for radius in radii]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,ndim,radius", ENGINE_CASES)
def test_window_sum_equations_equal_strip_equations(kind, ndim, radius, dtype):
    basis = getattr(kb.Basis, kind)(radius, ndim=ndim)
    rng = np.random.default_rng(radius * 7 + ndim)
    for shape, dilations in _engine_shapes(radius, ndim):
        images = _images(rng, 2, shape).astype(dtype)
        # return_sums: every basis takes its equations from the window sums
        result = kb.fit(images, basis, dilations=list(dilations), return_sums=True)
        level = kb.core.normalize_images(torch.as_tensor(images))
        for i, dilation in enumerate(dilations):
            gram, rhs, sum_sq = _strip_sums(level, basis.with_dilation(dilation))
            # float64: both exact up to summation order; float32: products and block sums
            # in float32 on both sides, in different orders
            tol = 1e-9 if dtype == np.float64 else 2e-5
            scale = gram.abs().max()
            assert float((result.gram[:, i] - gram).abs().max() / scale) < tol, (shape, dilation)
            assert float((result.rhs[:, i] - rhs).abs().max() / scale) < tol, (shape, dilation)
            assert torch.allclose(result.sum_sq[:, i], sum_sq, rtol=tol, atol=0)


@pytest.mark.slow
def test_full_radius_4_volume_on_the_run_engine_equals_strips():
    # the smallest volume that puts a radius-4 window on the run engine (4·reach = 16)
    basis = kb.Basis.full(4, ndim=3)
    rng = np.random.default_rng(11)
    level = kb.core.normalize_images(torch.as_tensor(_images(rng, 1, (16, 17, 16))))
    result = kb.fit(level, basis, normalize=False, return_sums=True)
    gram, rhs, _ = _strip_sums(level, basis)
    assert float((result.gram - gram).abs().max() / gram.abs().max()) < 1e-9


def test_return_sums_are_the_window_sums_of_each_scale_and_dilation():
    from kernelbank.core.sums import window_sums
    rng = np.random.default_rng(12)
    images = [_images(rng, 1, s)[0] for s in [(40, 40), (52, 47), (40, 40)]]
    basis = kb.Basis.isotropic(2)
    result = kb.fit(images, basis, dilations=[1, 2], scales=[1, 2], return_sums=True)
    assert len(result.sums) == len(result.scale_index) == 4
    for i, image in enumerate(images):
        for (scale, dilation), sums in zip(result.scale_index, result.sums):
            level = kb.core.normalize_images(pyramid_level(torch.as_tensor(image)[None], scale))
            expected, = window_sums(level, basis.radius, [dilation])
            assert (sums.scale, sums.dilation, sums.radius) == (scale, dilation, 2)
            assert torch.allclose(sums.cross[i], expected.cross[0], rtol=1e-12, atol=1e-12)
            assert int(sums.n_pixels[i]) == int(expected.n_pixels[0])
    # the coefficients solve the equations the sums give
    gram, rhs, _, count = result.sums[1].basis_sums(basis.with_dilation(2))
    assert torch.allclose(gram, result.gram[:, 1], rtol=1e-12, atol=1e-12)
    assert kb.fit(images, basis).sums is None


def test_full_basis_fit_no_longer_builds_strip_responses(monkeypatch):
    # full bases take the lag engine; isotropic ones keep the (faster for them) strips
    import kernelbank.core.gram as equations
    calls = []
    monkeypatch.setattr(equations, "plane_gram",
                        lambda *a: calls.append(a[1].kind) or plane_gram(*a))
    rng = np.random.default_rng(13)
    images = _images(rng, 2, (40, 40))
    kb.fit(images, kb.Basis.full(2), dilations=[1, 2])
    kb.fit(images, kb.Basis.isotropic(2))
    assert calls == ["isotropic"]


# ---------------------------------------------------------------------------- channels
# Vector AR fits: explicit design matrices, sums path, one channel = today, centre masks (C > 1; one channel is the case above)
def _coloured(rng, n, channels, shape):
    """Smooth fields whose channels are mixed: cross-channel structure to fit."""
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=(n, channels) + shape)
    fields = np.stack([[gaussian_filter(c, 1.0) + 0.3 * c for c in image] for image in noise])
    mix = np.eye(channels) + 0.5 * np.tri(channels, k=-1)
    return np.einsum("cd,nd...->nc...", mix, fields)


CHANNEL_CASES = [(kind, channels, mask, ndim, radius, dilation)
         for kind in ("full", "isotropic")
         for channels, mask in ((1, "own"), (2, "own"), (3, "own"), (3, "all"))
         for ndim, radius, dilation in ((2, 1, 2), (2, 2, 1), (3, 1, 1))]


@pytest.mark.parametrize("kind,channels,mask,ndim,radius,dilation", CHANNEL_CASES)
def test_fit_equals_lstsq_on_explicit_design_matrices(kind, channels, mask, ndim, radius,
                                                      dilation):
    basis = getattr(kb.Basis, kind)(radius, dilation=dilation, ndim=ndim, channels=channels,
                                    centre_mask=mask)
    core = 24 if ndim == 2 else 7
    rng = np.random.default_rng(channels * 10 + radius)
    images = _coloured(rng, 2, channels, (2 * basis.reach + core,) * ndim)
    result = kb.fit(images, basis, ridge=0)
    assert result.coef.shape == (2, channels, basis.n_components)
    for i, image in enumerate(images):
        kernels = basis.kernels.numpy().reshape((channels, basis.n_components, channels)
                                                + basis.window_shape)
        coef, cov = channel_lstsq_fit(image, kernels, dilation)
        # float64, well-conditioned: both are backward-stable solvers (~cond·eps apart)
        assert torch.allclose(result.kernels[i].flatten(), basis.to_kernels(coef).flatten(),
                              rtol=0, atol=1e-9)
        assert torch.allclose(result.covariance[i], cov, rtol=1e-9, atol=1e-12)
        assert torch.allclose(result.mse[i], torch.diagonal(cov), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_fit_from_window_sums_equals_the_pixel_fit(kind):
    rng = np.random.default_rng(2)
    images = torch.from_numpy(_coloured(rng, 3, 3, (26, 25)))
    basis = getattr(kb.Basis, kind)(2, channels=3)
    pixel = kb.fit(images, basis)
    level = normalize_images(images.reshape(9, 26, 25)).reshape(3, 3, 26, 25)
    [sums] = kb.window_sums(level, 2, [1], channels=3)
    result = kb.channel_fit_from_sums(sums, basis)
    assert torch.allclose(result.coef, pixel.coef, rtol=0, atol=1e-9)
    assert torch.allclose(result.covariance, pixel.covariance, rtol=1e-9, atol=1e-12)
    assert torch.allclose(result.gram, pixel.gram, rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_one_channel_reproduces_the_one_channel_fit(kind):
    rng = np.random.default_rng(4)
    images = _coloured(rng, 3, 1, (30, 27))[:, 0]
    plain = kb.fit(images, getattr(kb.Basis, kind)(2), dilations=[1, 2])
    one = kb.fit(images[:, None], getattr(kb.ChannelBasis, kind)(2, channels=1),
                 dilations=[1, 2])
    # same Gram from the same strip engine, same solve: the coefficients are identical;
    # the MSE is the same quadratic form summed in another order
    assert torch.equal(one.coef[:, :, 0], plain.coef)
    assert torch.allclose(one.mse[:, :, 0], plain.mse, rtol=1e-12, atol=1e-15)
    assert torch.equal(one.kernels[:, :, 0, 0], plain.kernels)
    assert torch.allclose(one.covariance[..., 0, 0], plain.mse, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", [lambda c: kb.Basis.full(2, channels=c),
                                  lambda c: kb.Basis.isotropic(1, ndim=3, channels=c),
                                  lambda c: kb.Basis.from_kernels(
                                      kb.KernelBank.gabor(2, 3, (0.25,)).kernels)])
def test_grey_is_the_one_channel_case_of_the_one_pass(make):
    # (N, H, W) with a basis and (N, 1, H, W) with channels=1 run the same driver: every
    # output of the one pass agrees to 1e-10 (float64 images; only the squeeze differs)
    basis = make(1)
    rng = np.random.default_rng(8)
    images = _coloured(rng, 3, 1, (24, 23) if basis.ndim == 2 else (13, 12, 14))[:, 0]
    grey = kb.image_statistics(images, basis, dilations=(1, 2), grid=2)
    one = kb.image_statistics(images[:, None], basis, dilations=(1, 2), grid=2)
    assert grey.covariance is None and one.coef.shape == grey.coef.shape[:2] + (1, grey.coef.shape[-1])
    for a, b in [(one.coef[:, :, 0], grey.coef), (one.mse[:, :, 0], grey.mse),
                 (one.descriptors, grey.descriptors),
                 (one.sums[1].cross, grey.sums[1].cross),
                 (one.cell_sums[0].cross, grey.cell_sums[0].cross)]:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="one channel only"):
        kb.fit(images[:, None].repeat(3, 1), kb.Basis.full(1, channels=3), robust=True)


def test_own_centre_mask_uses_the_other_channels_at_the_same_pixel():
    rng = np.random.default_rng(6)
    grey = _coloured(rng, 2, 1, (40, 40))
    # channel 1 = channel 0 + a little white noise: predictable from channel 0's centre
    images = np.concatenate([grey, grey + 0.05 * rng.normal(size=grey.shape)], 1)
    own = kb.fit(images, kb.Basis.full(1, channels=2), normalize=False)
    every = kb.fit(images, kb.Basis.full(1, channels=2, centre_mask="all"), normalize=False)
    assert torch.all(every.kernels[:, :, :, 1, 1] == 0)
    assert torch.all(own.kernels[:, [0, 1], [0, 1], 1, 1] == 0)
    # with the other centre, the residual is about the added noise (variance 0.0025 for
    # channel 1, half of it each way as both predict each other); without it, much larger
    assert torch.all(own.mse < 0.004)
    assert torch.all(every.mse > 10 * own.mse)
    assert torch.allclose(own.kernels[:, 1, 0, 1, 1], torch.ones(2, dtype=torch.float64),
                          atol=0.05)


def test_scales_dilations_lists_and_dtypes():
    rng = np.random.default_rng(7)
    images = _coloured(rng, 3, 3, (33, 31)).astype(np.float32)
    basis = kb.Basis.isotropic(1, channels=3)
    result = kb.fit(images, basis, dilations=[1, 2], scales=[1, 2])
    assert result.coef.shape == (3, 4, 3, basis.n_components)
    assert result.coef.dtype == torch.float32 and result.covariance.dtype == torch.float64
    assert result.scale_index == [(1, 1), (1, 2), (2, 1), (2, 2)]
    mixed = [images[0], images[1, :, :25, :29], images[2]]
    listed = kb.fit(mixed, basis)
    alone = kb.fit(images[1:2, :, :25, :29], basis)
    assert torch.allclose(listed.coef[1], alone.coef[0])
    assert torch.allclose(listed.coef[[0, 2]], kb.fit(images[[0, 2]], basis).coef)


@pytest.mark.parametrize("images,kwargs,match", [
    (np.zeros((2, 2, 20, 20)), {}, r"\(N, 3, H, W\)"),
    (np.zeros((2, 20, 20)), {}, r"\(N, 3, H, W\)"),
    ([np.zeros((3, 20, 20)), np.zeros((20, 20))], {}, r"image 1 has shape \(20, 20\)"),
    (np.zeros((2, 3, 5, 20)), {}, "smaller than the 7-pixel window"),
    (np.zeros((2, 3, 20, 20)), {"robust": True}, "robust=True is not available"),
])
def test_bad_input_is_a_clear_error(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.fit(images, kb.Basis.full(3, channels=3), **kwargs)


def test_nan_names_the_image():
    images = np.zeros((2, 3, 12, 12))
    images[1, 2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="image 1 contains 1 NaN"):
        kb.fit(images, kb.Basis.full(1, channels=3))


def test_return_sums_gives_the_channel_window_sums_of_the_fitted_images():
    rng = np.random.default_rng(9)
    images = torch.from_numpy(_coloured(rng, 3, 2, (21, 23)))
    basis = kb.Basis.isotropic(1, channels=2)
    result = kb.fit(images, basis, dilations=[1, 2], scales=[1, 2], return_sums=True)
    assert [(s.scale, s.dilation, s.channels) for s in result.sums] == \
        [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]
    level = normalize_images(images.reshape(6, 21, 23)).reshape(3, 2, 21, 23)
    [direct] = kb.window_sums(level, 1, [2], channels=2)
    assert torch.allclose(result.sums[1].cross, direct.cross, rtol=1e-12, atol=1e-10)
    again = kb.fit_result_from_sums(result.sums[3], basis)
    assert torch.allclose(again.coef, result.coef[:, 3].double(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_one_factorisation_gives_each_channels_own_solve(kind):
    from kernelbank.core.solve import _solve_each, _solve_from_precision
    rng = np.random.default_rng(10)
    images = torch.from_numpy(_coloured(rng, 4, 3, (24, 24)))
    basis = getattr(kb.Basis, kind)(1, channels=3)
    gram = kb.fit(images, basis).gram
    count = torch.full((4,), 22 * 22)
    shared, failed = _solve_from_precision(gram, count, basis, 1e-6)
    assert not failed.any()
    # the partitioned inverse is exact algebra; float64 on a well-posed problem agrees to
    # ~cond·eps
    assert torch.allclose(shared, _solve_each(gram, count, basis, 1e-6), rtol=0, atol=1e-10)
    # a replicated grey image (singular but for the ridge) still solves
    grey = torch.from_numpy(np.repeat(_coloured(rng, 1, 1, (24, 24)), 3, axis=1))
    result = kb.fit(grey, basis)
    assert torch.isfinite(result.coef).all() and torch.all(result.mse < 1e-4)


# ---------------------------------------------------------------------------- channels
# The one pass with channels: explicit design matrices, explicit window sums, explicit (C > 1; one channel is the case above)
def _coloured_image(rng, shape, channels=3):
    """Channels mixed from one another: cross-channel structure to fit."""
    noise = rng.normal(size=(channels,) + shape)
    smooth = noise + 0.6 * np.roll(noise, 1, axis=-1) + 0.4 * np.roll(noise, 1, axis=-2)
    mix = np.eye(channels) + 0.5 * np.tri(channels, k=-1)
    return np.einsum("cd,d...->c...", mix, smooth)


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_coefficients_and_covariance_equal_explicit_lstsq(kind):
    rng = np.random.default_rng(3)
    images = [_coloured_image(rng, (21, 23)), _coloured_image(rng, (19, 24)), _coloured_image(rng, (21, 23))]
    basis = getattr(kb.Basis, kind)(1, channels=3)
    stats = channel_image_statistics(images, basis, dilations=[1, 2], ridge=0,
                                     descriptors=False)
    assert stats.coef.shape == (3, 2, 3, basis.n_components)
    for i, image in enumerate(images):
        for e, d in enumerate((1, 2)):
            coef, cov = channel_lstsq_fit(image, basis.kernels.numpy(), d)
            # well-conditioned float64 problems, two backward-stable solvers
            assert torch.allclose(stats.coef[i, e], coef, rtol=0, atol=1e-9)
            assert torch.allclose(stats.covariance[i, e], cov, rtol=1e-9, atol=1e-12)
            assert torch.allclose(stats.mse[i, e], torch.diagonal(cov), rtol=1e-9, atol=1e-12)


def test_window_sums_whole_and_per_cell_equal_the_explicit_windows():
    rng = np.random.default_rng(4)
    images = np.stack([_coloured_image(rng, (20, 22)) for _ in range(2)])
    stats = channel_image_statistics(images, kb.Basis.full(1, channels=3), dilations=[2],
                                     descriptors=False, grid=2)
    level = torch.from_numpy(np.stack([[zscore(c) for c in image] for image in images]))
    cross, first, count = window_sums(level, 1, 2, channels=3)
    [sums], [cells] = stats.sums, stats.cell_sums
    assert sums.channels == 3 and cells.channels == 3
    # float64 sums of ~400 products of unit-variance values
    assert torch.allclose(sums.cross, cross, rtol=1e-12, atol=1e-10)
    assert torch.allclose(sums.first, first, rtol=1e-12, atol=1e-10)
    assert torch.equal(sums.n_pixels, count)
    cross, first, count = window_sums(level, 1, 2, grid=2, channels=3)
    assert torch.allclose(cells.cross, cross, rtol=1e-12, atol=1e-10)
    assert torch.equal(cells.n_pixels, count)


def test_descriptors_describe_each_channels_explicit_residual():
    rng = np.random.default_rng(5)
    image = _coloured_image(rng, (24, 24))
    basis = kb.Basis.full(1, channels=3)
    stats = channel_image_statistics(image[None], basis, ridge=0)
    spec = ResidualDescriptors()
    assert stats.descriptor_names == residual_descriptor_names(spec, 2, 3)
    assert stats.descriptor_names[0].startswith("c0_")
    coef, _ = channel_lstsq_fit(image, basis.kernels.numpy(), 1)
    kernels = basis.to_kernels(coef).numpy()                  # (C, C, 3, 3)
    z = np.stack([zscore(c) for c in image])
    # e_c = x_c − Σ_{c', o} k[c, c', o] x_{c'}(p + o) by plain slicing
    residual = []
    for c in range(3):
        e = z[c, 1:-1, 1:-1].copy()
        for c2 in range(3):
            for dy in range(3):
                for dx in range(3):
                    e -= kernels[c, c2, dy, dx] * z[c2, dy:dy + 22, dx:dx + 22]
        residual.append(e)
    expected = _describe(torch.from_numpy(np.stack(residual)), spec, 2).reshape(-1)
    # moments and shares of ~500 residuals: the coefficients differ at 1e-12 between solvers,
    # and a residual at a histogram bin edge could move bins: compare with a tolerance of one
    # pixel's share
    assert torch.allclose(stats.descriptors[0, 0], expected, rtol=1e-6, atol=1.0 / 484 + 1e-9)


def test_wrong_channel_count_names_the_image():
    with pytest.raises(ValueError, match="image 1"):
        channel_image_statistics([np.zeros((3, 9, 9)), np.zeros((4, 9, 9))],
                                 kb.Basis.full(1, channels=3))
