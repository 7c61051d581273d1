r"""Exact, batched least-squares fitting of convolutional AR kernels.

For an image ``x`` and a basis ``b_1 … b_m`` with responses ``R_j = b_j * x``, the AR
coefficients minimise ``Σ_p (x(p) - Σ_j α_j R_j(p))²`` over the valid pixels ``p``
(those whose whole dilated window lies inside the image; no padding). With

    G = Σ_p R Rᵀ      h = Σ_p R x      s = Σ_p x²      n = #valid pixels

the solution is ``α = (G + λ n I)⁻¹ h`` and the mean squared prediction error is
``(s - 2 αᵀh + αᵀ G α) / n``. No learning rate, no epochs, no random start: the
result is the optimum.

The sums come from whichever of two exact engines is faster for the basis and image
size (:mod:`kernelbank.core.equations`): full bases take them from the window sums of
:mod:`kernelbank.core.sums` (lag products; one pass serves every dilation), isotropic
and custom bases from their responses, strip by strip. ``return_sums=True`` also hands
back the window sums, the statistics every later stage is algebra on.

Multi-scale fits run the same operation on

* several dilations of the basis (taps spaced 1, 2, 3 … pixels apart), and
* several levels of an anti-aliased pyramid: scale factor ``s`` blurs the image with
  a Gaussian of ``σ = (s - 1) / 2`` pixels (the anti-aliasing rule of
  ``skimage.transform.rescale``) and keeps every ``s``-th pixel. The original research
  code subsampled with ``x[::s, ::s]`` and no blur, which aliases fine texture into
  false low-frequency structure.

A robust fit (``robust=True``) minimises the L1 error ``Σ_p |e(p)|``, as the original
Adam loop did, by iteratively reweighted least squares (a few solves with weights
``1 / max(|e|, ε)``). It is about ``robust_iterations + 1`` times slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .basis import Basis
from .channel_basis import ChannelBasis
from .equations import level_equations, normal_equations
from .responses import residual_sums
from .solve import solve_normal_equations
from .sums import WindowSums

__all__ = ["FitResult", "check_finite", "fit", "group_by_shape", "normal_equations",
           "normalize_images", "pyramid_level", "residual_mse"]

# Pixels normalised at a time by fit (per chunk of images); 16 MiB of float32 on a CPU.
_CHUNK_ELEMENTS = 4 << 20

ImageBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


@dataclass
class FitResult:
    """Result of :func:`fit`.

    With one scale the leading shape is ``(N,)``; with several dilations or pyramid
    scales it is ``(N, S)`` where ``S = len(scales) * len(dilations)``, ordered scale
    by scale, dilation by dilation (see :attr:`scale_index`).

    Attributes
    ----------
    coef : torch.Tensor of shape (N, [S,] m)
        AR coefficients, one row per image; dtype follows the input (float64 in,
        float64 out; integer images give float32).
    kernels : torch.Tensor of shape (N, [S,] *window)
        The fitted kernels ``Σ_j coef_j b_j``, centre zero.
    mse : torch.Tensor of shape (N, [S])
        Mean squared prediction error over the valid pixels.
    mae : torch.Tensor of shape (N, [S]) or None
        Mean absolute error; computed only for robust fits.
    gram : torch.Tensor of shape (N, [S,] m, m), float64
        ``G = Σ R Rᵀ`` over valid pixels (summed, not averaged: sums merge).
    rhs : torch.Tensor of shape (N, [S,] m), float64
        ``h = Σ R x``.
    sum_sq : torch.Tensor of shape (N, [S]), float64
        ``Σ x²``.
    n_pixels : torch.Tensor of shape (N, [S]), int64
        Number of valid pixels.
    basis : Basis
        The basis at its first dilation.
    scale_index : list of (int, int)
        ``(scale factor, dilation)`` of each entry of the scale axis.
    sums : list of WindowSums or None
        With ``return_sums=True``: the window sums (radius of the basis, images as
        fitted, i.e. normalised when ``normalize``) of each entry of ``scale_index``,
        images in input order; None otherwise.
    """

    coef: torch.Tensor
    kernels: torch.Tensor
    mse: torch.Tensor
    gram: torch.Tensor
    rhs: torch.Tensor
    sum_sq: torch.Tensor
    n_pixels: torch.Tensor
    basis: Basis
    scale_index: list[tuple[int, int]]
    mae: torch.Tensor | None = None
    sums: list[WindowSums] | None = None

    def __len__(self) -> int:
        return int(self.coef.shape[0])


# ---------------------------------------------------------------------------- checks
def group_by_shape(images: ImageBatch, ndim: int
                    ) -> tuple[list[tuple[list[int], torch.Tensor]], torch.dtype, torch.device]:
    """Split the accepted containers into batches of equal shape, checking each image.

    Returns ``[(indices, batch)]`` with floating batches, the compute dtype and device.
    A single array or tensor is one batch and is not copied unless its dtype changes.
    """
    spatial = f"(N, {'D, ' if ndim == 3 else ''}H, W)"
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == ndim:
            raise ValueError(f"expected a batch of shape {spatial}, got a single image of "
                             f"shape {tuple(images.shape)}; pass images[None] to fit one image")
        if images.ndim != ndim + 1:
            raise ValueError(f"images must have {ndim + 1} dimensions {spatial} for a "
                             f"{ndim}-D basis, got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("images is empty: fit needs at least one image")
        batch = torch.as_tensor(images)
        dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
        return [(list(range(len(batch))), batch.to(dtype))], dtype, batch.device
    items = [i if isinstance(i, torch.Tensor) else torch.as_tensor(np.asarray(i)) for i in images]
    if not items:
        raise ValueError("images is empty: fit needs at least one image")
    for index, item in enumerate(items):
        if item.ndim != ndim:
            raise ValueError(f"image {index} has {item.ndim} dimensions (shape "
                             f"{tuple(item.shape)}); a {ndim}-D basis needs {ndim}-D images")
    dtype = torch.float64 if any(i.dtype == torch.float64 for i in items) else torch.float32
    device = items[0].device
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    return ([(indices, torch.stack([items[i] for i in indices]).to(device, dtype))
             for indices in groups.values()], dtype, device)


def check_finite(batch: torch.Tensor, indices: Sequence[int]) -> None:
    # One cheap pass: a sum is finite unless some value is NaN/inf (or it overflows, in
    # which case the exact check below clears the image).
    suspect = ~torch.isfinite(batch.reshape(batch.shape[0], -1).sum(1))
    for position in torch.nonzero(suspect).flatten().tolist():
        count = int((~torch.isfinite(batch[position])).sum())
        if count:
            raise ValueError(f"image {indices[position]} contains {count} NaN or inf values")


def _check_size(shape: tuple[int, ...], index: int, basis: Basis, scale: int) -> None:
    need = basis.min_image_size
    if min(shape) < need:
        where = f" at pyramid scale {scale} (size {shape})" if scale > 1 else ""
        raise ValueError(
            f"image {index} has shape {shape}{where}, smaller than the {need}-pixel window "
            f"of radius {basis.radius} with dilation {basis.dilation}; use a smaller radius "
            "or dilation, or drop this image")


def check_windows_fit(groups, basis, scale_index, spatial_from: int = 1) -> None:
    """Raise for the first image smaller than the window at any (scale, dilation) entry.

    ``groups`` are :func:`group_by_shape`'s; spatial axes start at ``spatial_from``
    (1 for ``(N, *spatial)``, 2 for ``(N, C, *spatial)``)."""
    for indices, batch in groups:
        for s, d in scale_index:
            scaled = tuple(-(-v // s) for v in batch.shape[spatial_from:])
            _check_size(scaled, indices[0], basis.with_dilation(d), s)


# ---------------------------------------------------------------------------- preprocessing
def normalize_images(batch: torch.Tensor) -> torch.Tensor:
    """Z-score each image: subtract its mean, divide by its standard deviation.

    Constant images become all zeros (not NaN). The variance is taken of the centred
    values, so a large offset (uint8 images around 128, say) cancels no digits; the
    sums are PyTorch's cascaded reductions, accurate to a few float32 ulps.
    """
    n = batch.shape[0]
    shape = (n,) + (1,) * (batch.ndim - 1)
    centred = batch - batch.reshape(n, -1).mean(1).reshape(shape)
    flat = centred.reshape(n, 1, -1)
    var = torch.bmm(flat, flat.transpose(1, 2)).reshape(n) / flat.shape[-1]
    std = var.to(torch.float64).sqrt()
    inverse = torch.where(std > 0, 1 / std, torch.zeros_like(std)).to(batch.dtype)
    return centred.mul_(inverse.reshape(shape))


def pyramid_level(batch: torch.Tensor, factor: int) -> torch.Tensor:
    """Anti-aliased downsampling by an integer factor.

    Blurs each image with a separable Gaussian of ``σ = (factor - 1) / 2`` (reflect
    padding, truncated at 4σ) and keeps every ``factor``-th pixel along each axis.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, *spatial)
    factor : int >= 1

    Returns
    -------
    torch.Tensor of shape (n, *ceil(spatial / factor))
    """
    if factor == 1:
        return batch
    sigma = (factor - 1) / 2
    half = max(1, int(np.ceil(4 * sigma)))
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(batch.device, batch.dtype)
    spatial = batch.ndim - 1
    out = batch[:, None]
    for axis in range(spatial):
        shape = [1, 1] + [1] * spatial
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = half
        size = out.shape[2 + axis]
        mode = "reflect" if size > half else "replicate"
        conv = torch.nn.functional.conv2d if spatial == 2 else torch.nn.functional.conv3d
        out = conv(torch.nn.functional.pad(out, pad, mode=mode), kernel.reshape(shape))
    out = out[:, 0]
    return out[(slice(None),) + (slice(None, None, factor),) * spatial].contiguous()


# ---------------------------------------------------------------------------- the operation
def residual_mse(gram: torch.Tensor, rhs: torch.Tensor, sum_sq: torch.Tensor,
                 n_pixels: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Mean squared residual of ``coef`` from the sums alone: ``(Σx² − 2αᵀh + αᵀGα) / n``.

    Parameters
    ----------
    gram : (..., m, m), rhs : (..., m), sum_sq : (...), n_pixels : (...), coef : (..., m)

    Returns
    -------
    torch.Tensor of shape (...), float64, clamped at 0 (rounding can make it negative)
    """
    coef = coef.to(torch.float64)
    explained = 2 * (coef * rhs).sum(-1) - (coef[..., None, :] @ gram @ coef[..., None]
                                            ).squeeze(-1).squeeze(-1)
    return ((sum_sq - explained) / n_pixels.to(torch.float64)).clamp_min(0)


