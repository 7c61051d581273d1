r"""AR fits from window sums: any basis's least-squares kernel without the pixels.

For the window sums of an image (:class:`~kernelbank.core.sums.WindowSums`: ``C`` the
t × t cross sums, ``f`` the first sums, ``c`` the centre tap, ``n`` valid pixels) and a
basis written as rows ``w_j`` over the window's taps, the normal equations of
:func:`kernelbank.core.fit.fit` are

    G = W C Wᵀ      h = W C[:, c]      s = C[c, c]

and the fit is the same ridge solve, ``α = (G + λ n I)⁻¹ h``, with the residual MSE
``(s − 2 αᵀh + αᵀ G α) / n`` (:func:`~kernelbank.core.fit.residual_mse`). With sums taken
on the images exactly as ``fit`` models them (z-scored when ``normalize=True``) and at
the basis's own radius, the result is ``fit``'s to rounding.

Valid pixels
------------
Sums of a window of radius ``R`` cover the pixels whose whole ``R``-window fits in the
image. A basis of radius ``r < R`` fitted from them uses those pixels, which are fewer
than its own (margin ``R·δ`` instead of ``r·δ``): the fit is exact for those pixels, and
differs slightly from ``fit`` of that basis on the images. Equality with the pixel path
needs sums at the basis's radius (:meth:`WindowSums.restrict` does not help: it keeps
the valid pixels of the larger window).
"""

from __future__ import annotations

from typing import Iterable

import torch

from .basis import Basis
from .fit import FitResult, residual_mse
from .solve import solve_normal_equations
from .sums import WindowSums

__all__ = ["fit_from_sums", "fit_result_from_sums", "select_sums"]


def _describe(sums: WindowSums) -> str:
    cells = "whole image" if sums.grid is None else f"grid {sums.grid}"
    return f"d{sums.dilation}/r{sums.radius}/scale {sums.scale}/{cells}"


def select_sums(sums: Iterable[WindowSums], dilation: int, *, scale: int = 1,
                grid: int | None = None, needed_by: str = "") -> WindowSums:
    """The one entry of ``sums`` taken at ``dilation``, ``scale`` and ``grid``.

    Parameters
    ----------
    sums : iterable of WindowSums
        Sums of the same images at any mix of dilations, scales and grids.
    dilation, scale : int
    grid : int or None, default=None
        None picks whole-image sums, an int the per-cell sums of that grid.
    needed_by : str, optional
        What needs them, for the error message (e.g. "bank kernel k03_brick_d2").

    Raises
    ------
    ValueError
        When no entry, or more than one (e.g. two radii), matches.
    """
    sums = list(sums)
    for entry in sums:
        if not isinstance(entry, WindowSums):
            raise TypeError(f"sums must hold WindowSums, got {type(entry).__name__}")
    match = [s for s in sums if (s.dilation, s.scale, s.grid) == (dilation, scale, grid)]
    cells = "whole-image" if grid is None else f"grid-{grid}"
    who = f" ({needed_by} needs them)" if needed_by else ""
    if not match:
        have = ", ".join(_describe(s) for s in sums) or "none"
        raise ValueError(f"no {cells} window sums at dilation {dilation}, scale {scale}{who}; "
                         f"the sums given are: {have}. Compute the sums at that dilation.")
    if len(match) > 1:
        raise ValueError(f"{len(match)} {cells} window sums at dilation {dilation}, scale "
                         f"{scale}{who}: {', '.join(_describe(s) for s in match)}; pass one")
    return match[0]


