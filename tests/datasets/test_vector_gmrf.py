"""Multivariate GMRF simulation: exact cross-covariance, vector kernel recovery, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.datasets import (random_stable_vector_kernel, simulate_vector_gmrf,
                                 vector_gmrf_residual_covariance, vector_gmrf_spectral_density)


def explicit_covariance(kernel: np.ndarray, shape: tuple[int, ...], sigma: np.ndarray):
    """Inverse of Q = Λ⁻¹ (I − K) built tap by tap on the torus, (C·N, C·N)."""
    channels, size = kernel.shape[0], int(np.prod(shape))
    window = kernel.shape[2:]
    precision = np.eye(channels * size)
    for c, p in itertools.product(range(channels), itertools.product(*map(range, shape))):
        row = c * size + np.ravel_multi_index(p, shape)
        taps = itertools.product(range(channels), itertools.product(*map(range, window)))
        for source, tap in taps:
            q = tuple((np.array(p) + np.array(tap) - np.array(window) // 2) % np.array(shape))
            precision[row, source * size + np.ravel_multi_index(q, shape)] -= \
                kernel[(c, source) + tap]
        precision[row] /= sigma[c] ** 2
    return np.linalg.inv(precision)


def test_spectral_density_is_the_explicit_covariance():
    # a full-basis kernel: k_cc'(o) != k_cc'(-o), so the direction of every lag matters
    kernel = random_stable_vector_kernel(kb.Basis.full(1), channels=2, random_state=1,
                                         max_response=0.9)
    assert np.abs(kernel[0, 1] - kernel[0, 1, ::-1, ::-1]).max() > 0.01
    # unequal conditional deviations: rescale the kernel so the precision stays symmetric,
    # k_cc'(o) σ_c'² = k_c'c(−o) σ_c²  ⇐  k_cc' scaled by σ_c / σ_c'
    sigma = np.array([1.0, 1.7])
    kernel = kernel * (sigma[:, None] / sigma[None, :])[:, :, None, None]
    shape = (5, 4)
    covariance = explicit_covariance(kernel, shape, sigma)
    spectrum = vector_gmrf_spectral_density(kernel, shape, sigma)
    # full spectrum from the half one (S(−ω) = conj S(ω)), then the inverse DFT with the
    # convention of the docstring: E[x_c(0) x_c'(L)] = (1/N) Σ_ω S_cc'(ω) e^{−iω·L}
    full = np.concatenate([spectrum, np.conj(spectrum[(-np.arange(5)) % 5][:, [1]])], 1)
    n = int(np.prod(shape))
    lags = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="ij"), -1)
    omega = np.stack(np.meshgrid(2 * np.pi * np.fft.fftfreq(5), 2 * np.pi * np.fft.fftfreq(4),
                                 indexing="ij"), -1)
    phase = np.exp(-1j * np.einsum("abk,yxk->abyx", omega, lags))
    autocov = np.einsum("abcd,abyx->cdyx", full, phase).real / n
    for c, d in itertools.product(range(2), repeat=2):
        np.testing.assert_allclose(covariance[c * n, d * n:(d + 1) * n],
                                   autocov[c, d].ravel(), rtol=1e-10, atol=1e-12)


def test_least_squares_recovers_the_vector_kernel_and_residual_covariance():
    kernel = random_stable_vector_kernel(kb.Basis.full(1), channels=3, random_state=2,
                                         max_response=0.8)
    images = simulate_vector_gmrf(kernel, (96, 96), n=12, random_state=0)
    result = kb.fit(images, kb.Basis.full(1, channels=3), normalize=False, ridge=0)
    # ~1e5 pixels: the standard error of each coefficient is ~1/sqrt(1e5) ≈ 0.003
    estimate = result.kernels.mean(0).numpy()
    np.testing.assert_allclose(estimate, kernel, atol=0.015)
    assert np.abs(kernel).max() > 0.05        # the tolerance is well below the kernel
    np.testing.assert_allclose(result.covariance.mean(0).numpy(),
                               vector_gmrf_residual_covariance(kernel), atol=0.03)


def test_samples_have_the_stationary_covariance_and_the_stated_shape():
    kernel = random_stable_vector_kernel(kb.Basis.full(1), channels=2, random_state=3)
    samples = simulate_vector_gmrf(kernel, (32, 32), n=40, random_state=1)
    assert samples.shape == (40, 2, 32, 32)
    spectrum = vector_gmrf_spectral_density(kernel, (32, 32))
    # lag-0 covariance of the channels: the mean of S over the full spectrum; the real
    # half spectrum counts the inner columns twice
    weights = np.full(spectrum.shape[1], 2.0)
    weights[0] = weights[-1] = 1.0
    expected = (spectrum * weights[None, :, None, None]).sum((0, 1)).real / 1024
    empirical = np.einsum("ncyx,ndyx->cd", samples, samples) / (40 * 1024)
    np.testing.assert_allclose(empirical, expected, atol=0.1 * np.abs(expected).max())


@pytest.mark.parametrize("mutate,match", [
    (lambda k: k.__setitem__((0, 0, 1, 1), 0.1), r"kernel\[0, 0\] has centre weight"),
    (lambda k: k.__setitem__((0, 1, 0, 0), k[0, 1, 0, 0] + 0.2), "not symmetric"),
    (lambda k: k.__imul__(3.0), "not stable"),
])
def test_invalid_kernels_are_clear_errors(mutate, match):
    kernel = random_stable_vector_kernel(1, channels=2, random_state=0, max_response=0.5)
    mutate(kernel)
    with pytest.raises(ValueError, match=match):
        simulate_vector_gmrf(kernel, (16, 16))
