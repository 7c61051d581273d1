r"""Window sums as flat float64 rows, one per image: the form a Parquet column holds.

One image's row for sums of ``T`` taps (:mod:`kernelbank.core.sums`; ``T = C (2r+1)^d``,
channel-major) is ``[cross upper triangle | first | n]``: ``T(T+1)/2`` values in
``numpy.triu_indices`` order, ``T`` values, and the valid-pixel count. Per-cell sums repeat
the block for every cell, cells in C order (:func:`sums_row_length`). The window, scale
and grid are the column's, not the row's: :func:`sums_from_rows` takes them as arguments.
A 2-D radius-2 grey window is 351 values (2.8 kB) per image, radius 4 is 3403 (27 kB).
Rows are float64: the sums feed differences like ``Σx² − αᵀh`` that cancel most of
their digits on well-predicted images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .basis import check_window
from .sums import WindowSums, take_columns

__all__ = ["sums_row_length", "sums_to_rows", "sums_from_rows"]


def _block_length(n_taps: int) -> int:
    return n_taps * (n_taps + 1) // 2 + n_taps + 1


def sums_row_length(radius: int, ndim: int, grid: int | None = None, channels: int = 1) -> int:
    """Values in one image's row for sums of this window (and grid, and channels)."""
    check_window(radius, 1, ndim, channels)
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be None or an integer >= 1, got {grid!r}")
    cells = 1 if grid is None else grid ** ndim
    return cells * _block_length(channels * (2 * radius + 1) ** ndim)


def sums_to_rows(sums: WindowSums) -> np.ndarray:
    """One flat float64 row per image of whole-image or per-cell sums (the module
    docstring's layout): (N, sums_row_length(radius, ndim, grid, channels))."""
    if not isinstance(sums, WindowSums):
        raise TypeError(f"sums must be a WindowSums, got {type(sums).__name__}")
    t = sums.n_taps
    upper = torch.triu_indices(t, t)
    cross = sums.upper if sums.cross is None else take_columns(
        sums.cross.to(torch.float64).reshape(-1, t * t), upper[0] * t + upper[1]
    ).reshape(sums.first.shape[:-1] + (-1,))
    first = sums.first.to(torch.float64)
    count = sums.n_pixels.to(torch.float64)[..., None]
    blocks = torch.cat([cross, first, count], -1)                        # (N, [cells,] block)
    return blocks.reshape(len(sums), -1).cpu().numpy()


def sums_from_rows(rows: np.ndarray | torch.Tensor | Sequence[np.ndarray], *, radius: int,
                   dilation: int, ndim: int, scale: int = 1, grid: int | None = None,
                   channels: int = 1, packed: bool = False) -> WindowSums:
    """Inverse of :func:`sums_to_rows`: the window sums of the images the rows describe.

    ``rows``: (N, L) or N arrays of length L (e.g. a Parquet list column), any real
    dtype; the other arguments describe the sums (the attributes of
    :class:`~kernelbank.core.sums.WindowSums`). The sums are on the CPU, ``cross``
    symmetric; with ``packed`` they keep the rows' upper triangles (``upper``, no
    ``cross``) for the quadratic forms of :meth:`WindowSums.bilinear`. A ValueError for
    rows of the wrong length, non-finite values or a non-integer pixel count.
    """
    check_window(radius, dilation, ndim, channels)
    length = sums_row_length(radius, ndim, grid, channels)
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    if isinstance(rows, np.ndarray) and rows.dtype != object:
        array = np.asarray(rows, dtype=np.float64)
    else:
        parts = [np.asarray(r, dtype=np.float64).reshape(-1) for r in rows]
        bad = [i for i, r in enumerate(parts) if r.size != length]
        if bad:
            raise ValueError(f"row {bad[0]} has {parts[bad[0]].size} values; window sums of "
                             f"radius {radius} in {ndim}-D (grid {grid}, {channels} channel(s)) "
                             f"have {length}")
        array = np.stack(parts) if parts else np.empty((0, length))
    if array.ndim != 2 or array.shape[1] != length:
        raise ValueError(f"rows must have shape (N, {length}) for window sums of radius "
                         f"{radius} in {ndim}-D (grid {grid}, {channels} channel(s)), got "
                         f"{array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("rows contain NaN or inf values")
    t = channels * (2 * radius + 1) ** ndim
    cells = 1 if grid is None else grid ** ndim
    blocks = torch.from_numpy(array.reshape(len(array), cells, _block_length(t)))
    tri = t * (t + 1) // 2
    count = blocks[..., -1]
    if (count < 0).any() or (count != count.round()).any():
        raise ValueError("the pixel counts (last value of each block) must be non-negative "
                         "integers; these rows do not hold window sums in this layout")
    upper, first, count = blocks[..., :tri], blocks[..., tri:tri + t], count.to(torch.int64)
    if grid is None:
        upper, first, count = upper[:, 0], first[:, 0], count[:, 0]
    # views into the rows (a product reads them with their stride: no copy)
    sums = WindowSums(None, first, count, int(radius), int(dilation), int(ndim), int(scale),
                      grid, int(channels), upper=upper)
    return sums if packed else sums.dense()
