r"""The one pass: every image's own AR kernel, window sums and residual descriptors.

For images of ``C`` channels (grey is ``C = 1``) and a basis with regressor rows ``Z``
(:mod:`kernelbank.core.basis`), the least-squares AR kernel over the valid pixels (whose
whole dilated window lies inside the image; no padding) is algebra on one matrix,
``A = Σ_p z(p) z(p)ᵀ`` with ``z(p) = Z · taps(p)`` (:mod:`kernelbank.core.solve`; grey:
``α = (G + λ n I)⁻¹ h``), taken by the faster exact engine (:mod:`kernelbank.core.gram`).
No learning rate, no epochs, no random start: the result is the optimum.

:func:`fit` is the one batch driver. Per image and (pyramid scale, dilation) entry, the
window sums (``return_sums``, per cell with ``grid``; :mod:`kernelbank.core.sums`) and
the own kernel's residual descriptors (``descriptors``; :mod:`kernelbank.core.residual`)
are by-products of the same visit of the pixels. :func:`image_statistics` (the fit
stage's table) and :func:`residual_features` are this pass with options set;
:func:`fit_result_from_sums` is its solve on sums already taken.

A robust fit (``robust=True``, one channel only) minimises ``Σ_p |e(p)|``, as the
original Adam loop did, by iteratively reweighted least squares (weights
``1 / max(|e|, ε)``); about ``robust_iterations + 1`` times slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ._strips import residual_sums
from .basis import Basis
from .gram import regressor_grams
from .images import (ImageBatch, accept, check_finite, check_windows_fit, chunks, levels,
                     restore_order, scale_entries)
from .residual import ResidualDescriptors, describe_residuals, residual_descriptor_names
from .solve import residual_covariance, solve_coefficients, solve_normal_equations
from .sums import WindowSums, channel_window_sums

__all__ = ["FitResult", "fit", "image_statistics", "residual_features", "default_descriptors",
           "fit_result_from_sums", "fit_from_sums", "select_sums"]


@dataclass
class FitResult:
    """Result of :func:`fit` (and :func:`image_statistics`): images in input order.

    With one scale the leading shape is ``(N,)``; with several dilations or pyramid
    scales (and always from :func:`image_statistics`) ``(N, S)``, ``S = len(scales) *
    len(dilations)``, scale by scale, dilation by dilation (see :attr:`scale_index`).
    Grey input ``(N, *spatial)`` gives grey results; input with a channel axis gives a
    ``C`` axis (``C = 1`` included), shown as ``[C,]`` below.

    Attributes
    ----------
    coef : torch.Tensor of shape (N, [S,] [C,] m)
        AR coefficients of each output channel; dtype follows the input in :func:`fit`
        (float64 in, float64 out; integer images give float32), float64 otherwise.
    kernels : torch.Tensor of shape (N, [S,] [C, C,] *window)
        The fitted kernels, centre zero (``[c, c']``: weights channel ``c`` puts on ``c'``).
    mse : torch.Tensor of shape (N, [S,] [C])
        Mean squared prediction error over the valid pixels.
    gram : torch.Tensor, float64
        Grey: ``G = Σ R Rᵀ`` (N, [S,] m, m). With channels: ``A = Σ z zᵀ`` (N, [S,] M, M)
        over the basis's regressor rows. Summed, not averaged: sums merge.
    n_pixels : torch.Tensor of shape (N, [S]), int64
    basis : Basis
        The basis at its first dilation.
    scale_index : list of (int, int)
        ``(scale factor, dilation)`` of each entry of the scale axis.
    rhs : torch.Tensor, float64
        Grey: ``h = Σ R x`` (N, [S,] m); with channels ``A[:, τ]`` (N, [S,] M, C).
    sum_sq : torch.Tensor, float64
        Grey: ``Σ x²`` (N, [S]); with channels ``A[τ, τ]`` (N, [S,] C, C).
    covariance : torch.Tensor of shape (N, [S,] C, C) or None
        With channels: the residual covariance ``(1/n) Σ_p e(p) e(p)ᵀ``.
    mae : torch.Tensor of shape (N, [S]) or None
        Mean absolute error; robust fits only.
    sums, cell_sums : list of WindowSums or None
        With ``return_sums`` (``grid``): the whole-image (per-cell) window sums of each
        entry of ``scale_index``, radius of the basis, images as fitted.
    descriptors : torch.Tensor of shape (N, [S,] F) or None
        Residual descriptors of each entry, named by ``descriptor_names``.
    descriptor_names : list of str
    """

    coef: torch.Tensor
    kernels: torch.Tensor
    mse: torch.Tensor
    gram: torch.Tensor
    n_pixels: torch.Tensor
    basis: Basis
    scale_index: list[tuple[int, int]]
    rhs: torch.Tensor | None = None
    sum_sq: torch.Tensor | None = None
    covariance: torch.Tensor | None = None
    mae: torch.Tensor | None = None
    sums: list[WindowSums] | None = None
    cell_sums: list[WindowSums] | None = None
    descriptors: torch.Tensor | None = None
    descriptor_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.coef.shape[0])


def default_descriptors(ndim: int, image_patterns: bool = False) -> ResidualDescriptors:
    """The residual descriptors of the one pass: every default for images; for volumes,
    all but the 2-D sign patterns. ``image_patterns``: also the rotation-invariant sign
    patterns of each image itself (2-D; what ``kernelbank run`` stores)."""
    if ndim != 2:
        return ResidualDescriptors(patterns=())
    return ResidualDescriptors(image_patterns=("ri",) if image_patterns else ())


# ---------------------------------------------------------------------------- one entry
def _entry(gram: torch.Tensor, n_pixels: torch.Tensor, basis: Basis, ridge: float,
           coef: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Coefficients (n, C, m), covariance and MSE of one (scale, dilation) from ``A``."""
    if coef is None:
        coef = solve_coefficients(gram, n_pixels, basis, ridge)
    cov = residual_covariance(gram, n_pixels, basis, coef)
    return {"coef": coef, "covariance": cov, "mse": torch.diagonal(cov, dim1=-2, dim2=-1),
            "gram": gram, "n_pixels": n_pixels}


def _robust(level: torch.Tensor, basis: Basis, entry: dict, ridge: float, iterations: int,
            epsilon: float) -> dict:
    """Iteratively reweighted least squares of one channel from the least-squares start."""
    m, n_pixels, coef = basis.n_components, entry["n_pixels"], entry["coef"][:, 0]
    for _ in range(iterations):
        _, weighted = residual_sums(level[:, 0], basis, coef, eps=epsilon)
        coef = solve_normal_equations(weighted[:, :m, :m], weighted[:, :m, m], n_pixels, ridge)
    abs_sum, _ = residual_sums(level[:, 0], basis, coef)
    out = _entry(entry["gram"], n_pixels, basis, ridge, coef[:, None])
    out["mae"] = (abs_sum / n_pixels.to(torch.float64))[:, None]
    return out


def _shaped(merged: dict[str, torch.Tensor], basis: Basis, grey: bool, dtype) -> dict:
    """Per-key results (…, C, ·) as the caller sees them: grey squeezed, cast to ``dtype``."""
    out = dict(merged)
    gram, m = merged["gram"], basis.n_components
    coef = merged["coef"] if dtype is None else merged["coef"].to(dtype)
    if grey:
        out.update(coef=coef[..., 0, :], gram=gram[..., :m, :m], rhs=gram[..., :m, m],
                   sum_sq=gram[..., m, m], mse=merged["mse"][..., 0], covariance=None)
        out["kernels"] = basis.to_kernels(out["coef"])
        if "mae" in out:
            out["mae"] = out["mae"][..., 0]
    else:
        targets = basis.targets.to(gram.device)
        out.update(coef=coef, rhs=gram[..., :, targets],
                   sum_sq=gram[..., targets[:, None], targets[None, :]])
        if basis.channels == 1:      # one channel's kernel as a 1 × 1 vector kernel
            flat = basis.to_kernels(coef[..., 0, :])
            out["kernels"] = flat.reshape(coef.shape[:-2] + (1, 1) + basis.window_shape)
        else:
            out["kernels"] = basis.to_kernels(coef)
    if dtype is not None:
        out["mse"] = out["mse"].to(dtype)
        if "mae" in out:
            out["mae"] = out["mae"].to(dtype)
    return out


# ---------------------------------------------------------------------------- the driver
def fit(images: ImageBatch, basis: Basis, *, ridge: float = 1e-6, normalize: bool = True,
        dilations: int | Sequence[int] | None = None,
        scales: int | Sequence[int] | None = None, robust: bool = False,
        robust_iterations: int = 5, epsilon: float = 1e-3, return_sums: bool = False,
        grid: int | None = None, descriptors: bool | ResidualDescriptors = False,
        _keep_dtype: bool = False, _scale_axis: bool = False) -> FitResult:
    """Fit the least-squares AR kernel of every image, and what else the pass can give.

    Parameters
    ----------
    images : array or tensor of shape (N, [C,] H, W) or (N, [C,] D, H, W), or a list
        A batch of same-sized images, or a list of images of different sizes (fitted in
        groups of equal size; results keep the list order). Any real dtype; the device
        of a tensor is the device of the computation. ``C = basis.channels``; a grey
        batch (no channel axis) gives grey results.
    basis : Basis
        The kernels to combine; its ``ndim`` decides 2-D or 3-D, its ``channels`` the
        channels of the images.
    ridge : float, default=1e-6
        Per-pixel ridge ``λ`` in ``(G + λ n I)⁻¹ h``; 0 is allowed (singular systems then
        get the minimum-norm solution).
    normalize : bool, default=True
        Z-score each image (each channel) at each pyramid scale before fitting.
    dilations : int or sequence of int, optional
        Tap spacings to fit; default: the basis's own.
    scales : int or sequence of int, optional
        Anti-aliased pyramid factors to fit (1 = original resolution); default 1.
    robust : bool, default=False
        Minimise the L1 error instead (iteratively reweighted least squares); slower.
        One channel only.
    robust_iterations : int, default=5
        Reweighting steps of the robust fit.
    epsilon : float, default=1e-3
        Floor on ``|e|`` in the robust weights ``1 / max(|e|, ε)``.
    return_sums : bool, default=False
        Also return the window sums of every (scale, dilation) in ``FitResult.sums``.
    grid : int, optional
        Also return the window sums per cell of a ``grid``-per-axis partition
        (``FitResult.cell_sums``).
    descriptors : bool or ResidualDescriptors, default=False
        Also describe each own-kernel residual (``True``: :func:`default_descriptors`).

    Returns
    -------
    FitResult
        With a scale axis when ``dilations`` or ``scales`` is a sequence. A ValueError
        naming the image for an empty batch, wrong dimensions or channel count, NaN/inf
        values, or an image smaller than the dilated window at some scale.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(4, 32, 32))
    >>> result = kb.fit(images, kb.Basis.isotropic(radius=2))
    >>> result.coef.shape, result.kernels.shape, result.mse.dtype
    (torch.Size([4, 6]), torch.Size([4, 5, 5]), torch.float64)
    >>> colour = kb.fit(np.random.default_rng(0).normal(size=(2, 3, 24, 24)),
    ...                 kb.Basis.isotropic(radius=1, channels=3))
    >>> colour.coef.shape, colour.kernels.shape, colour.covariance.shape
    (torch.Size([2, 3, 8]), torch.Size([2, 3, 3, 3, 3]), torch.Size([2, 3, 3]))
    """
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must be a kernelbank.Basis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be a positive integer or None, got {grid!r}")
    if robust and basis.channels > 1:
        raise ValueError(f"robust=True is not available for {basis}: the robust (L1) fit "
                         "is one channel only; multi-channel fits are least squares")
    spec = default_descriptors(basis.ndim) if descriptors is True else (descriptors or None)
    if spec is not None:
        spec.check_ndim(basis.ndim)
    entries, multi = scale_entries(dilations, scales, basis.dilation)
    scale_list = list(dict.fromkeys(s for s, _ in entries))
    dilation_list = list(dict.fromkeys(d for _, d in entries))
    front = accept(images, basis.ndim, basis.channels)
    check_windows_fit(front, basis, entries)

    per_key: dict[str, list[torch.Tensor]] = {}
    sums_parts: list[list[WindowSums]] = [[] for _ in entries]
    cell_parts: list[list[WindowSums]] = [[] for _ in entries]
    order: list[int] = []
    for indices, batch in front.groups:
        check_finite(batch, indices)
        for part in chunks(batch):
            rows = []
            for s, level in levels(part, scale_list, normalize):
                grams, sums = regressor_grams(level, basis, dilation_list, with_sums=return_sums)
                cells = channel_window_sums(level, basis.radius, dilation_list, grid) \
                    if grid is not None else None
                for k, d in enumerate(dilation_list):
                    at_d, position = basis.with_dilation(d), len(rows)
                    valid = int(np.prod([v - 2 * at_d.reach for v in level.shape[2:]]))
                    count = torch.full((len(level),), valid, dtype=torch.int64,
                                       device=grams[k].device)
                    entry = _entry(grams[k], count, at_d, ridge)
                    if robust:
                        entry = _robust(level, at_d, entry, ridge, robust_iterations, epsilon)
                    for found, parts in ((sums, sums_parts), (cells, cell_parts)):
                        if found is not None:
                            found[k].scale = s
                            parts[position].append(found[k])
                    if spec is not None:
                        entry["descriptors"] = _describe(level, at_d, entry["coef"], spec)
                    rows.append(entry)
            for key in rows[0]:
                per_key.setdefault(key, []).append(torch.stack([r[key] for r in rows], 1))
        order.extend(indices)

    merged = {k: restore_order(v, order) for k, v in per_key.items()}
    if not (multi or _scale_axis):
        merged = {k: v[:, 0] for k, v in merged.items()}
    out = _shaped(merged, basis, front.grey, None if _keep_dtype else front.dtype)
    return FitResult(
        basis=basis.with_dilation(dilation_list[0]), scale_index=entries,
        sums=[_cat_sums(p, order) for p in sums_parts] if return_sums else None,
        cell_sums=[_cat_sums(p, order) for p in cell_parts] if grid is not None else None,
        descriptor_names=residual_descriptor_names(spec, basis.ndim, basis.channels)
        if spec is not None else [], **out)


def _describe(level: torch.Tensor, basis: Basis, coef: torch.Tensor,
              spec: ResidualDescriptors) -> torch.Tensor:
    """Descriptors of the own kernel's residual; grey images are described as grey."""
    coef, grey = coef.to(level.dtype), basis.channels == 1
    found = describe_residuals(level[:, 0] if grey else level,
                               basis.to_kernels(coef[:, 0] if grey else coef), basis.dilation, spec)
    return found.to(torch.float64)


def _cat_sums(parts: list[WindowSums], order: list[int]) -> WindowSums:
    """Window sums of the chunks and shape groups of one (scale, dilation), input order."""
    first = parts[0]
    return WindowSums(*(restore_order([getattr(p, name) for p in parts], order)
                        for name in ("cross", "first", "n_pixels")),
                      first.radius, first.dilation, first.ndim, first.scale, first.grid,
                      first.channels)


# ---------------------------------------------------------------------------- views of it
def image_statistics(images: ImageBatch, basis: Basis, *,
                     dilations: Sequence[int] | None = None,
                     scales: Sequence[int] | None = None, ridge: float = 1e-6,
                     normalize: bool = True,
                     descriptors: bool | ResidualDescriptors = True,
                     grid: int | None = None) -> FitResult:
    """The fit stage's table: :func:`fit` with ``return_sums=True`` and the descriptors on
    by default, always with a scale axis and float64 coefficients. The Ray fit stage runs
    exactly this on each batch. Parameters are :func:`fit`'s; the window sums cover the
    basis's full window.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(2, 3, 24, 24))
    >>> stats = kb.image_statistics(images, kb.Basis.full(1, channels=3), descriptors=False)
    >>> tuple(stats.coef.shape), tuple(stats.covariance.shape)
    ((2, 1, 3, 26), (2, 1, 3, 3))
    """
    return fit(images, basis, ridge=ridge, normalize=normalize, dilations=dilations,
               scales=scales, return_sums=True, grid=grid,
               descriptors=descriptors if isinstance(descriptors, ResidualDescriptors)
               else bool(descriptors),
               _keep_dtype=True, _scale_axis=True)


def residual_features(images: ImageBatch, basis: Basis, *,
                      dilations: int | Sequence[int] | None = None,
                      scales: int | Sequence[int] | None = None, ridge: float = 1e-6,
                      normalize: bool = True, coefficients: bool = False,
                      descriptors: ResidualDescriptors | None = None
                      ) -> tuple[torch.Tensor, list[str]]:
    """Each image's own AR kernel at every dilation and scale, and its residual descriptors.

    Parameters are :func:`fit`'s, and ``coefficients`` (default False: also return the
    fitted coefficients, ``ar_s<scale>_d<dilation>[_ch<c>]_c<j>``, before the descriptors
    of each entry) and ``descriptors`` (default ``ResidualDescriptors()``).

    Returns
    -------
    features : torch.Tensor of shape (N, F), float64, on the images' device
        Per (scale, dilation), scale-major: [coefficients,] descriptors.
    names : list of str of length F
        ``res_s<scale>_d<dilation>_<descriptor>`` (descriptor names of each channel).

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(3, 32, 32))
    >>> feats, names = kb.residual_features(images, kb.Basis.full(1), dilations=(1, 2))
    >>> feats.shape[1] == len(names), names[0]
    (True, 'res_s1_d1_log_mse')
    """
    spec = descriptors or ResidualDescriptors()
    result = fit(images, basis, ridge=ridge, normalize=normalize, dilations=dilations,
                 scales=scales, descriptors=spec, _scale_axis=True)
    channels = basis.channels
    outputs = [f"_ch{c}" for c in range(channels)] if channels > 1 else [""]
    names, columns = [], []
    for e, (s, d) in enumerate(result.scale_index):
        if coefficients:
            names += [f"ar_s{s}_d{d}{o}_c{j:02d}" for o in outputs
                      for j in range(basis.n_components)]
            columns.append(result.coef[:, e].flatten(1).to(torch.float64))
        names += [f"res_s{s}_d{d}_{name}" for name in result.descriptor_names]
        columns.append(result.descriptors[:, e])
    return torch.cat(columns, 1), names


# ---------------------------------------------------------------------------- from sums
def _describe_sums(sums: WindowSums) -> str:
    cells = "whole image" if sums.grid is None else f"grid {sums.grid}"
    return f"d{sums.dilation}/r{sums.radius}/scale {sums.scale}/{cells}"


def select_sums(sums: Iterable[WindowSums], dilation: int, *, scale: int = 1,
                grid: int | None = None, needed_by: str = "") -> WindowSums:
    """The one entry of ``sums`` (any mix of dilations, scales and grids) taken at
    ``dilation``, ``scale`` and ``grid`` (None: whole-image sums); a ValueError naming
    ``needed_by`` (e.g. "bank kernel k03_brick_d2") when none, or several, match."""
    sums = list(sums)
    for entry in sums:
        if not isinstance(entry, WindowSums):
            raise TypeError(f"sums must hold WindowSums, got {type(entry).__name__}")
    match = [s for s in sums if (s.dilation, s.scale, s.grid) == (dilation, scale, grid)]
    cells = "whole-image" if grid is None else f"grid-{grid}"
    who = f" ({needed_by} needs them)" if needed_by else ""
    if not match:
        have = ", ".join(_describe_sums(s) for s in sums) or "none"
        raise ValueError(f"no {cells} window sums at dilation {dilation}, scale {scale}{who}; "
                         f"the sums given are: {have}. Compute the sums at that dilation.")
    if len(match) > 1:
        raise ValueError(f"{len(match)} {cells} window sums at dilation {dilation}, scale "
                         f"{scale}{who}: {', '.join(_describe_sums(s) for s in match)}; pass one")
    return match[0]


def fit_result_from_sums(sums: WindowSums, basis: Basis, ridge: float = 1e-6, *,
                         coef: torch.Tensor | None = None,
                         mse: torch.Tensor | None = None) -> FitResult:
    """The :class:`FitResult` (leading shape (N,), float64, grey for one channel) of
    ``basis`` at the sums' dilation, from whole-image window sums, without the pixels.

    ``A = Z cross Zᵀ`` replaces the pixels; the solve is :func:`fit`'s, so on sums of the
    images as ``fit`` models them (z-scored when ``normalize=True``) at the basis's own
    radius the result is ``fit``'s to rounding. Sums of a larger radius cover only the
    pixels whose whole larger window fits: exact for those pixels, slightly different
    from ``fit`` of the smaller basis. ``coef (N, [C,] m)``: coefficients already solved
    (e.g. read from the fit table), which skips the solve; ``mse (N,)``, one channel
    only: their residual MSE, else computed from the sums.
    """
    if not isinstance(sums, WindowSums):
        raise TypeError(f"sums must be a WindowSums, got {type(sums).__name__}")
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must be a kernelbank.Basis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if sums.grid is not None:
        raise ValueError(f"a fit needs whole-image window sums, got per-cell sums "
                         f"({_describe_sums(sums)})")
    sums = sums.cut_for(str(basis), basis.radius, basis.ndim, basis.channels)
    basis = basis.with_dilation(sums.dilation)
    grey = basis.channels == 1
    gram = sums.gram(basis)
    if coef is not None:
        coef = torch.as_tensor(coef).to(gram.device, torch.float64)
        expected = (len(sums),) + (() if grey else (basis.channels,)) + (basis.n_components,)
        if tuple(coef.shape) != expected:
            raise ValueError(f"coef must have shape {expected} for {len(sums)} images and "
                             f"{basis}, got {tuple(coef.shape)}")
        coef = coef[:, None] if grey else coef
    elif mse is not None:
        raise ValueError("mse was given without coef: pass both, or neither")
    out = _shaped(_entry(gram, sums.n_pixels, basis, ridge, coef), basis, grey, None)
    if mse is not None:
        mse = torch.as_tensor(mse).to(gram.device, torch.float64)
        if tuple(mse.shape) != (len(sums),):
            raise ValueError(f"mse must have shape ({len(sums)},), got {tuple(mse.shape)}")
        out["mse"] = mse
    return FitResult(basis=basis, scale_index=[(sums.scale, sums.dilation)], **out)


def fit_from_sums(sums: WindowSums, basis: Basis, ridge: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``coef (N, [C,] m)`` and ``mse (N, [C])`` (float64) of :func:`fit_result_from_sums`."""
    result = fit_result_from_sums(sums, basis, ridge)
    return result.coef, result.mse
