"""Window sums and Grams of several channels (the engines behind kernelbank.core.gram) against
the explicit stack of shifted (channel, offset) windows."""

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core._strips import plane_gram as channel_gram

from .reference import window_sums as reference_sums

# small images (summed directly) and images large enough for the lag engine's runs, 2-D
# and 3-D, dilations 1-3, whole-image and per-cell, square and not
CASES = [((2, 2, 17, 19), 1, 1, None), ((2, 3, 20, 23), 2, 2, None),
         ((2, 3, 21, 22), 2, 1, 2), ((2, 2, 9, 10, 11), 1, 1, None),
         ((1, 3, 9, 9), 4, 1, None), ((2, 3, 41, 38), 2, 2, None), ((3, 2, 40, 43), 1, 3, 2),
         ((2, 3, 36, 36), 4, 1, None), ((2, 2, 13, 14, 15), 1, 1, None),
         ((1, 2, 19, 17, 21), 1, 2, None)]


@pytest.mark.parametrize("shape,radius,dilation,grid", CASES)
def test_channel_window_sums_equal_the_explicit_windows(shape, radius, dilation, grid):
    rng = np.random.default_rng(sum(shape))
    batch = torch.from_numpy(rng.normal(size=shape) + 2.0)
    channels = shape[1]
    [sums] = kb.window_sums(batch, radius, [dilation], grid=grid, channels=channels)
    cross, first, count = reference_sums(batch, radius, dilation, grid, channels=channels)
    assert sums.channels == channels and sums.n_taps == channels * (2 * radius + 1) ** (
        len(shape) - 2)
    # float64 sums of a few hundred products of O(10) values: agreement to ~1e-13 relative
    assert torch.allclose(sums.cross, cross, rtol=1e-12, atol=1e-10)
    assert torch.allclose(sums.first, first, rtol=1e-12, atol=1e-10)
    assert torch.equal(sums.n_pixels, count.to(torch.int64))
    # exactly symmetric: ((c, a), (c', b)) and ((c', b), (c, a)) read one lag sum
    assert torch.equal(sums.cross, sums.cross.transpose(-1, -2))


def test_float32_channels_with_a_large_offset_lose_no_digits():
    rng = np.random.default_rng(3)
    batch = torch.from_numpy(rng.normal(size=(2, 3, 40, 40)) + 200.0).float()
    [sums] = kb.window_sums(batch, 2, [1], channels=3)
    cross, _, _ = reference_sums(batch, 2, 1, channels=3)      # float64 products
    # cross ~ 200² · 1296 pixels = 5e7: float32 products of the raw values would be off by
    # ~5 (1e-7 relative); the per-channel mean shift leaves errors of float32 products
    # of O(1) values, ~1e-4 summed over the pixels
    assert (sums.cross - cross).abs().max() < 0.05


def test_one_channel_sums_are_todays_sums():
    rng = np.random.default_rng(5)
    batch = torch.from_numpy(rng.normal(size=(3, 18, 21)))
    [plain] = kb.window_sums(batch, 2, [1])
    [one] = kb.window_sums(batch, 2, [1], channels=1)
    assert torch.equal(plain.cross, one.cross) and one.channels == 1


def test_channel_gram_holds_every_cross_channel_product_of_the_planes():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.normal(size=(2, 2, 15, 16)))
    basis = kb.Basis.isotropic(2)
    gram = channel_gram(images, basis)
    # brute force: the planes by conv2d, the Gram by one product
    kernels = basis.kernels[:, None]
    planes = []
    for c in range(2):
        x = images[:, c:c + 1]
        planes.append(torch.nn.functional.conv2d(x, kernels).flatten(2))
        planes.append(x[:, :, 2:-2, 2:-2].flatten(2))
    z = torch.cat(planes, 1)
    assert torch.allclose(gram, z @ z.transpose(1, 2), rtol=1e-12, atol=1e-10)


def test_channel_sums_reject_a_wrong_channel_axis():
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        kb.window_sums(torch.zeros(2, 2, 9, 9), 1, [1], channels=3)


@pytest.mark.parametrize("grid", [None, 2])
def test_channel_sums_round_trip_through_rows(grid):
    rng = np.random.default_rng(8)
    batch = torch.from_numpy(rng.normal(size=(3, 2, 14, 15)))
    [sums] = kb.window_sums(batch, 1, [2], grid=grid, channels=2)
    rows = kb.sums_to_rows(sums)
    t = 2 * 9
    cells = 1 if grid is None else 4
    assert rows.shape == (3, cells * (t * (t + 1) // 2 + t + 1))
    assert rows.shape[1] == kb.core.sums_row_length(1, 2, grid, channels=2)
    back = kb.sums_from_rows(rows, radius=1, dilation=2, ndim=2, grid=grid, channels=2)
    assert back.channels == 2
    # the upper triangle and its mirror: exact for the stored half, symmetric within
    # the float64 rounding of the sums for the other
    assert torch.allclose(back.cross, sums.cross, rtol=1e-14, atol=1e-12)
    assert torch.equal(back.first, sums.first) and torch.equal(back.n_pixels, sums.n_pixels)
    with pytest.raises(ValueError, match=r"3 channel\(s\)"):
        kb.sums_from_rows(rows, radius=1, dilation=2, ndim=2, grid=grid, channels=3)
