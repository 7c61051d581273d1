"""Vector AR fits: explicit design matrices, sums path, one channel = today, centre masks."""

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images

from .reference import channel_lstsq_fit


def _coloured(rng, n, channels, shape):
    """Smooth fields whose channels are mixed: cross-channel structure to fit."""
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=(n, channels) + shape)
    fields = np.stack([[gaussian_filter(c, 1.0) + 0.3 * c for c in image] for image in noise])
    mix = np.eye(channels) + 0.5 * np.tri(channels, k=-1)
    return np.einsum("cd,nd...->nc...", mix, fields)


CASES = [(kind, channels, mask, ndim, radius, dilation)
         for kind in ("full", "isotropic")
         for channels, mask in ((2, "own"), (3, "own"), (3, "all"))
         for ndim, radius, dilation in ((2, 1, 2), (2, 2, 1), (3, 1, 1))]


@pytest.mark.parametrize("kind,channels,mask,ndim,radius,dilation", CASES)
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
        coef, cov = channel_lstsq_fit(image, basis.kernels.numpy(), dilation)
        # float64, well-conditioned: both are backward-stable solvers (~cond·eps apart)
        assert torch.allclose(result.kernels[i], basis.to_kernels(coef), rtol=0, atol=1e-9)
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
    again = kb.channel_fit_from_sums(result.sums[3], basis)
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
