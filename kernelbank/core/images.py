r"""The front door of the math layer: accept images, group by shape, chunk, check, prepare.

Every image is a ``(C, *spatial)`` array: a grey image ``(H, W)`` (or a volume
``(D, H, W)``) becomes ``(1, H, W)`` here, and the results of the one pass are squeezed
back for it on the way out (:mod:`kernelbank.core.fit`). The steps, in order:

**accept** one array or tensor ``(N, [C,] *spatial)``, or a list of images of any sizes;
**group** images of equal shape (a single array is one group, copied only to change its
dtype; integer images are computed in float32); **chunk** a group into about 4 M values,
so the normalised copies stay bounded in memory; **check** for NaN/inf values and images
smaller than the dilated window at some scale (a ``ValueError`` naming the image); then
the **pyramid and z-score**, per channel (:func:`pyramid_level`, :func:`normalize_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["Front", "accept", "check_finite", "check_windows_fit", "chunks", "levels",
           "normalize_images", "pyramid_level", "scale_entries", "restore_order"]

ImageBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]

# Values (pixels × channels) prepared at a time per chunk of images: 16 MiB of float32.
_CHUNK_ELEMENTS = 4 << 20


@dataclass
class Front:
    """Accepted images: ``groups`` of ``(indices, batch (n, C, *spatial))``, the compute
    dtype and device, and whether the input was grey (no channel axis: squeeze it back)."""

    groups: list[tuple[list[int], torch.Tensor]]
    dtype: torch.dtype
    device: torch.device
    grey: bool


def _shape_error(channels: int, ndim: int, what: str, shape) -> ValueError:
    spatial = ("D, " if ndim == 3 else "") + "H, W"
    expected = f"(N, {spatial}) or (N, 1, {spatial})" if channels == 1 else \
        f"(N, {channels}, {spatial})"
    return ValueError(f"{what} has shape {tuple(shape)}, the wrong dimensions: {channels} "
                      f"channel(s) of {ndim}-D images need a batch of shape {expected} (or a "
                      f"list of such images)")


def accept(images: ImageBatch, ndim: int, channels: int = 1) -> Front:
    """Check and group images ``(N, [C,] *spatial)`` (or a list of ``([C,] *spatial)``) for
    a model of ``channels`` channels on ``ndim``-D images; the channel axis may be left
    out when ``channels == 1`` (grey images)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == ndim and channels == 1:
            raise ValueError(f"expected a batch of shape (N, {'D, ' if ndim == 3 else ''}H, W)"
                             f", got a single image of shape {tuple(images.shape)}; pass "
                             f"images[None] to fit one image")
        grey = channels == 1 and images.ndim == ndim + 1
        if not grey and (images.ndim != ndim + 2 or images.shape[1] != channels):
            raise _shape_error(channels, ndim, "images", images.shape)
        if len(images) == 0:
            raise ValueError("images is empty: fit needs at least one image")
        batch = torch.as_tensor(images)
        dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
        batch = batch.to(dtype)
        return Front([(list(range(len(batch))), batch[:, None] if grey else batch)], dtype,
                     batch.device, grey)
    items = [i if isinstance(i, torch.Tensor) else torch.as_tensor(np.asarray(i)) for i in images]
    if not items:
        raise ValueError("images is empty: fit needs at least one image")
    grey = channels == 1 and items[0].ndim == ndim
    for index, item in enumerate(items):
        if grey and item.ndim != ndim:
            raise ValueError(f"image {index} has {item.ndim} dimensions (shape "
                             f"{tuple(item.shape)}); a {ndim}-D basis needs {ndim}-D images")
        if not grey and (item.ndim != ndim + 1 or item.shape[0] != channels):
            raise _shape_error(channels, ndim, f"image {index}", tuple(item.shape))
    dtype = torch.float64 if any(i.dtype == torch.float64 for i in items) else torch.float32
    device = items[0].device
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    out = []
    for indices in groups.values():
        batch = torch.stack([items[i] for i in indices]).to(device, dtype)
        out.append((indices, batch[:, None] if grey else batch))
    return Front(out, dtype, device, grey)


def check_finite(batch: torch.Tensor, indices: Sequence[int]) -> None:
    """Raise for the first image holding NaN or inf values."""
    # One cheap pass: a sum is finite unless some value is NaN/inf (or it overflows, in
    # which case the exact check below clears the image).
    suspect = ~torch.isfinite(batch.reshape(batch.shape[0], -1).sum(1))
    for position in torch.nonzero(suspect).flatten().tolist():
        count = int((~torch.isfinite(batch[position])).sum())
        if count:
            raise ValueError(f"image {indices[position]} contains {count} NaN or inf values")


def scale_entries(dilations, scales, dilation: int) -> tuple[list[tuple[int, int]], bool]:
    """``(scale, dilation)`` entries, scale-major, and whether a scale axis was asked for
    (a sequence of dilations or scales rather than one value or None)."""
    multi = not (dilations is None or isinstance(dilations, (int, np.integer))) or \
        not (scales is None or isinstance(scales, (int, np.integer)))
    dilation_list = _as_tuple(dilations, dilation, "dilations")
    return [(s, d) for s in _as_tuple(scales, 1, "scales") for d in dilation_list], multi


def _as_tuple(value, default: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (default,)
    values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not values or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {value!r}")
    return tuple(int(v) for v in values)


def check_windows_fit(front: Front, basis, entries: Sequence[tuple[int, int]]) -> None:
    """Raise for the first image smaller than the window at any (scale, dilation) entry."""
    for indices, batch in front.groups:
        for s, d in entries:
            shape = tuple(-(-v // s) for v in batch.shape[2:])
            need = 2 * basis.radius * d + 1
            if min(shape) < need:
                where = f" at pyramid scale {s} (size {shape})" if s > 1 else ""
                raise ValueError(
                    f"image {indices[0]} has shape {tuple(batch.shape[2:])}{where}, smaller "
                    f"than the {need}-pixel window of radius {basis.radius} with dilation {d}; "
                    "use a smaller radius or dilation, or drop this image")


def chunks(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Parts of a same-shaped batch, about 4 M values per part on a CPU."""
    budget = _CHUNK_ELEMENTS if batch.device.type == "cpu" else 16 * _CHUNK_ELEMENTS
    size = max(1, budget // max(1, batch[0].numel()))
    return batch.split(size)


def levels(part: torch.Tensor, scales: Sequence[int], normalize: bool
           ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(scale, level)`` of a chunk ``(n, C, *spatial)``: each channel anti-aliased and
    downsampled, then z-scored on its own when ``normalize``."""
    n, channels = part.shape[:2]
    flat = part.reshape((n * channels,) + part.shape[2:])
    for s in scales:
        level = pyramid_level(flat, s)
        if normalize:
            level = normalize_images(level)
        yield s, level.reshape((n, channels) + level.shape[1:])


def restore_order(parts: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    """Chunks of one result in processing ``order``, concatenated back into input order
    (copies only when the order differs)."""
    values = parts[0] if len(parts) == 1 else torch.cat(parts)
    if order == sorted(order):
        return values
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return values[inverse.to(values.device)]


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
    """Anti-aliased downsampling of ``(n, *spatial)`` by an integer factor, to
    ``(n, *ceil(spatial / factor))``.

    Blurs each image with a separable Gaussian of ``σ = (factor - 1) / 2`` (the
    anti-aliasing rule of ``skimage.transform.rescale``; reflect padding, truncated at
    4σ) and keeps every ``factor``-th pixel along each axis. Plain ``x[::s, ::s]`` would
    alias fine texture into false low-frequency structure.
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
