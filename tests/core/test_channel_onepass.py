"""The one pass with channels: explicit design matrices, explicit window sums, explicit
residuals, any image sizes in one call."""

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank import image_statistics as channel_image_statistics
from kernelbank.core.residual import ResidualDescriptors, _describe, residual_descriptor_names

from .reference import channel_lstsq_fit, window_sums, zscore


def _coloured(rng, shape, channels=3):
    """Channels mixed from one another: cross-channel structure to fit."""
    noise = rng.normal(size=(channels,) + shape)
    smooth = noise + 0.6 * np.roll(noise, 1, axis=-1) + 0.4 * np.roll(noise, 1, axis=-2)
    mix = np.eye(channels) + 0.5 * np.tri(channels, k=-1)
    return np.einsum("cd,d...->c...", mix, smooth)


@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_coefficients_and_covariance_equal_explicit_lstsq(kind):
    rng = np.random.default_rng(3)
    images = [_coloured(rng, (21, 23)), _coloured(rng, (19, 24)), _coloured(rng, (21, 23))]
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
    images = np.stack([_coloured(rng, (20, 22)) for _ in range(2)])
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
    image = _coloured(rng, (24, 24))
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
    expected = _describe(torch.from_numpy(np.stack(residual)), spec, 2, 1).reshape(-1)
    # moments and shares of ~500 residuals: the coefficients differ at 1e-12 between solvers,
    # and a residual at a histogram bin edge could move bins: compare with a tolerance of one
    # pixel's share
    assert torch.allclose(stats.descriptors[0, 0], expected, rtol=1e-6, atol=1.0 / 484 + 1e-9)


def test_wrong_channel_count_names_the_image():
    with pytest.raises(ValueError, match="image 1"):
        channel_image_statistics([np.zeros((3, 9, 9)), np.zeros((4, 9, 9))],
                                 kb.Basis.full(1, channels=3))
