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
    with pytest.raises(ValueError, match="kernel 1 of output channel 0 has weight 0.5"):
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


# ---------------------------------------------------------------------------- channels
# Vector AR bases: brute-force tap groups, centre masks, kernels round trip, validation (C > 1; one channel is the case above)
def _dense(basis):
    """(C, m, C, *window) kernels of the basis."""
    return basis.kernels.numpy()


@pytest.mark.parametrize("channels,mask", [(2, "own"), (3, "own"), (3, "all")])
def test_full_basis_uses_every_tap_but_the_masked_centres(channels, mask):
    basis = kb.Basis.full(1, channels=channels, centre_mask=mask)
    t = 9
    kernels = _dense(basis).reshape(channels, basis.n_components, channels * t)
    for c in range(channels):
        # brute force: the allowed taps (channel, offset) of output c
        allowed = [(s, a) for s in range(channels) for a in range(t)
                   if not (a == 4 and (s == c or mask == "all"))]
        assert basis.n_components == len(allowed)
        expected = np.zeros((len(allowed), channels * t))
        for j, (s, a) in enumerate(allowed):
            expected[j, s * t + a] = 1
        np.testing.assert_array_equal(kernels[c], expected)


@pytest.mark.parametrize("ndim,radius,mask", [(2, 2, "own"), (2, 1, "all"), (3, 1, "own")])
def test_isotropic_ties_taps_by_distance_within_each_channel_pair(ndim, radius, mask):
    channels = 3
    basis = kb.Basis.isotropic(radius, ndim=ndim, channels=channels, centre_mask=mask)
    kernels = _dense(basis)
    for c in range(channels):
        # brute force: per input channel, groups of offsets by squared distance; the
        # centre is a group of its own where the mask allows it
        expected = []
        for source in range(channels):
            groups = {}
            for offset in itertools.product(range(-radius, radius + 1), repeat=ndim):
                squared = sum(o * o for o in offset)
                if squared == 0 and (source == c or mask == "all"):
                    continue
                groups.setdefault(squared, []).append(offset)
            for squared in sorted(groups):
                k = np.zeros((channels,) + (2 * radius + 1,) * ndim)
                for offset in groups[squared]:
                    k[(source,) + tuple(o + radius for o in offset)] = 1
                expected.append(k)
        np.testing.assert_array_equal(kernels[c], np.stack(expected))


def test_one_channel_is_the_plain_basis():
    assert type(kb.Basis.full(2, channels=1)) is kb.Basis
    assert type(kb.Basis.isotropic(2, channels=1, centre_mask="all")) is kb.Basis
    one = kb.ChannelBasis.isotropic(2, channels=1)
    # one channel keeps the grey shapes: (m, *window)
    np.testing.assert_array_equal(one.kernels.numpy(), kb.Basis.isotropic(2).kernels.numpy())
    assert one.same_as(kb.Basis.isotropic(2))


def test_to_kernels_combines_components_per_output_channel():
    basis = kb.Basis.isotropic(1, channels=2)
    coef = torch.randn(4, 2, basis.n_components, dtype=torch.float64)
    kernels = basis.to_kernels(coef)
    expected = torch.einsum("ncm,cmskl->ncskl", coef, basis.kernels)
    assert torch.allclose(kernels, expected, rtol=0, atol=1e-14)
    # the own centre is never used
    assert torch.all(kernels[:, [0, 1], [0, 1], 1, 1] == 0)


def test_from_kernels_round_trip_and_masked_centre_check():
    basis = kb.Basis.full(1, channels=2)
    again = kb.Basis.from_kernels(basis.kernels, dilation=3)
    assert again.n_components == basis.n_components and again.dilation == 3
    assert torch.equal(again.kernels, basis.kernels)
    bad = basis.kernels.clone()
    bad[1, 0, 1, 1, 1] = 0.5         # output 1 using its own centre
    with pytest.raises(ValueError, match="centre of channel 1"):
        kb.ChannelBasis.from_kernels(bad)
    # other channels' centres are allowed by "own", refused by "all"
    with pytest.raises(ValueError, match="centre_mask='all'"):
        kb.ChannelBasis.from_kernels(basis.kernels, centre_mask="all")


@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 0}, "channels must be"),
    ({"channels": 3, "centre_mask": "none"}, "centre_mask must be one of"),
    ({"channels": 1, "centre_mask": "some"}, "centre_mask must be one of"),
])
def test_bad_channel_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.Basis.full(1, **kwargs)
