import itertools

import numpy as np
import pytest
import torch

import kernelbank as kb


@pytest.mark.parametrize("ndim,radius", [(2, 1), (2, 4), (3, 2)])
def test_isotropic_groups_offsets_by_distance(ndim, radius):
    basis = kb.Basis.isotropic(radius, ndim=ndim)
    # brute force: every non-centre offset, grouped by squared distance
    groups = {}
    for offset in itertools.product(range(-radius, radius + 1), repeat=ndim):
        if any(offset):
            groups.setdefault(sum(o * o for o in offset), []).append(offset)
    assert basis.n_components == len(groups)
    kernels = basis.kernels
    for j, squared in enumerate(sorted(groups)):
        expected = torch.zeros(basis.window_shape, dtype=torch.float64)
        for offset in groups[squared]:
            expected[tuple(o + radius for o in offset)] = 1
        assert torch.equal(kernels[j], expected)
        assert basis.ring_distances[j] == pytest.approx(np.sqrt(squared))


def test_isotropic_radius_4_has_14_rings():
    assert kb.Basis.isotropic(4).n_components == 14


def test_full_basis_is_one_hot():
    basis = kb.Basis.full(1, dilation=2)
    assert basis.n_components == 8
    assert basis.kernels.sum() == 8
    assert torch.all(basis.kernels[:, 1, 1] == 0)
    assert basis.reach == 2 and basis.min_image_size == 5


def test_from_kernels_round_trip_and_zero_centre_check():
    rng = np.random.default_rng(0)
    kernels = rng.normal(size=(3, 5, 5))
    kernels[:, 2, 2] = 0
    basis = kb.Basis.from_kernels(kernels, dilation=2)
    assert torch.allclose(basis.kernels, torch.as_tensor(kernels))
    kernels[1, 2, 2] = 0.5
    with pytest.raises(ValueError, match=r"kernels \[1\] have a non-zero centre"):
        kb.Basis.from_kernels(kernels)
    with pytest.raises(ValueError, match="odd"):
        kb.Basis.from_kernels(np.zeros((2, 4, 4)))


def test_custom_basis_fit_equals_full_basis_projection():
    # a custom basis spanning the full space gives the same kernel as the full basis
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(8, 8))
    full = kb.Basis.full(1)
    custom = kb.Basis.from_kernels(full.to_kernels(torch.as_tensor(mix)))
    images = rng.normal(size=(2, 30, 30))
    a = kb.fit(images, full, ridge=0)
    b = kb.fit(images, custom, ridge=0)
    assert torch.allclose(a.kernels, b.kernels, atol=1e-10)


@pytest.mark.parametrize("radius,dilation,ndim", [(0, 1, 2), (2, 0, 2), (2, 1, 4)])
def test_bad_geometry(radius, dilation, ndim):
    with pytest.raises(ValueError):
        kb.Basis.isotropic(radius, dilation=dilation, ndim=ndim)
