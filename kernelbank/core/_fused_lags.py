r"""Compiled CPU engine of the window sums: lag products summed per position class.

The same sums as :func:`kernelbank.core._lags.lag_window_sums` (whose docstring gives the
algebra). Along an axis the run ends cut the positions into at most ``4r + 1``
*classes* that every tap's run covers whole or misses, so for each of the
``((4r+1)² + 1) / 2`` distinct lags one sweep over the rows accumulates the lag products
per (row class, column class) — one multiply-add per pixel and lag — and every entry of
``cross`` is a sum of the class sums its runs cover. Each lag sweeps only the rectangle
its tap pairs read. Small images are interleaved pixel by pixel, up to :data:`LANES` at
a time (layout ``(H, W, lanes)``, float64), so a row is a long vector even at 32 × 32;
large ones go one at a time so the layout stays in cache.

Products and sums are float64 (at least as accurate as the reference). 2-D, one
channel: :func:`kernelbank.core._lags.lag_window_sums` picks this engine for CPU tensors
of that kind where it is measured faster and keeps its matrix products for the rest.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numba import njit

__all__ = ["LANES", "compiled_lag_window_sums"]

# Most images interleaved per layout: measured on one thread (radius 2, dilations 1-3),
# 16 against 8 is 17 % faster at 32², 5 % at 64² (32: no better at 32², slower at 48²).
LANES = 16


@njit(cache=True, nogil=True)
def _fill(images, shift, i0, layout):
    """``layout[y, x, j] = images[i0 + j, y, x] − shift[i0 + j]`` in float64 (zeros past
    the last image)."""
    n, h, w = images.shape
    lanes = layout.shape[2]
    for j in range(lanes):
        i = i0 + j
        if i < n:
            s = np.float64(shift[i])
            for y in range(h):
                for x in range(w):
                    layout[y, x, j] = np.float64(images[i, y, x]) - s
        else:
            layout[:, :, j] = 0.0


@njit(cache=True, nogil=True)
def _flush(row, lanes, col_bounds, j0, j1, out):
    """``out[j, lane] = Σ_{x ∈ column class j} row[x · lanes + lane]`` for j in [j0, j1)."""
    for j in range(j0, j1):
        o = out[j]
        o[:] = 0.0
        for x in range(col_bounds[j], col_bounds[j + 1]):
            seg = row[x * lanes:(x + 1) * lanes]
            for lane in range(lanes):
                o[lane] += seg[lane]


@njit(cache=True, nogil=True, fastmath={"contract"})
def _class_sums(flat, stride, lanes, shift, row_class, y0, y1, col_bounds, c0, c1, partial,
                table):
    """Sums per (row class, column class) of the lag products at ``shift`` (flat offset
    of the partner pixel; −1: of the pixels themselves) into ``table`` (Ky, Kx, lanes),
    over rows ``[y0, y1)`` and column classes ``[c0, c1)`` (the rest of ``table`` is left
    as it was: no run of this lag reads it).

    Every row's products are added elementwise into one row of partial sums (a
    contiguous multiply-add over columns × lanes, which the compiler vectorises); that
    row is reduced to column classes only when the row class changes.
    """
    k0 = col_bounds[c0] * lanes
    m = col_bounds[c1] * lanes - k0
    part = partial[k0:k0 + m]
    part[:] = 0.0
    current = row_class[y0]
    for y in range(y0, y1):
        if row_class[y] != current:
            _flush(partial, lanes, col_bounds, c0, c1, table[current])
            part[:] = 0.0
            current = row_class[y]
        # slices from 0: bare loop counters as indices (no negative-index check),
        # so the loop vectorises
        p = flat[y * stride + k0:y * stride + k0 + m]
        if shift < 0:
            for k in range(m):
                part[k] += p[k]
        else:
            q = flat[y * stride + k0 + shift:y * stride + k0 + shift + m]
            for k in range(m):
                part[k] += p[k] * q[k]
    _flush(partial, lanes, col_bounds, c0, c1, table[current])


@njit(cache=True, nogil=True)
def _assemble(table, ly, lx, row_cover, col_cover, side, i0, part, out):
    """The entries ``out[i0 + j, a, b]`` (and ``[b, a]``) of lag ``(ly, lx)`` (tap units)
    of images ``i0 …`` from its class sums ``table`` (Ky, Kx, lanes).

    ``row_cover[u]`` / ``col_cover[u]``: ``[first class, last class + 1)`` of run ``u``.
    """
    n = out.shape[0]
    width = table.shape[2]
    lanes = min(width, n - i0)
    ux0, ux1 = max(0, -lx), min(side, side - lx)
    for cy in range(table.shape[0]):         # column runs first: part[cy, ux]
        for ux in range(ux0, ux1):
            for j in range(width):
                part[cy, ux, j] = 0.0
            for cx in range(col_cover[ux, 0], col_cover[ux, 1]):
                for j in range(width):
                    part[cy, ux, j] += table[cy, cx, j]
    for uy in range(0, side - ly):
        for ux in range(ux0, ux1):
            a = uy * side + ux
            b = (uy + ly) * side + ux + lx
            for j in range(lanes):
                value = 0.0
                for cy in range(row_cover[uy, 0], row_cover[uy, 1]):
                    value += part[cy, ux, j]
                out[i0 + j, a, b] = value
                out[i0 + j, b, a] = value


@njit(cache=True, nogil=True)
def _window_sums(images, shift, dil, lanes, lags, row_class, row_lo, row_hi, col_bounds,
                 col_lo, col_hi, row_cover, col_cover, side, n_row_classes, cross_out,
                 first_out):
    """Per group of ``lanes`` images: fill the layout, then per lag its class sums and
    at once its entries (the class sums of one lag stay in cache: a table of all lags
    was 0.4 MB per group at 32², out of cache before it was read)."""
    n, h, w = images.shape
    layout = np.empty((h, w, lanes))
    flat = layout.reshape(h * w * lanes)
    stride = w * lanes
    partial = np.empty(stride)
    n_cols = col_bounds.shape[0] - 1
    table = np.empty((n_row_classes, n_cols, lanes))
    part = np.empty((n_row_classes, side, lanes))
    for i0 in range(0, n, lanes):
        _fill(images, shift, i0, layout)
        for li in range(lags.shape[0]):
            ly, lx = lags[li, 0], lags[li, 1]
            _class_sums(flat, stride, lanes, dil * (ly * stride + lx * lanes), row_class,
                        row_lo[li], row_hi[li], col_bounds, col_lo[li], col_hi[li], partial,
                        table)
            _assemble(table, ly, lx, row_cover, col_cover, side, i0, part, cross_out)
        # the first sums: the "lag" of each pixel with itself, without the product
        _class_sums(flat, stride, lanes, -1, row_class, 0, h, col_bounds, 0, n_cols,
                    partial, table)
        for uy in range(side):
            for ux in range(side):
                for j in range(min(lanes, n - i0)):
                    value = 0.0
                    for cy in range(row_cover[uy, 0], row_cover[uy, 1]):
                        for cx in range(col_cover[ux, 0], col_cover[ux, 1]):
                            value += table[cy, cx, j]
                    first_out[i0 + j, uy * side + ux] = value


def _classes(length: int, radius: int, dilation: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class boundaries of an axis, the class of each position, and each run's classes.

    Returns ``bounds`` (K + 1,), ``of`` (length,) and ``cover`` (2r + 1, 2): run ``u``
    covers classes ``cover[u, 0] … cover[u, 1] − 1``.
    """
    valid = length - 2 * radius * dilation
    starts = dilation * np.arange(2 * radius + 1)
    bounds = np.unique(np.concatenate([[0, length], starts, starts + valid]))
    of = np.searchsorted(bounds, np.arange(length), side="right") - 1
    cover = np.stack([np.searchsorted(bounds, starts), np.searchsorted(bounds, starts + valid)],
                     1)
    return bounds.astype(np.int64), of.astype(np.int64), cover.astype(np.int64)


