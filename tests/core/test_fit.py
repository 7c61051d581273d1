import importlib

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import pyramid_level
from kernelbank.core._strips import augmented_gram, residual_sums

from .reference import lstsq_fit, zscore


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
    full = augmented_gram(level, basis)
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
                        lambda *a: calls.append(a[1].kind) or augmented_gram(a[0][:, 0], a[1]))
    rng = np.random.default_rng(13)
    images = _images(rng, 2, (40, 40))
    kb.fit(images, kb.Basis.full(2), dilations=[1, 2])
    kb.fit(images, kb.Basis.isotropic(2))
    assert calls == ["isotropic"]
