"""Rotation-invariant spectral descriptors of AR kernels (kernelbank.core.spectrum)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelbank as kb
from kernelbank.core.spectrum import (ANGLES, HARMONICS, RADII, spectral_invariant_names,
                                      spectral_invariants, spectrum_operator)

KERNELS = kb.Basis.full(2).kernels.numpy()                     # (24, 5, 5), one tap each
COEF = np.random.default_rng(0).normal(scale=0.2, size=(6, 24))


def test_the_operator_gives_the_kernels_frequency_response():
    operator = spectrum_operator(KERNELS)
    assert operator.shape == (24, 2, len(RADII), ANGLES)
    kernel = np.tensordot(COEF[0], KERNELS, axes=1)              # (5, 5)
    for r, a in ((0, 0), (3, 5), (5, 11)):
        wy, wx = RADII[r] * np.sin(a * np.pi / ANGLES), RADII[r] * np.cos(a * np.pi / ANGLES)
        dy, dx = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
        direct = (kernel * np.exp(-1j * (wy * dy + wx * dx))).sum()
        got = COEF[0] @ operator[:, :, r, a]
        np.testing.assert_allclose(got, [direct.real, direct.imag], atol=1e-12)


def test_the_descriptors_are_the_log_spectrum_terms_of_each_circle():
    operator = spectrum_operator(KERNELS)
    out = spectral_invariants(COEF, operator)
    assert out.shape == (6, len(RADII) * HARMONICS)
    response = np.tensordot(COEF, operator, axes=1)
    log_power = -np.log((1 - response[:, 0]) ** 2 + response[:, 1] ** 2)    # (6, R, A)
    np.testing.assert_allclose(out.reshape(6, len(RADII), HARMONICS)[..., 0],
                               log_power.mean(-1), atol=1e-12)
    terms = np.abs(np.fft.fft(log_power, axis=-1))[..., 2] / ANGLES         # 4 cycles per turn
    np.testing.assert_allclose(out.reshape(6, len(RADII), HARMONICS)[..., 2], terms,
                               atol=1e-12)
    assert spectral_invariant_names("ar_s1_d1")[:2] == ["ar_s1_d1_spec_r0_h0",
                                                        "ar_s1_d1_spec_r0_h2"]


@pytest.mark.parametrize("move", [np.rot90, np.transpose, np.flipud])
def test_quarter_turns_and_flips_of_the_kernel_leave_them_unchanged(move):
    operator = spectrum_operator(KERNELS)
    kernels = np.tensordot(COEF, KERNELS, axes=1)                # (6, 5, 5)
    moved = np.stack([move(k) for k in kernels])
    # each moved kernel in the one-tap-per-coefficient basis
    moved_coef = np.stack([[m[tuple(np.argwhere(b)[0])] for b in KERNELS] for m in moved])
    assert np.abs(moved_coef - COEF).max() > 0.1
    np.testing.assert_allclose(spectral_invariants(moved_coef, operator),
                               spectral_invariants(COEF, operator), atol=1e-10)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="odd h and w"):
        spectrum_operator(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match=r"coef must be \(n, 24\)"):
        spectral_invariants(np.zeros((2, 12)), spectrum_operator(KERNELS))