def _lags(radius: int) -> np.ndarray:
    """One lag ``(row, column)`` per unordered tap pair: row lag > 0, or 0 and column ≥ 0."""
    span = range(-2 * radius, 2 * radius + 1)
    return np.array([(ly, lx) for ly in range(0, 2 * radius + 1) for lx in span
                     if ly > 0 or lx >= 0], dtype=np.int64)


def _lanes(height: int, width: int, n: int) -> int:
    """Images interleaved per layout: enough that a row of products is a long vector
    (small images), few enough that the layout stays in cache (large ones)."""
    return int(max(1, min(LANES, n, 4096 // max(1, width), (1 << 16) // (height * width))))


@functools.lru_cache(maxsize=64)
def _plan(height: int, width: int, radius: int, dilation: int) -> tuple:
    """A call's arguments but the pixels, once per shape (~3 % of the engine at 32²): the
    lags, the rows and column classes each sweeps (its first taps' runs), the classes."""
    side, d = 2 * radius + 1, dilation
    lags = _lags(radius)
    row_bounds, row_class, row_cover = _classes(height, radius, d)
    col_bounds, _, col_cover = _classes(width, radius, d)
    ly, lx = lags[:, 0], lags[:, 1]
    row_lo = np.zeros(len(lags), dtype=np.int64)
    row_hi = (d * (side - 1 - ly) + (height - 2 * radius * d)).astype(np.int64)
    u_lo, u_hi = np.maximum(0, -lx), np.minimum(side - 1, side - 1 - lx)
    return (lags, row_class, row_lo, row_hi, col_bounds, col_cover[u_lo, 0],
            col_cover[u_hi, 1], row_cover, col_cover, side, len(row_bounds) - 1)


def compiled_lag_window_sums(images: torch.Tensor, radius: int, dilation: int,
                             shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kernelbank.core._lags.lag_window_sums` of ``(n, H, W)`` CPU images.

    Returns ``cross`` (n, t, t) and ``first`` (n, t), float64, of ``images − shift``.
    """
    n, h, w = images.shape
    t = (2 * radius + 1) ** 2
    cross, first = np.empty((n, t, t)), np.empty((n, t))
    _window_sums(images.detach().contiguous().numpy(),
                 shift.detach().reshape(n).contiguous().numpy(), int(dilation),
                 _lanes(h, w, n), *_plan(h, w, radius, int(dilation)), cross, first)
    return torch.from_numpy(cross), torch.from_numpy(first)
