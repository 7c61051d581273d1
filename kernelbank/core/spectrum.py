"""Rotation-invariant descriptors of an AR kernel, from its frequency response.

A texture rotated by an angle has its power spectrum rotated by the same angle, and the
AR kernel fitted to it approximates the rotated spectrum. The kernel's coefficients move
with every turn; the Fourier magnitudes of the log prediction-error spectrum along
circles of the frequency plane do not (a rotation only shifts each circle's samples).

For a kernel ``a`` over taps ``k`` (centre excluded), the prediction-error filter's
response is ``1 - A(w)``, ``A(w) = sum_k a_k exp(-i w.k)``, and the model's log power
spectrum is ``log sigma^2 - log |1 - A(w)|^2``. A real kernel's ``|1 - A|`` is even, so
half a circle holds it all: :data:`ANGLES` samples per circle over 180°, at the radii
:data:`RADII` (fractions of pi, in the entry's own dilated lattice), then the magnitudes
of the first :data:`HARMONICS` angular Fourier terms (0, 2, 4, 6 cycles per turn). A
quarter turn shifts the samples by exactly ``ANGLES / 2`` and a flip reverses them, so
the descriptors are exactly invariant to both; other angles hold as far as the window's
lattice lets the fitted kernel follow the texture.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RADII", "ANGLES", "HARMONICS", "spectrum_operator", "spectral_invariants",
           "spectral_invariant_names"]

#: Radii of the sampled circles, in radians per (dilated) tap: pi/12 to 5 pi/6.
RADII: tuple[float, ...] = tuple(np.pi * k / 12 for k in (1, 2, 4, 6, 8, 10))
#: Samples per half circle.
ANGLES = 16
#: Angular Fourier terms kept per circle (0, 2, 4, 6 cycles per full turn).
HARMONICS = 4
#: Floor of ``|1 - A|^2`` before the log (a kernel that predicts one frequency exactly).
_FLOOR = 1e-6


def spectrum_operator(kernels: np.ndarray) -> np.ndarray:
    """Linear map from basis coefficients to the kernel's response on the polar grid.

    Parameters
    ----------
    kernels : array of shape (m, h, w)
        The basis kernels (``Basis.to_kernels(eye(m))``), odd-sized windows centred on
        the predicted pixel.

    Returns
    -------
    ndarray of shape (m, 2, len(RADII), ANGLES)
        Real and imaginary parts of each basis kernel's ``A(w)``.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    if kernels.ndim != 3 or kernels.shape[1] % 2 == 0 or kernels.shape[2] % 2 == 0:
        raise ValueError(f"kernels must be (m, h, w) with odd h and w (2-D windows), got "
                         f"shape {kernels.shape}")
    _, h, w = kernels.shape
    dy, dx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    theta = np.arange(ANGLES) * np.pi / ANGLES
    # (R, A, h*w): w.k for every circle, angle and tap
    direction = np.sin(theta)[:, None] * dy.ravel() + np.cos(theta)[:, None] * dx.ravel()
    phase = np.asarray(RADII)[:, None, None] * direction
    flat = kernels.reshape(len(kernels), -1)                       # (m, h*w)
    return np.stack([np.einsum("mt,rat->mra", flat, np.cos(phase)),
                     np.einsum("mt,rat->mra", flat, -np.sin(phase))], 1)


def spectral_invariants(coef: np.ndarray, operator: np.ndarray) -> np.ndarray:
    """Rotation-invariant descriptors of kernels given by their basis coefficients.

    Parameters
    ----------
    coef : array of shape (n, m)
        Kernel coefficients in the basis of ``operator``.
    operator : array of shape (m, 2, R, ANGLES)
        :func:`spectrum_operator` of the basis.

    Returns
    -------
    ndarray of shape (n, R * HARMONICS)
        Per circle (radius-major), the mean of ``-log |1 - A|^2`` over the circle and
        the magnitudes of its 2-, 4- and 6-cycle terms.
    """
    coef = np.asarray(coef, dtype=np.float64)
    m = operator.shape[0]
    if coef.ndim != 2 or coef.shape[1] != m:
        raise ValueError(f"coef must be (n, {m}) for this basis, got shape {coef.shape}")
    response = np.tensordot(coef, operator, axes=1)                # (n, 2, R, A)
    log_power = -np.log(np.maximum((1 - response[:, 0]) ** 2 + response[:, 1] ** 2, _FLOOR))
    terms = np.fft.rfft(log_power, axis=-1)[..., :HARMONICS] / ANGLES
    out = np.abs(terms)
    out[..., 0] = terms[..., 0].real                               # the mean keeps its sign
    return out.reshape(len(coef), -1)


def spectral_invariant_names(prefix: str) -> list[str]:
    """Column names of :func:`spectral_invariants`: ``<prefix>_spec_r<i>_h<k>`` (circle
    ``i`` of :data:`RADII`, ``2k`` cycles per turn)."""
    return [f"{prefix}_spec_r{i}_h{2 * k}" for i in range(len(RADII)) for k in range(HARMONICS)]
