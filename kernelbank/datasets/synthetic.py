r"""Synthetic textures with a known AR kernel: Gaussian Markov random fields.

A *conditional* autoregressive (CAR) model, or Gaussian Markov random field, says that
each pixel given all the others is Gaussian with

    E[x(p) | x(q), q ≠ p] = Σ_o k(o) x(p + o)        Var[x(p) | x(q), q ≠ p] = σ²

for a kernel ``k`` with ``k(0) = 0``. Its precision matrix is ``Q = (I - K) / σ²`` with
``K`` the convolution by ``k``. ``Q`` is symmetric only if ``k(o) = k(-o)``, and positive
definite only if ``1 - K̂(ω) > 0``. On a periodic torus ``Q`` is circulant, diagonalised
by the DFT, so the field is stationary with spectral density (power spectrum)

    S(ω) = σ² / (1 - K̂(ω)),        K̂(ω) = Σ_o k(o) cos(ω·o),

and an exact sample is ``x = IDFT(√S · DFT(z))`` for white noise ``z`` of unit variance.

Because the model is conditional, the residual ``e(p) = x(p) - Σ_o k(o) x(p + o)`` is
uncorrelated with every other pixel, so least squares of ``x`` on its neighbours (what
:func:`kernelbank.fit` does) is a consistent estimate of ``k``: the fitted kernel of a
sample converges to ``k`` as the number of pixels grows, with a standard error that
shrinks like ``1 / sqrt(pixels)``. (A *simultaneous* AR model, ``x = k * x + e`` with white
``e``, would not have this property.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..core import Basis

__all__ = ["simulate_gmrf", "gmrf_spectral_density", "random_stable_kernel",
           "make_synthetic_dataset", "write_synthetic_dataset"]

RandomState = int | np.random.Generator | np.random.SeedSequence | None


def _as_kernel(kernel, name: str = "kernel") -> np.ndarray:
    """Validate a dense CAR kernel: real, finite, odd window, 2-D/3-D, zero centre, symmetric."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2-D or 3-D array, got shape {k.shape}")
    if any(side % 2 == 0 for side in k.shape):
        raise ValueError(f"{name} must have an odd side on every axis (a centre tap), got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{name} contains NaN or inf values")
    centre = tuple(side // 2 for side in k.shape)
    if k[centre] != 0:
        raise ValueError(
            f"{name} has centre weight {k[centre]:.4g}; a conditional AR kernel predicts a pixel "
            f"from its neighbours only. Set the centre to 0.")
    flipped = k[(slice(None, None, -1),) * k.ndim]
    asymmetry = np.abs(k - flipped).max()
    if asymmetry > 1e-9 * max(1.0, np.abs(k).max()):
        raise ValueError(
            f"{name} is not point-symmetric (k(o) != k(-o), largest difference {asymmetry:.3g}); "
            f"a Gaussian Markov random field needs a symmetric kernel. Use (k + k flipped) / 2.")
    return k


def _kernel_response(k: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``K̂(ω) = Σ_o k(o) cos(ω·o)`` at the DFT frequencies of a torus of ``shape``.

    Returns the real-FFT half spectrum, shape ``rfftn`` gives for ``shape``.
    """
    if len(shape) != k.ndim:
        raise ValueError(f"shape {tuple(shape)} has {len(shape)} axes but the kernel has {k.ndim}")
    too_small = [s for s, w in zip(shape, k.shape) if s < w]
    if too_small:
        raise ValueError(
            f"shape {tuple(shape)} is smaller than the kernel window {k.shape}; each side must be "
            f"at least the kernel's side so the kernel does not wrap onto itself")
    wrapped = np.zeros(shape)
    offsets = np.indices(k.shape).reshape(k.ndim, -1).T - np.array(k.shape) // 2
    for offset, weight in zip(offsets, k.ravel()):
        if weight != 0:
            wrapped[tuple(offset % np.array(shape))] += weight
    # k is symmetric, so its DFT is real up to rounding.
    return np.fft.rfftn(wrapped).real


def gmrf_spectral_density(kernel, shape: Sequence[int], sigma: float = 1.0) -> np.ndarray:
    """Power spectrum ``S(ω) = σ² / (1 - K̂(ω))`` of the GMRF on a periodic torus.

    Parameters
    ----------
    kernel : array of shape (2r+1, 2r+1) or (2r+1, 2r+1, 2r+1)
        Symmetric kernel with zero centre.
    shape : tuple of int
        Torus size, one entry per kernel axis.
    sigma : float, default=1.0
        Conditional standard deviation ``σ``.

    Returns
    -------
    np.ndarray of the ``numpy.fft.rfftn`` half-spectrum shape for ``shape``
        ``S`` at each DFT frequency; ``irfftn(S, s=shape, axes=...)`` is the autocovariance.

    Raises
    ------
    ValueError
        If the kernel is not symmetric, has a non-zero centre, or ``max K̂ >= 1``
        (the precision matrix would not be positive definite).
    """
    k = _as_kernel(kernel)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    shape = tuple(int(s) for s in shape)
    response = _kernel_response(k, shape)
    peak = response.max()
    if peak >= 1:
        raise ValueError(
            f"kernel is not stable on a torus of shape {shape}: max K̂(ω) = {peak:.4f} >= 1, so "
            f"1 - K̂ is not positive and no Gaussian field has this conditional model. Scale the "
            f"kernel down (e.g. by {0.9 / peak:.3g} to get max K̂ = 0.9).")
    return sigma**2 / (1.0 - response)


def simulate_gmrf(kernel, shape: Sequence[int], n: int = 1, sigma: float = 1.0,
                  random_state: RandomState = None) -> np.ndarray:
    """Draw exact samples of a Gaussian Markov random field (conditional AR model).

    Each sample satisfies ``x(p) = Σ_o k(o) x(p + o) + e(p)`` with
    ``Var[e(p)] = Var[x(p) | rest] = σ²``, with periodic boundaries.

    Parameters
    ----------
    kernel : array of shape (2r+1, 2r+1) or (2r+1, 2r+1, 2r+1)
        Point-symmetric kernel (``k(o) = k(-o)``) with zero centre and
        ``max_ω K̂(ω) < 1``; numpy array or torch tensor.
    shape : tuple of int
        Size of each sample, ``(H, W)`` or ``(D, H, W)``.
    n : int, default=1
        Number of independent samples.
    sigma : float, default=1.0
        Conditional standard deviation ``σ``.
    random_state : int, numpy Generator or None
        Seed for the white noise.

    Returns
    -------
    np.ndarray of shape (n, *shape), float64
        Zero-mean samples.

    Raises
    ------
    ValueError
        For an asymmetric kernel, a non-zero centre, an unstable kernel
        (``max K̂ >= 1``), or a shape smaller than the kernel.

    Examples
    --------
    >>> import numpy as np
    >>> k = np.zeros((3, 3)); k[1, 0] = k[1, 2] = k[0, 1] = k[2, 1] = 0.2
    >>> simulate_gmrf(k, (32, 32), n=2, random_state=0).shape
    (2, 32, 32)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(int(s) for s in shape)
    spectrum = gmrf_spectral_density(kernel, shape, sigma)
    rng = np.random.default_rng(random_state)
    noise = rng.standard_normal((int(n),) + shape)
    axes = tuple(range(1, len(shape) + 1))
    # White noise has flat spectrum 1; filtering by sqrt(S) gives covariance IDFT(S) exactly.
    return np.fft.irfftn(np.fft.rfftn(noise, axes=axes) * np.sqrt(spectrum), s=shape, axes=axes)


def _dilate(kernel: np.ndarray, dilation: int) -> np.ndarray:
    if dilation == 1:
        return kernel
    shape = tuple((side - 1) * dilation + 1 for side in kernel.shape)
    dense = np.zeros(shape)
    dense[(slice(None, None, dilation),) * kernel.ndim] = kernel
    return dense


def random_stable_kernel(basis_or_radius: Basis | int, *, ndim: int = 2, max_response: float = 0.9,
                         random_state: RandomState = None) -> np.ndarray:
    """Draw a random symmetric kernel that defines a valid GMRF.

    Coefficients are standard normal on the basis, the kernel is made point-symmetric
    (``(k + k flipped) / 2``; isotropic kernels already are) and scaled so that the
    largest value of ``K̂(ω)`` over frequency is ``max_response``. Values near 1 give
    strongly correlated, more structured textures.

    Parameters
    ----------
    basis_or_radius : Basis or int
        Basis to combine, or a radius for ``Basis.isotropic(radius, ndim=ndim)``.
        A dilated basis gives a dense kernel on the dilated window.
    ndim : int, default=2
        Dimension when a radius is given.
    max_response : float, default=0.9
        Target ``max_ω K̂(ω)``, in (0, 1).
    random_state : int, numpy Generator or None

    Returns
    -------
    np.ndarray of shape (2 r δ + 1,) * ndim, float64
        Zero-centre symmetric kernel; ``max K̂ = max_response`` over continuous
        frequencies (up to a fine grid's resolution), so it is stable on every torus.
    """
    if not 0 < max_response < 1:
        raise ValueError(f"max_response must be in (0, 1), got {max_response!r}")
    basis = (basis_or_radius if isinstance(basis_or_radius, Basis)
             else Basis.isotropic(int(basis_or_radius), ndim=ndim))
    rng = np.random.default_rng(random_state)
    coef = rng.standard_normal(basis.n_components)
    kernel = basis.to_kernels(torch.from_numpy(coef)).numpy()
    kernel = 0.5 * (kernel + kernel[(slice(None, None, -1),) * kernel.ndim])
    kernel = _dilate(kernel, basis.dilation)
    # K̂ is a trigonometric polynomial of degree `reach`; a grid of >= 16 points per unit
    # of degree finds its maximum over continuous ω to well within the margin below 1, so
    # the kernel is stable on a torus of any size.
    reach = kernel.shape[0] // 2
    fine = (max(128 if kernel.ndim == 2 else 48, 16 * reach),) * kernel.ndim
    peak = _kernel_response(kernel, fine).max()
    if peak <= 0:  # only the zero kernel: mean of K̂ over frequency is k(0) = 0
        raise ValueError("the drawn kernel is zero; use another random_state")
    return kernel * (max_response / peak)


def make_synthetic_dataset(kernels: Mapping[str, np.ndarray], n_per_class: int,
                           shape: Sequence[int], *, sigma: float = 1.0,
                           random_state: RandomState = None) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``n_per_class`` GMRF samples for each named kernel.

    Parameters
    ----------
    kernels : mapping of class name to kernel
        One symmetric stable kernel per class (see :func:`random_stable_kernel`).
    n_per_class : int
        Samples per class.
    shape : tuple of int
        Size of each sample.
    sigma : float, default=1.0
    random_state : int, numpy Generator or None

    Returns
    -------
    images : np.ndarray of shape (n_classes * n_per_class, *shape), float64
    labels : np.ndarray of shape (n_classes * n_per_class,), str
        Class names, grouped by class in the order of ``kernels``.
    """
    if not kernels:
        raise ValueError("kernels is empty: give at least one class name -> kernel")
    rng = np.random.default_rng(random_state)
    images, labels = [], []
    for name, kernel in kernels.items():
        images.append(simulate_gmrf(kernel, shape, n=n_per_class, sigma=sigma, random_state=rng))
        labels += [str(name)] * n_per_class
    return np.concatenate(images), np.array(labels)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Map ±4 standard deviations around the mean to 0..255 (quantisation noise ~1e-4 of the variance)."""
    z = (image - image.mean()) / max(image.std(), 1e-12)
    return np.clip(np.rint(128 + 32 * z), 0, 255).astype(np.uint8)


def write_synthetic_dataset(root: str | Path, kernels: Mapping[str, np.ndarray], n_per_class: int,
                            shape: Sequence[int], *, splits: Sequence[str] = ("train", "test"),
                            sigma: float = 1.0, random_state: RandomState = None) -> dict:
    """Write GMRF samples as ``root/<split>/<class>/<class>_<index>.png``.

    2-D samples become uint8 PNGs (mean 128, 32 grey levels per standard deviation);
    3-D samples become float32 ``.npy`` volumes. Each split gets ``n_per_class`` fresh
    samples per class. The kernels are saved in ``root/kernels.npz`` (one array per class).

    Returns
    -------
    dict
        ``root``, ``shape``, ``classes``, ``counts`` (split -> class -> number of files)
        and ``files`` (list of ``{"path", "class", "split"}``, paths relative to ``root``).
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(random_state)
    counts: dict[str, dict[str, int]] = {}
    files = []
    for split in splits:
        images, labels = make_synthetic_dataset(kernels, n_per_class, shape, sigma=sigma,
                                                random_state=rng)
        counts[split] = {str(name): 0 for name in kernels}
        for image, label in zip(images, labels):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            index = counts[split][label]
            if image.ndim == 2:
                path = folder / f"{label}_{index:05d}.png"
                Image.fromarray(_to_uint8(image)).save(path)
            else:
                path = folder / f"{label}_{index:05d}.npy"
                np.save(path, image.astype(np.float32))
            counts[split][label] += 1
            files.append({"path": str(path.relative_to(root)), "class": label, "split": split})
    np.savez(root / "kernels.npz", **{str(name): np.asarray(k) for name, k in kernels.items()})
    return {"root": str(root), "shape": list(shape), "classes": [str(c) for c in kernels],
            "counts": counts, "files": files}
