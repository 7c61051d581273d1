r"""Multi-channel textures with a known vector AR kernel: multivariate GMRFs.

A multivariate conditional autoregressive model (Mardia 1988) on ``C`` channels says
that each value given all the others is Gaussian with

    E[x_c(p) | rest] = Σ_{c'} Σ_o k_{cc'}(o) x_{c'}(p + o)      Var[x_c(p) | rest] = σ_c²

for a *vector kernel* ``k`` of shape ``(C, C, *window)`` with ``k_{cc}(0) = 0`` (the other
channels' centre taps may be non-zero: that is the colour correlation at one pixel). The
precision is ``Q = Λ⁻¹ (I − K)`` with ``Λ = diag(σ_c²)``; it is symmetric iff
``k_{cc'}(o) / σ_c² = k_{c'c}(−o) / σ_{c'}²``. On a periodic torus ``Q`` is block-circulant:
the DFT turns it into one ``C × C`` Hermitian matrix per frequency,

    Q̂(ω) = Λ⁻¹ (I − K̂(ω)),        K̂_{cc'}(ω) = Σ_o k_{cc'}(o) e^{i ω·o},

positive definite iff the largest eigenvalue of ``Λ^{-1/2} K̂(ω) Λ^{1/2}`` is below 1 at
every ω. The spectral density (the cross-power spectrum) is ``S(ω) = Q̂(ω)⁻¹``, and an exact
sample is ``x̂(ω) = L(ω) ẑ(ω)`` with ``L Lᴴ = S`` (Cholesky per frequency) and ``ẑ`` the DFT
of white noise of unit variance per channel.

Because the model is conditional, the residual ``e = (I − K) x`` has ``Cov(e, x) = Λ``:
``e_c(p)`` is uncorrelated with every value but ``x_c(p)``, so least squares of channel ``c``
on every other tap of the window (the vector AR fit of ``kb.fit`` with a
:class:`~kernelbank.core.basis.Basis` of ``C`` channels, own centre masked) estimates
``k_{c·}`` consistently. At one pixel the residuals of the channels have covariance
``σ_c²`` on the diagonal and ``−σ_c² k_{c'c}(0)`` off it
(:func:`vector_gmrf_residual_covariance`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core import Basis
from .synthetic import RandomState

__all__ = ["simulate_vector_gmrf", "vector_gmrf_spectral_density",
           "vector_gmrf_residual_covariance", "random_stable_vector_kernel"]


def _as_sigma(sigma, channels: int) -> np.ndarray:
    values = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (channels,)).copy() \
        if np.ndim(sigma) == 0 else np.asarray(sigma, dtype=np.float64)
    if values.shape != (channels,) or not np.all(values > 0) or not np.all(np.isfinite(values)):
        raise ValueError(f"sigma must be a positive number or {channels} positive numbers "
                         f"(one per channel), got {sigma!r}")
    return values


def _as_vector_kernel(kernel, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Validate a vector CAR kernel (C, C, *window) and its conditional deviations."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim not in (4, 5) or k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel must have shape (C, C, *window) with a 2-D or 3-D window, "
                         f"got shape {k.shape}")
    window = k.shape[2:]
    if any(side % 2 == 0 for side in window):
        raise ValueError(f"kernel window must have an odd side on every axis, got {window}")
    if not np.all(np.isfinite(k)):
        raise ValueError("kernel contains NaN or inf values")
    channels = k.shape[0]
    s = _as_sigma(sigma, channels)
    centre = tuple(side // 2 for side in window)
    own = np.array([k[(c, c) + centre] for c in range(channels)])
    if np.any(own != 0):
        c = int(np.nonzero(own)[0][0])
        raise ValueError(f"kernel[{c}, {c}] has centre weight {own[c]:.4g}; a conditional AR "
                         f"model predicts a channel from everything but itself. Set it to 0.")
    flipped = k[(slice(None), slice(None)) + (slice(None, None, -1),) * len(window)]
    scaled = k / (s ** 2)[:, None].reshape((channels, 1) + (1,) * len(window))
    mirror = np.swapaxes(flipped, 0, 1) / (s ** 2)[None, :].reshape(
        (1, channels) + (1,) * len(window))
    asymmetry = np.abs(scaled - mirror).max()
    if asymmetry > 1e-9 * max(1.0, np.abs(scaled).max()):
        raise ValueError(
            f"kernel is not symmetric as a precision needs (k_cc'(o)/σ_c² != k_c'c(-o)/σ_c'², "
            f"largest difference {asymmetry:.3g}); no Gaussian field has this conditional "
            f"model. Use (k + k mirrored) / 2 with equal sigmas.")
    return k, s


def _symbol(k: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``K̂(ω) = Σ_o k(o) e^{iω·o}`` at the real-FFT frequencies of ``shape``, (*half, C, C)."""
    window = k.shape[2:]
    if len(shape) != len(window):
        raise ValueError(f"shape {shape} has {len(shape)} axes but the kernel window has "
                         f"{len(window)}")
    if any(s < w for s, w in zip(shape, window)):
        raise ValueError(f"shape {shape} is smaller than the kernel window {window}; each side "
                         f"must be at least the kernel's so it does not wrap onto itself")
    wrapped = np.zeros(k.shape[:2] + shape)
    offsets = np.indices(window).reshape(len(window), -1).T - np.array(window) // 2
    for offset in offsets:
        tap = (slice(None), slice(None)) + tuple(offset + np.array(window) // 2)
        wrapped[(slice(None), slice(None)) + tuple(offset % np.array(shape))] += k[tap]
    axes = tuple(range(2, 2 + len(shape)))
    # the DFT sums e^{-iω·o}; the correlation K x has symbol Σ k(o) e^{+iω·o}
    spectrum = np.conj(np.fft.rfftn(wrapped, axes=axes))
    return np.moveaxis(spectrum, (0, 1), (-2, -1))


def _largest_response(k: np.ndarray, s: np.ndarray, shape: tuple[int, ...]) -> float:
    """``max_ω λ_max(Λ^{-1/2} K̂(ω) Λ^{1/2})`` over the DFT frequencies of ``shape``."""
    symbol = _symbol(k, shape) * (s[None, :] / s[:, None])
    symbol = (symbol + np.conj(np.swapaxes(symbol, -1, -2))) / 2       # Hermitian up to rounding
    return float(np.linalg.eigvalsh(symbol).max())


def vector_gmrf_spectral_density(kernel, shape: Sequence[int], sigma=1.0) -> np.ndarray:
    """Cross-power spectrum ``S(ω) = (Λ⁻¹ (I − K̂(ω)))⁻¹`` of the field on a periodic torus.

    Parameters
    ----------
    kernel : array of shape (C, C, *window)
        Vector kernel, ``kernel[c, c']`` the weights of channel ``c'`` in the conditional
        mean of channel ``c``; own centres zero; symmetric as the module docstring says.
    shape : tuple of int
        Torus size, one entry per window axis.
    sigma : float or sequence of C floats, default=1.0
        Conditional standard deviation of each channel.

    Returns
    -------
    np.ndarray of shape (*half, C, C), complex
        At the frequencies of ``numpy.fft.rfftn`` for ``shape``; Hermitian positive
        definite at each, and ``E[x_c(p) x_c'(p + L)] = (1/N) Σ_ω S_{cc'}(ω) e^{-iω·L}``
        (over the full spectrum).

    Raises
    ------
    ValueError
        For an invalid kernel, or one that is not stable on this torus.
    """
    k, s = _as_vector_kernel(kernel, sigma)
    shape = tuple(int(v) for v in shape)
    peak = _largest_response(k, s, shape)
    if peak >= 1:
        raise ValueError(f"kernel is not stable on a torus of shape {shape}: the largest "
                         f"eigenvalue of K̂(ω) is {peak:.4f} >= 1, so the precision is not "
                         f"positive definite. Scale the kernel down (e.g. by {0.9 / peak:.3g}).")
    channels = k.shape[0]
    precision = (np.eye(channels) - _symbol(k, shape)) / (s ** 2)[:, None]
    precision = (precision + np.conj(np.swapaxes(precision, -1, -2))) / 2
    return np.linalg.inv(precision)


def simulate_vector_gmrf(kernel, shape: Sequence[int], n: int = 1, sigma=1.0,
                         random_state: RandomState = None) -> np.ndarray:
    """Draw exact samples of a multivariate GMRF (vector conditional AR model).

    Parameters
    ----------
    kernel : array of shape (C, C, *window)
        See :func:`vector_gmrf_spectral_density`.
    shape : tuple of int
        Spatial size of each sample, ``(H, W)`` or ``(D, H, W)``.
    n : int, default=1
    sigma : float or sequence of C floats, default=1.0
        Conditional standard deviation of each channel.
    random_state : int, numpy Generator or None

    Returns
    -------
    np.ndarray of shape (n, C, *shape), float64
        Zero-mean samples with periodic boundaries.

    Examples
    --------
    >>> k = random_stable_vector_kernel(1, channels=3, random_state=0)
    >>> simulate_vector_gmrf(k, (16, 16), n=2, random_state=0).shape
    (2, 3, 16, 16)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(int(v) for v in shape)
    factor = np.linalg.cholesky(vector_gmrf_spectral_density(kernel, shape, sigma))
    channels = factor.shape[-1]
    rng = np.random.default_rng(random_state)
    noise = rng.standard_normal((int(n), channels) + shape)
    axes = tuple(range(2, 2 + len(shape)))
    spectrum = np.moveaxis(np.fft.rfftn(noise, axes=axes), 1, -1)[..., None]  # (n, *half, C, 1)
    mixed = np.moveaxis((factor @ spectrum)[..., 0], -1, 1)
    return np.fft.irfftn(mixed, s=shape, axes=axes)


def vector_gmrf_residual_covariance(kernel, sigma=1.0) -> np.ndarray:
    """``Cov(e_c(p), e_c'(p))`` of the conditional residuals at one pixel, (C, C).

    ``σ_c²`` on the diagonal and ``−σ_c² k_{c'c}(0)`` off it (``Cov(e) = Λ (I − K)ᵀ``).
    """
    k, s = _as_vector_kernel(kernel, sigma)
    centre = tuple(side // 2 for side in k.shape[2:])
    at_centre = k[(slice(None), slice(None)) + centre]                    # (C, C)
    return (s ** 2)[:, None] * (np.eye(len(s)) - at_centre.T)


def random_stable_vector_kernel(basis_or_radius: Basis | int, *, channels: int, ndim: int = 2,
                                max_response: float = 0.9, random_state: RandomState = None
                                ) -> np.ndarray:
    """Draw a random vector kernel that defines a valid multivariate GMRF (``σ_c = 1``).

    Every (output, input) channel pair gets standard normal coefficients on the basis
    (for ``c ≠ c'`` plus a random centre tap: the colour correlation at one pixel), the
    kernel is symmetrised (``k_{cc'}(o) = k_{c'c}(−o)``, the condition for equal ``σ``)
    and scaled so that the largest eigenvalue of ``K̂(ω)`` over frequency is
    ``max_response``.

    Parameters
    ----------
    basis_or_radius : Basis or int
        One-channel basis each channel pair combines, or a radius for
        ``Basis.isotropic(radius, ndim=ndim)``.
    channels : int
        ``C`` >= 1.
    ndim : int, default=2
    max_response : float, default=0.9
        In (0, 1); values near 1 give strongly correlated, more structured textures.
    random_state : int, numpy Generator or None

    Returns
    -------
    np.ndarray of shape (C, C, 2 r δ + 1, …), float64
        Stable on every torus (the maximum is taken on a fine frequency grid).
    """
    if not 0 < max_response < 1:
        raise ValueError(f"max_response must be in (0, 1), got {max_response!r}")
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    basis = (basis_or_radius if isinstance(basis_or_radius, Basis)
             else Basis.isotropic(int(basis_or_radius), ndim=ndim))
    rng = np.random.default_rng(random_state)
    coef = rng.standard_normal((channels, channels, basis.n_components))
    kernel = basis.to_kernels(torch.from_numpy(coef)).numpy()
    centre = (basis.radius,) * basis.ndim
    for c in range(channels):
        for source in range(channels):
            if c != source:
                kernel[(c, source) + centre] = rng.standard_normal()
    dilated = np.zeros((channels, channels) + tuple((s - 1) * basis.dilation + 1
                                                    for s in basis.window_shape))
    dilated[(slice(None), slice(None)) + (slice(None, None, basis.dilation),) * basis.ndim] = kernel
    mirrored = np.swapaxes(dilated[(slice(None), slice(None))
                                   + (slice(None, None, -1),) * basis.ndim], 0, 1)
    dilated = (dilated + mirrored) / 2
    reach = dilated.shape[-1] // 2
    fine = (max(64 if basis.ndim == 2 else 24, 16 * reach),) * basis.ndim
    peak = _largest_response(dilated, np.ones(channels), fine)
    if peak <= 0:
        raise ValueError("the drawn kernel has no positive response; use another random_state")
    return dilated * (max_response / peak)