def _checked_basis(sums: WindowSums, basis: Basis) -> tuple[WindowSums, Basis]:
    """The basis at the sums' dilation, and the sums restricted to its radius."""
    if not isinstance(sums, WindowSums):
        raise TypeError(f"sums must be a WindowSums, got {type(sums).__name__}")
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must be a kernelbank.Basis, got {type(basis).__name__}")
    if sums.grid is not None:
        raise ValueError(f"a fit needs whole-image window sums, got per-cell sums "
                         f"({_describe(sums)})")
    if basis.ndim != sums.ndim:
        raise ValueError(f"{basis} is {basis.ndim}-D but the window sums are {sums.ndim}-D")
    if basis.radius > sums.radius:
        raise ValueError(f"{basis} needs taps up to radius {basis.radius}, but the window "
                         f"sums stop at radius {sums.radius}; compute the sums with a "
                         f"radius >= {basis.radius}")
    if sums.radius > basis.radius:       # same valid pixels, fewer taps: cheaper algebra
        sums = sums.restrict(basis.radius)
    return sums, basis.with_dilation(sums.dilation)


def fit_result_from_sums(sums: WindowSums, basis: Basis, ridge: float = 1e-6, *,
                         coef: torch.Tensor | None = None,
                         mse: torch.Tensor | None = None) -> FitResult:
    """The :class:`~kernelbank.core.fit.FitResult` of ``basis`` from window sums.

    Parameters
    ----------
    sums : WindowSums
        Whole-image sums of N images at one dilation (see the module docstring on radii).
    basis : Basis
        Applied at the sums' dilation (its own dilation is replaced, as ``fit`` does
        with ``dilations=``).
    ridge : float, default=1e-6
        Per-pixel ridge of the solve.
    coef : torch.Tensor of shape (N, m), optional
        Coefficients already solved (e.g. read from the fit table); skips the solve.
    mse : torch.Tensor of shape (N,), optional
        Their residual MSE; computed from the sums when not given. Needs ``coef``.

    Returns
    -------
    FitResult
        Leading shape (N,), float64; ``scale_index`` is ``[(sums.scale, sums.dilation)]``.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    sums, basis = _checked_basis(sums, basis)
    gram, rhs, sum_sq, n_pixels = sums.basis_sums(basis)
    n, m = len(sums), basis.n_components
    if coef is None:
        if mse is not None:
            raise ValueError("mse was given without coef: pass both, or neither")
        coef = solve_normal_equations(gram, rhs, n_pixels, ridge)
    else:
        coef = torch.as_tensor(coef).to(gram.device, torch.float64)
        if tuple(coef.shape) != (n, m):
            raise ValueError(f"coef must have shape ({n}, {m}) for {n} images and {basis}, "
                             f"got {tuple(coef.shape)}")
    if mse is None:
        mse = residual_mse(gram, rhs, sum_sq, n_pixels, coef)
    else:
        mse = torch.as_tensor(mse).to(gram.device, torch.float64)
        if tuple(mse.shape) != (n,):
            raise ValueError(f"mse must have shape ({n},), got {tuple(mse.shape)}")
    return FitResult(coef=coef, kernels=basis.to_kernels(coef), mse=mse, gram=gram, rhs=rhs,
                     sum_sq=sum_sq, n_pixels=n_pixels, basis=basis,
                     scale_index=[(sums.scale, sums.dilation)])


def fit_from_sums(sums: WindowSums, basis: Basis, ridge: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """AR coefficients and residual MSE of ``basis`` from window sums, as ``fit`` gives them.

    Parameters
    ----------
    sums : WindowSums
        Whole-image sums at one dilation; the basis is applied at that dilation.
    basis : Basis
    ridge : float, default=1e-6

    Returns
    -------
    coef : torch.Tensor of shape (N, m), float64
    mse : torch.Tensor of shape (N,), float64

    Examples
    --------
    >>> import numpy as np, torch, kernelbank as kb
    >>> from kernelbank.core import normalize_images, window_sums
    >>> images = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 20, 20)))
    >>> basis = kb.Basis.isotropic(radius=2)
    >>> [sums] = window_sums(normalize_images(images), 2, [1])
    >>> coef, mse = kb.fit_from_sums(sums, basis)
    >>> bool(torch.allclose(coef, kb.fit(images, basis).coef, rtol=1e-9, atol=1e-12))
    True
    """
    result = fit_result_from_sums(sums, basis, ridge)
    return result.coef, result.mse
