r"""Exact least-squares fits of vector (multi-channel) AR kernels.

For an image of ``C`` channels and a :class:`~kernelbank.core.channel_basis.ChannelBasis`
with regressor rows ``Z`` (M rows over the channel-major window taps, every channel's
centre among them), the one matrix

    A = Σ_p z(p) z(p)ᵀ,      z(p) = Z · taps(p)        (M × M, over the valid pixels)

holds everything: output channel ``c`` combines the rows ``S_c`` and predicts the row
``τ_c`` (its centre), so its normal equations are sub-blocks of ``A``,

    G_c = A[S_c, S_c]      h_c = A[S_c, τ_c]      α_c = (G_c + λ n I)⁻¹ h_c

and with ``u_c`` the residual ``e_c = x_c − α_cᵀ z_{S_c}`` written over the rows
(``u_c[τ_c] = 1``, ``u_c[S_c] = −α_c``), the ``C × C`` residual covariance is

    Σ = U A Uᵀ / n,        Σ_{cc'} = (1/n) Σ_p e_c(p) e_{c'}(p),

whose diagonal is each channel's residual MSE. One channel is the case ``C = 1``, with
``A`` the augmented Gram ``[[G, h], [hᵀ, Σx²]]`` of :func:`kernelbank.core.fit.fit`.

One factorisation for every channel: when each output channel uses every row but its
own target (the full and isotropic bases with the own centre masked), the regression of
row ``τ_c`` on all the others is read off ``P = (A + λ n I)⁻¹`` as
``α_c = −P[S_c, τ_c] / P[τ_c, τ_c]`` (the partitioned inverse; the ridge on ``τ_c``'s own
diagonal cancels in the ratio), so one Cholesky factorisation of ``A`` replaces ``C`` of
the ``G_c`` (a third of the work for three channels). Problems whose factorisation
fails take the per-channel solves with their pseudo-inverse fallback.

``A`` comes from the pixels (:func:`regressor_gram`: each channel's ring or tap planes by
the strip engine, multiplied together) or from window sums with channels
(:func:`channel_fit_from_sums`: ``A = Z cross Zᵀ``; picked, not multiplied, for the full
basis, whose regressors are the taps themselves). ``fit`` takes the window sums for a
full basis and whenever they are returned (``return_sums``), the strips otherwise.

Normalisation: with ``normalize=True`` each channel is z-scored on its own, as one
channel is by :func:`kernelbank.core.fit.fit`; coefficients are then free of each
channel's gain, and a grey image replicated into three channels stays three equal
channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .basis import Basis
from .channel_basis import ChannelBasis
from .channel_responses import channel_gram
from .fit import (ImageBatch, _as_tuple, _merge_sums, check_finite, check_windows_fit,
                  group_by_shape, normalize_images, pyramid_level)
from .solve import solve_normal_equations
from .sums import WindowSums, _selected_taps, window_sums

__all__ = ["ChannelFitResult", "fit_channels", "channel_fit_from_sums", "regressor_gram",
           "channel_normal_equations", "residual_covariance"]

# Pixels (all channels) normalised at a time per chunk of images, as in fit.
_CHUNK_ELEMENTS = 4 << 20


@dataclass
class ChannelFitResult:
    """Result of :func:`fit_channels` (``kb.fit`` with a :class:`ChannelBasis`).

    With one scale the leading shape is ``(N,)``; with several dilations or pyramid
    scales ``(N, S)``, ordered as in :class:`~kernelbank.core.fit.FitResult`.

    Attributes
    ----------
    coef : torch.Tensor of shape (N, [S,] C, m)
        Coefficients of each output channel; dtype follows the input as in ``fit``.
    kernels : torch.Tensor of shape (N, [S,] C, C, *window)
        ``kernels[..., c, c']``: weights output channel ``c`` puts on channel ``c'``.
    mse : torch.Tensor of shape (N, [S,] C)
        Residual mean square of each output channel (the diagonal of ``covariance``).
    covariance : torch.Tensor of shape (N, [S,] C, C), float64
        Residual covariance ``(1/n) Σ_p e(p) e(p)ᵀ`` of the channels.
    gram : torch.Tensor of shape (N, [S,] M, M), float64
        ``A = Σ z zᵀ`` over the basis's regressor rows (summed, not averaged: sums merge).
    n_pixels : torch.Tensor of shape (N, [S]), int64
    basis : ChannelBasis
        The basis at its first dilation.
    scale_index : list of (int, int)
        ``(scale factor, dilation)`` of each entry of the scale axis.
    sums : list of WindowSums or None
        With ``return_sums=True``: the window sums with channels (radius of the basis,
        channels as fitted) of each entry of ``scale_index``, images in input order.
    """

    coef: torch.Tensor
    kernels: torch.Tensor
    mse: torch.Tensor
    covariance: torch.Tensor
    gram: torch.Tensor
    n_pixels: torch.Tensor
    basis: ChannelBasis
    scale_index: list[tuple[int, int]]
    sums: list[WindowSums] | None = None

    def __len__(self) -> int:
        return int(self.coef.shape[0])

    def normal_equations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each output channel's ``G (…, C, m, m)``, ``h (…, C, m)`` and the targets'
        products ``Σ x_c x_c' (…, C, C)``, float64."""
        return channel_normal_equations(self.gram, self.basis)


# ---------------------------------------------------------------------------- algebra
def channel_normal_equations(gram: torch.Tensor, basis: ChannelBasis
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``G_c = A[S_c, S_c]``, ``h_c = A[S_c, τ_c]`` and ``A[τ, τ]`` from ``A (…, M, M)``."""
    sel = basis.selection.to(gram.device)
    targets = basis.targets.to(gram.device)
    g = gram[..., sel[:, :, None], sel[:, None, :]]                        # (…, C, m, m)
    h = gram[..., sel, targets[:, None]]                                   # (…, C, m)
    s = gram[..., targets[:, None], targets[None, :]]                      # (…, C, C)
    return g, h, s


def residual_covariance(gram: torch.Tensor, n_pixels: torch.Tensor, basis: ChannelBasis,
                        coef: torch.Tensor) -> torch.Tensor:
    """``U A Uᵀ / n`` for coefficients ``coef (…, C, m)``: residual covariance (…, C, C).

    Float64, symmetric, with a diagonal clamped at 0 (rounding can make it negative).
    """
    coef = coef.to(gram.device, torch.float64)
    channels = basis.channels
    rows = torch.zeros(coef.shape[:-1] + (gram.shape[-1],), dtype=torch.float64,
                       device=gram.device)                                  # (…, C, M)
    sel = basis.selection.to(gram.device).expand(coef.shape)
    rows.scatter_(-1, sel, -coef)
    rows[..., torch.arange(channels, device=gram.device), basis.targets.to(gram.device)] += 1
    cov = rows @ gram @ rows.transpose(-1, -2) / n_pixels.to(torch.float64)[..., None, None]
    cov = (cov + cov.transpose(-1, -2)) / 2
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    diag.clamp_(min=0)
    return cov


def _solve(gram: torch.Tensor, n_pixels: torch.Tensor, basis: ChannelBasis,
           ridge: float) -> torch.Tensor:
    """Coefficients (…, C, m): from one factorisation of ``A`` when the basis allows."""
    # one channel: its own solve, exactly the one-channel fit's
    if basis.channels > 1 and ridge > 0 and _leaves_one_out(basis):
        coef, failed = _solve_from_precision(gram, n_pixels, basis, ridge)
        if not failed.any():
            return coef
        coef[failed] = _solve_each(gram[failed], n_pixels[failed], basis, ridge)
        return coef
    return _solve_each(gram, n_pixels, basis, ridge)


def _solve_each(gram: torch.Tensor, n_pixels: torch.Tensor, basis: ChannelBasis,
                ridge: float) -> torch.Tensor:
    """Each output channel's ridge solve on its own ``G_c``, ``h_c``."""
    g, h, _ = channel_normal_equations(gram, basis)
    count = n_pixels[..., None].expand(h.shape[:-1])
    return solve_normal_equations(g, h, count, ridge)


def _leaves_one_out(basis: ChannelBasis) -> bool:
    """Whether output channel ``c`` combines every regressor row but its target ``τ_c``."""
    rows = len(basis.regressors)
    if basis.n_components != rows - 1:
        return False
    every = torch.arange(rows)
    return all(torch.equal(torch.sort(torch.cat([basis.selection[c], basis.targets[c:c + 1]]))
                           .values, every) for c in range(basis.channels))


def _solve_from_precision(gram: torch.Tensor, n_pixels: torch.Tensor, basis: ChannelBasis,
                          ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``α_c = −P[S_c, τ_c] / P[τ_c, τ_c]`` with ``P = (A + λ n I)⁻¹`` (Jacobi-scaled
    Cholesky), and which problems failed to factorise."""
    rows = gram.shape[-1]
    diag = torch.diagonal(gram, dim1=-2, dim2=-1) + \
        (ridge * n_pixels.to(gram.dtype))[..., None]
    scale = torch.where(diag > 0, diag.clamp_min(torch.finfo(gram.dtype).tiny).rsqrt(),
                        torch.ones_like(diag))
    # D (A + λnI) D, with unit diagonal, in one new matrix
    a = gram * scale[..., :, None] * scale[..., None, :]
    torch.diagonal(a, dim1=-2, dim2=-1).copy_(torch.where(diag > 0, 1.0, diag))
    factor, info = torch.linalg.cholesky_ex(a)
    targets = basis.targets.to(gram.device)
    units = torch.zeros(a.shape[:-2] + (rows, len(targets)), dtype=a.dtype, device=a.device)
    units[..., targets, torch.arange(len(targets), device=a.device)] = \
        scale[..., targets]                                                  # D e_τ
    # P e_τ = D (D A D)⁻¹ D e_τ
    columns = torch.cholesky_solve(units, factor) * scale[..., :, None]
    columns = columns.transpose(-1, -2)                                     # (…, C, M)
    own = columns.gather(-1, targets[:, None].expand(columns.shape[:-1] + (1,)))
    sel = basis.selection.to(gram.device).expand(columns.shape[:-1] + (basis.n_components,))
    coef = -columns.gather(-1, sel) / own
    failed = (info != 0) | ~torch.isfinite(coef).flatten(-2).all(-1) | \
        (own <= 0).flatten(-2).any(-1)
    return coef, failed


# ---------------------------------------------------------------------------- A from pixels
def _spatial_planes(basis: ChannelBasis) -> tuple[Basis, torch.Tensor] | None:
    """The one-channel basis whose planes on every channel hold every regressor row.

    Returns the basis and, for each regressor row, the index of its plane in
    :func:`~kernelbank.core.channel_responses.channel_gram`; None when some row is not
    such a plane (a custom basis mixing channels).
    """
    if basis.kind not in ("full", "isotropic"):
        return None
    spatial = getattr(Basis, basis.kind)(basis.radius, basis.dilation, basis.ndim)
    t, m = basis.n_taps, spatial.n_components
    weights = torch.zeros((m + 1, t), dtype=torch.float64)
    side = 2 * basis.radius + 1
    index = np.ravel_multi_index(tuple((spatial.offsets.numpy() + basis.radius).T),
                                 (side,) * basis.ndim)
    weights[:m, torch.from_numpy(index)] = spatial.weights
    weights[m, t // 2] = 1
    planes = torch.block_diag(*([weights] * basis.channels))               # (C(m+1), C t)
    match = (basis.regressors[:, None, :] == planes[None, :, :]).all(-1)   # (M, planes)
    if not bool(match.any(1).all()):
        return None
    return spatial, match.to(torch.int64).argmax(1)


def regressor_gram(images: torch.Tensor, basis: ChannelBasis) -> torch.Tensor:
    """``A = Σ z zᵀ`` of same-sized multi-channel images, from the pixels.

    Parameters
    ----------
    images : torch.Tensor of shape (n, C, *spatial), floating
        Already normalised if wanted.
    basis : ChannelBasis

    Returns
    -------
    torch.Tensor of shape (n, M, M), float64

    Notes
    -----
    Full and isotropic bases take the Gram of each channel's tap or ring planes
    (:func:`~kernelbank.core.channel_responses.channel_gram`): ``C²`` times the work of
    one channel's Gram. A custom basis takes the window sums of the channels and
    ``Z cross Zᵀ``.
    """
    found = _spatial_planes(basis)
    if found is not None:
        spatial, index = found
        gram = channel_gram(images, spatial)
        index = index.to(gram.device)
        return gram.index_select(1, index).index_select(2, index)
    [sums] = _window_sums(images, basis.radius, [basis.dilation])
    return _gram_from_sums(sums, basis)


def _window_sums(images: torch.Tensor, radius: int, dilations: Sequence[int]
                 ) -> list[WindowSums]:
    """Window sums of (n, C, *spatial) images (one channel: the one-channel sums)."""
    channels = images.shape[1]
    return window_sums(images[:, 0] if channels == 1 else images, radius, dilations,
                       channels=channels)


def _gram_from_sums(sums: WindowSums, basis: ChannelBasis) -> torch.Tensor:
    """``A = Z cross Zᵀ`` (sums at the basis's radius and dilation): taps picked when every
    regressor is one tap."""
    z = sums.tap_weights(basis)
    taps = _selected_taps(z)
    if taps is None:
        return z @ sums.cross @ z.T
    if torch.equal(taps, torch.arange(sums.n_taps, device=taps.device)):
        return sums.cross              # the full basis's regressors are the taps in order
    return sums.cross.index_select(-1, taps).index_select(-2, taps)


# ---------------------------------------------------------------------------- fits
def _result(gram: torch.Tensor, n_pixels: torch.Tensor, basis: ChannelBasis, ridge: float,
            coef: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    if coef is None:
        coef = _solve(gram, n_pixels, basis, ridge)
    cov = residual_covariance(gram, n_pixels, basis, coef)
    return {"coef": coef, "covariance": cov, "mse": torch.diagonal(cov, dim1=-2, dim2=-1),
            "gram": gram, "n_pixels": n_pixels}


def channel_fit_from_sums(sums: WindowSums, basis: ChannelBasis, ridge: float = 1e-6, *,
                          coef: torch.Tensor | None = None) -> ChannelFitResult:
    """The vector AR fit of ``basis`` from window sums with channels, without pixels.

    Parameters
    ----------
    sums : WindowSums
        Whole-image sums of N images with ``basis.channels`` channels at one dilation,
        radius >= the basis's (equal to reproduce :func:`fit_channels`: see
        :mod:`kernelbank.core.sums_fit` on valid pixels).
    basis : ChannelBasis
        Applied at the sums' dilation.
    ridge : float, default=1e-6
    coef : torch.Tensor of shape (N, C, m), optional
        Coefficients already solved; skips the solve.

    Returns
    -------
    ChannelFitResult
        Leading shape (N,), float64.
    """
    if not isinstance(sums, WindowSums):
        raise TypeError(f"sums must be a WindowSums, got {type(sums).__name__}")
    if not isinstance(basis, ChannelBasis):
        raise TypeError(f"basis must be a ChannelBasis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if sums.grid is not None:
        raise ValueError(f"a fit needs whole-image window sums, got per-cell sums (grid "
                         f"{sums.grid})")
    if sums.channels != basis.channels:
        raise ValueError(f"{basis} models {basis.channels} channels but the window sums have "
                         f"{sums.channels}")
    if basis.radius > sums.radius:
        raise ValueError(f"{basis} needs taps up to radius {basis.radius}, but the window "
                         f"sums stop at radius {sums.radius}; compute the sums with a "
                         f"radius >= {basis.radius}")
    if sums.radius > basis.radius:
        sums = sums.restrict(basis.radius)
    basis = basis.with_dilation(sums.dilation)
    gram = _gram_from_sums(sums, basis)
    if coef is not None:
        coef = torch.as_tensor(coef).to(gram.device, torch.float64)
        expected = (len(sums), basis.channels, basis.n_components)
        if tuple(coef.shape) != expected:
            raise ValueError(f"coef must have shape {expected}, got {tuple(coef.shape)}")
    out = _result(gram, sums.n_pixels, basis, ridge, coef)
    return ChannelFitResult(kernels=basis.to_kernels(out["coef"]), basis=basis,
                            scale_index=[(sums.scale, sums.dilation)], **out)


def _check_images(images: ImageBatch, basis: ChannelBasis) -> None:
    channels, ndim = basis.channels, basis.ndim
    spatial = "D, H, W" if ndim == 3 else "H, W"
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != ndim + 2 or images.shape[1] != channels:
            raise ValueError(f"images must have shape (N, {channels}, {spatial}) for {basis}, "
                             f"got shape {tuple(images.shape)}")
        return
    for index, item in enumerate(images):
        shape = tuple(np.shape(item))
        if len(shape) != ndim + 1 or shape[0] != channels:
            raise ValueError(f"image {index} has shape {shape}; {basis} needs images of "
                             f"shape ({channels}, {spatial})")


def fit_channels(images: ImageBatch, basis: ChannelBasis, *, ridge: float = 1e-6,
                 normalize: bool = True, dilations: int | Sequence[int] | None = None,
                 scales: int | Sequence[int] | None = None,
                 return_sums: bool = False) -> ChannelFitResult:
    """Fit the least-squares vector AR kernel of every multi-channel image.

    ``kb.fit(images, basis)`` with a :class:`ChannelBasis` calls this.

    Parameters
    ----------
    images : array or tensor of shape (N, C, H, W) or (N, C, D, H, W), or a list of them
        Same-sized images, or a list of ``(C, *spatial)`` images of different sizes
        (fitted in groups of equal size, results in list order). ``C = basis.channels``.
    basis : ChannelBasis
    ridge, normalize, dilations, scales, return_sums
        As in :func:`kernelbank.core.fit.fit`; ``normalize`` z-scores each channel, and
        the returned sums are window sums with channels.

    Returns
    -------
    ChannelFitResult

    Raises
    ------
    ValueError
        For a wrong shape or channel count, NaN/inf values, or an image smaller than the
        dilated window at some scale.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(2, 3, 24, 24))
    >>> result = kb.fit(images, kb.Basis.isotropic(radius=1, channels=3))
    >>> result.coef.shape, result.kernels.shape, result.covariance.shape
    (torch.Size([2, 3, 8]), torch.Size([2, 3, 3, 3, 3]), torch.Size([2, 3, 3]))
    """
    if not isinstance(basis, ChannelBasis):
        raise TypeError(f"basis must be a ChannelBasis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    _check_images(images, basis)
    multi = not (dilations is None or isinstance(dilations, (int, np.integer))) or \
        not (scales is None or isinstance(scales, (int, np.integer)))
    dilation_list = _as_tuple(dilations, basis.dilation, "dilations")
    scale_list = _as_tuple(scales, 1, "scales")
    scale_index = [(s, d) for s in scale_list for d in dilation_list]
    groups, dtype, _ = group_by_shape(images, basis.ndim + 1)
    check_windows_fit(groups, basis, scale_index, spatial_from=2)

    per_key: dict[str, list[torch.Tensor]] = {}
    sums_parts: list[list[WindowSums]] = [[] for _ in scale_index]
    order: list[int] = []
    channels = basis.channels
    by_sums = return_sums or basis.kind == "full"
    for indices, batch in groups:
        check_finite(batch, indices)
        budget = _CHUNK_ELEMENTS if batch.device.type == "cpu" else 16 * _CHUNK_ELEMENTS
        chunk = max(1, budget // max(1, batch[0].numel()))
        for start in range(0, len(batch), chunk):
            part = batch[start:start + chunk]
            n = len(part)
            entries = []
            for position, s in enumerate(scale_list):
                # channels as images: the pyramid and the z-score act on each channel
                level = pyramid_level(part.reshape((n * channels,) + part.shape[2:]), s)
                if normalize:
                    level = normalize_images(level)
                level = level.reshape((n, channels) + level.shape[1:])
                sums = _window_sums(level, basis.radius, dilation_list) if by_sums else None
                for k, d in enumerate(dilation_list):
                    dilated = basis.with_dilation(d)
                    if sums is None:
                        gram = regressor_gram(level, dilated)
                    else:
                        gram = _gram_from_sums(sums[k], dilated)
                        sums[k].scale = s
                        sums_parts[position * len(dilation_list) + k].append(sums[k])
                    valid = int(np.prod([v - 2 * dilated.reach for v in level.shape[2:]]))
                    count = torch.full((n,), valid, dtype=torch.int64, device=gram.device)
                    entries.append(_result(gram, count, dilated, ridge))
            for key in entries[0]:
                per_key.setdefault(key, []).append(torch.stack([e[key] for e in entries], 1))
        order.extend(indices)

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    merged = {k: torch.cat(v)[inverse.to(v[0].device)] for k, v in per_key.items()}
    if not multi:
        merged = {k: v[:, 0] for k, v in merged.items()}
    coef = merged["coef"].to(dtype)
    return ChannelFitResult(
        coef=coef, kernels=basis.to_kernels(coef), mse=merged["mse"].to(dtype),
        covariance=merged["covariance"], gram=merged["gram"], n_pixels=merged["n_pixels"],
        basis=basis.with_dilation(dilation_list[0]), scale_index=scale_index,
        sums=[_merge_sums(parts, inverse) for parts in sums_parts] if return_sums else None)