def _solve(batch: torch.Tensor, basis: Basis, equations, ridge: float, robust: bool,
           robust_iterations: int, epsilon: float) -> dict[str, torch.Tensor]:
    gram, rhs, sum_sq, n_pixels = equations
    coef = solve_normal_equations(gram, rhs, n_pixels, ridge)
    out = {"gram": gram, "rhs": rhs, "sum_sq": sum_sq, "n_pixels": n_pixels}
    if robust:
        m = basis.n_components
        for _ in range(robust_iterations):
            _, weighted = residual_sums(batch, basis, coef, eps=epsilon)
            coef = solve_normal_equations(weighted[:, :m, :m], weighted[:, :m, m],
                                          n_pixels, ridge)
        abs_sum, _ = residual_sums(batch, basis, coef)
        out["mae"] = abs_sum / n_pixels.to(torch.float64)
    out["coef"] = coef
    out["mse"] = residual_mse(gram, rhs, sum_sq, n_pixels, coef)
    return out


def _as_tuple(value: int | Sequence[int] | None, default: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (default,)
    values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not values or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {value!r}")
    return tuple(int(v) for v in values)


def fit(images: ImageBatch, basis: Basis | ChannelBasis, *, ridge: float = 1e-6,
        normalize: bool = True, dilations: int | Sequence[int] | None = None,
        scales: int | Sequence[int] | None = None, robust: bool = False,
        robust_iterations: int = 5, epsilon: float = 1e-3, return_sums: bool = False):
    """Fit the least-squares AR kernel of every image.

    Parameters
    ----------
    images : array or tensor of shape (N, H, W) or (N, D, H, W), or a list of them
        A batch of same-sized images, or a list of images of different sizes (fitted in
        groups of equal size; results keep the list order). Any real dtype; the device
        of a tensor is the device of the computation. With a :class:`ChannelBasis`,
        ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (or a list of ``(C, *spatial)`` images).
    basis : Basis or ChannelBasis
        The kernels to combine; its ``ndim`` decides 2-D or 3-D. A
        :class:`~kernelbank.core.channel_basis.ChannelBasis` fits the vector AR model of
        multi-channel images (:func:`kernelbank.core.channel_fit.fit_channels`).
    ridge : float, default=1e-6
        Per-pixel ridge ``λ`` in ``(G + λ n I)⁻¹ h``; 0 is allowed (singular systems then
        get the minimum-norm solution).
    normalize : bool, default=True
        Z-score each image (at each pyramid scale) before fitting.
    dilations : int or sequence of int, optional
        Tap spacings to fit; default: the basis's own.
    scales : int or sequence of int, optional
        Anti-aliased pyramid factors to fit (1 = original resolution); default 1.
    robust : bool, default=False
        Minimise the L1 error instead (iteratively reweighted least squares); slower.
    robust_iterations : int, default=5
        Reweighting steps of the robust fit.
    epsilon : float, default=1e-3
        Floor on ``|e|`` in the robust weights ``1 / max(|e|, ε)``.
    return_sums : bool, default=False
        Also return the window sums of every (scale, dilation) in ``FitResult.sums``:
        the statistics every later stage is algebra on, from the same pass.

    Returns
    -------
    FitResult, or ChannelFitResult for a ChannelBasis
        With a scale axis when ``dilations`` or ``scales`` is a sequence.

    Raises
    ------
    ValueError
        For an empty batch, wrong dimensions, NaN/inf values, or an image smaller than
        the dilated window at some scale; the message names the image index.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(4, 32, 32))
    >>> result = kb.fit(images, kb.Basis.isotropic(radius=2))
    >>> result.coef.shape, result.kernels.shape, result.mse.dtype
    (torch.Size([4, 6]), torch.Size([4, 5, 5]), torch.float64)
    """
    if isinstance(basis, ChannelBasis):
        if robust:
            raise ValueError("robust=True is not available for a ChannelBasis (multi-channel "
                             "fits are least squares only)")
        from .channel_fit import fit_channels  # channel_fit builds on this module
        return fit_channels(images, basis, ridge=ridge, normalize=normalize,
                            dilations=dilations, scales=scales, return_sums=return_sums)
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must be a kernelbank.Basis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    multi = not (dilations is None or isinstance(dilations, (int, np.integer))) or \
        not (scales is None or isinstance(scales, (int, np.integer)))
    dilation_list = _as_tuple(dilations, basis.dilation, "dilations")
    scale_list = _as_tuple(scales, 1, "scales")
    groups, dtype, device = group_by_shape(images, basis.ndim)
    scale_index = [(s, d) for s in scale_list for d in dilation_list]
    check_windows_fit(groups, basis, scale_index)

    per_key: dict[str, list[torch.Tensor]] = {}
    sums_parts: list[list[WindowSums]] = [[] for _ in scale_index]
    order: list[int] = []
    for indices, batch in groups:
        check_finite(batch, indices)
        # Normalised copies are made a chunk of images at a time: memory stays bounded
        # for any batch, and same-sized buffers are recycled by the allocator instead of
        # faulting in fresh pages.
        budget = _CHUNK_ELEMENTS if batch.device.type == "cpu" else 16 * _CHUNK_ELEMENTS
        chunk = max(1, budget // max(1, batch[0].numel()))
        for start in range(0, len(batch), chunk):
            part = batch[start:start + chunk]
            entries = []
            for scale_position, s in enumerate(scale_list):
                level = pyramid_level(part, s)
                if normalize:
                    level = normalize_images(level)
                equations, sums = level_equations(level, basis, dilation_list,
                                                  with_sums=return_sums)
                for d, equation in zip(dilation_list, equations):
                    entries.append(_solve(level, basis.with_dilation(d), equation, ridge,
                                          robust, robust_iterations, epsilon))
                for position, window in enumerate(sums or []):
                    window.scale = s
                    sums_parts[scale_position * len(dilation_list) + position].append(window)
            for key in entries[0]:
                per_key.setdefault(key, []).append(torch.stack([e[key] for e in entries], 1))
        order.extend(indices)

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    in_order = order == sorted(order)
    merged = {k: _in_input_order(v, inverse, in_order) for k, v in per_key.items()}
    if not multi:
        merged = {k: v[:, 0] for k, v in merged.items()}
    coef = merged["coef"].to(dtype)
    return FitResult(
        coef=coef, kernels=basis.to_kernels(coef), mse=merged["mse"].to(dtype),
        gram=merged["gram"], rhs=merged["rhs"], sum_sq=merged["sum_sq"],
        n_pixels=merged["n_pixels"], basis=basis.with_dilation(dilation_list[0]),
        scale_index=scale_index,
        mae=merged["mae"].to(dtype) if "mae" in merged else None,
        sums=[_merge_sums(parts, inverse) for parts in sums_parts] if return_sums else None)


def _in_input_order(parts: list[torch.Tensor], inverse: torch.Tensor,
                    in_order: bool) -> torch.Tensor:
    """The chunks of one result, concatenated back into input order (copies only if needed)."""
    values = parts[0] if len(parts) == 1 else torch.cat(parts)
    return values if in_order else values[inverse.to(values.device)]


def _merge_sums(parts: list[WindowSums], inverse: torch.Tensor) -> WindowSums:
    """Window sums of the chunks and shape groups of one (scale, dilation), input order."""
    in_order = bool(torch.equal(inverse, torch.arange(len(inverse))))

    def cat(name: str) -> torch.Tensor:
        return _in_input_order([getattr(p, name) for p in parts], inverse, in_order)
    first = parts[0]
    return WindowSums(cat("cross"), cat("first"), cat("n_pixels"), first.radius,
                      first.dilation, first.ndim, first.scale, first.grid, first.channels)
