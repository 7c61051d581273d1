r"""Compiled CPU engine of the residual descriptors: one fused sweep per image and dilation.

:func:`kernelbank.core.residual.describe_residuals` computes, for each image and its own
kernel, the residual ``e = x - k ⋆ x`` and a few dozen descriptors of it. Its torch code
(the reference, and the GPU backend) does that with a few hundred whole-batch tensor
operations, each one a pass over memory; on a CPU with small images the time goes to
those passes and their dtype and layout copies, not to arithmetic. This module does
the same arithmetic in one compiled loop nest per image (Numba, ``cache=True``: the
machine code is written next to this file on first use and loaded by every later
process):

1. the residual of each output channel, accumulated row by row in float64 straight
   from the images' own dtype (no converted copy of the batch);
2. ``Σe``, ``Σe²``, ``Σ|e|`` and the centred moments (two sweeps of the cache-resident
   residual, exactly the reference's definitions);
3. quantiles of ``|e| / σ`` by *exact selection*: a histogram of ``|e|`` on bins of
   width ``4σ / nb`` (monotone in the value) finds the bin of each wanted rank, and
   only those bins' values are sorted; the linear interpolation between order statistics is the
   reference's (``torch.quantile``'s) to the last bit of its definition;
4. local binary / ternary pattern codes (8 neighbours at each lag) counted in a
   256-bin histogram, mapped to the ``ri`` / ``nri`` bins by the same lookup tables;
5. quantised co-occurrence tuples along each axis counted in their histogram.

Notes
-----
Everything is float64 whatever the images' dtype (float32 images are read and widened
on the fly), so for float32 images the descriptors are those of the *exact* residual,
while the torch reference forms it in float32: the two then agree to float32 rounding
(a count can move by one pixel where a comparison is within rounding of a tie). For
float64 images the engines agree to summation order (tests: 1e-9).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["describe_batch"]

_HIST_BINS_MIN = 64          # bins of the selection histogram: about 4 values per bin


@njit(cache=True, nogil=True)
def _widen(x, n, buffer):
    """Image ``n`` of ``x`` (n, C, D, H, W), any float dtype, into the float64 ``buffer``."""
    src = x[n].reshape(buffer.size)
    dst = buffer.reshape(buffer.size)
    for i in range(dst.size):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def _residual(xb, k, n, c, dil, out):
    """``out[z, y, x] = x_c(p) - Σ_{c', taps} k[c, c', tap] x_{c'}(p + δ tap)`` (float64).

    ``xb`` (C, D, H, W) is the image, widened to float64. Row by row: every tap adds its
    shifted row to the prediction (a contiguous multiply-add the compiler vectorises).
    """
    channels, kd, kh, kw = k.shape[2], k.shape[3], k.shape[4], k.shape[5]
    rz, ry, rx = (kd // 2) * dil, (kh // 2) * dil, (kw // 2) * dil
    vd, vh, vw = out.shape
    row = np.empty(vw, dtype=np.float64)
    for z in range(vd):
        for y in range(vh):
            row[:] = 0.0
            for cc in range(channels):
                for tz in range(kd):
                    for ty in range(kh):
                        src = xb[cc, z + tz * dil, y + ty * dil]
                        for tx in range(kw):
                            w = k[n, c, cc, tz, ty, tx]
                            if w != 0.0:
                                # a slice, so the inner index is a bare loop counter:
                                # Numba's negative-index check then vanishes and the
                                # loop vectorises (5x here)
                                seg = src[tx * dil:tx * dil + vw]
                                for i in range(vw):
                                    row[i] += w * seg[i]
            target = xb[c, z + rz, y + ry, rx:rx + vw]
            dst = out[z, y]
            for i in range(vw):
                dst[i] = target[i] - row[i]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sums(flat, mean):
    """``Σ e``, ``Σ e²``, ``Σ |e|`` (``mean`` is None) or ``Σ (e−μ)^{2,3,4}`` of ``flat``.

    Reassociation lets the compiler split each sum into vector lanes (the order of a
    float sum is all that changes: the engines agree to 1e-9, not bit for bit).
    """
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    if mean is None:
        for i in range(flat.shape[0]):
            v = flat[i]
            s1 += v
            s2 += v * v
            s3 += abs(v)
    else:
        for i in range(flat.shape[0]):
            d = flat[i] - mean
            d2 = d * d
            s1 += d2
            s2 += d2 * d
            s3 += d2 * d2
    return s1, s2, s3


@njit(cache=True, nogil=True)
def _select(flat, sigma, ranks, bins, work):
    """Order statistics ``sorted(|flat|)[ranks]`` (``ranks`` sorted), by histogram selection.

    Bins ``min(⌊|v| · nb / (4σ)⌋, nb − 1)`` are monotone in ``|v|`` (a product by a
    positive constant and a floor never swap two values), so the r-th smallest value lies
    in the bin where the cumulative count passes r, and only the wanted bins are sorted
    (values past 4σ share the last bin, which a heavy tail only makes larger).
    """
    size = flat.shape[0]
    out = np.empty(ranks.shape[0], dtype=np.float64)
    if sigma == 0.0:
        out[:] = 0.0
        return out
    nb = max(_HIST_BINS_MIN, size // 4)
    scale = nb / (4.0 * sigma)
    counts = np.zeros(nb + 1, dtype=np.int64)
    top = nb - 1
    for i in range(size):
        b = min(int(abs(flat[i]) * scale), top)
        bins[i] = b
        counts[b + 1] += 1
    for b in range(nb):                      # counts[b] = values in bins < b
        counts[b + 1] += counts[b]
    # the bin of each rank, and a slot (start in ``work``) for each distinct wanted bin
    slot = np.full(nb, -1, dtype=np.int64)
    rank_bin = np.empty(ranks.shape[0], dtype=np.int64)
    fill = np.zeros(nb, dtype=np.int64)
    used = 0
    for j in range(ranks.shape[0]):
        r = ranks[j]
        lo, hi = 0, nb                       # largest b with counts[b] <= r
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if counts[mid] <= r:
                lo = mid
            else:
                hi = mid
        rank_bin[j] = lo
        if slot[lo] < 0:
            slot[lo] = used
            used += counts[lo + 1] - counts[lo]
    for i in range(size):
        s = slot[bins[i]]
        if s >= 0:
            b = bins[i]
            work[s + fill[b]] = abs(flat[i])
            fill[b] += 1
    done = np.full(nb, False)
    for j in range(ranks.shape[0]):
        b = rank_bin[j]
        s = slot[b]
        m = counts[b + 1] - counts[b]
        if not done[b]:
            work[s:s + m].sort()
            done[b] = True
        out[j] = work[s + ranks[j] - counts[b]]
    return out


@njit(cache=True, nogil=True)
def _lbp_counts(e, lag, threshold, up, lo, mode):
    """Pattern code counts of a 2-D residual (``e`` of shape (1, H, W)) at ``lag``.

    ``mode`` 0: binary codes ``[e(q) >= e(p)]`` into ``up``; mode 1: ternary codes
    ``[e(q) > e(p) + t]`` into ``up`` and ``[e(q) < e(p) - t]`` into ``lo``.
    Neighbour ``k`` (bit ``k``) in circular order E, NE, N, NW, W, SW, S, SE.
    """
    h, w = e.shape[1], e.shape[2]
    m = w - 2 * lag
    for y in range(lag, h - lag):
        # the 9 rows of the neighbourhood as slices (indices are bare loop counters, so
        # the comparisons vectorise)
        a0, a1, a2 = e[0, y - lag, 0:m], e[0, y - lag, lag:lag + m], e[0, y - lag, 2 * lag:]
        b0, b1, b2 = e[0, y, 0:m], e[0, y, lag:lag + m], e[0, y, 2 * lag:]
        c0, c1, c2 = e[0, y + lag, 0:m], e[0, y + lag, lag:lag + m], e[0, y + lag, 2 * lag:]
        if mode == 0:
            for x in range(m):
                p = b1[x]
                code = (np.int64(b2[x] >= p) | (np.int64(a2[x] >= p) << 1)
                        | (np.int64(a1[x] >= p) << 2) | (np.int64(a0[x] >= p) << 3)
                        | (np.int64(b0[x] >= p) << 4) | (np.int64(c0[x] >= p) << 5)
                        | (np.int64(c1[x] >= p) << 6) | (np.int64(c2[x] >= p) << 7))
                up[code] += 1
        else:
            for x in range(m):
                hi_ = b1[x] + threshold
                lo_ = b1[x] - threshold
                code = (np.int64(b2[x] > hi_) | (np.int64(a2[x] > hi_) << 1)
                        | (np.int64(a1[x] > hi_) << 2) | (np.int64(a0[x] > hi_) << 3)
                        | (np.int64(b0[x] > hi_) << 4) | (np.int64(c0[x] > hi_) << 5)
                        | (np.int64(c1[x] > hi_) << 6) | (np.int64(c2[x] > hi_) << 7))
                up[code] += 1
                code = (np.int64(b2[x] < lo_) | (np.int64(a2[x] < lo_) << 1)
                        | (np.int64(a1[x] < lo_) << 2) | (np.int64(a0[x] < lo_) << 3)
                        | (np.int64(b0[x] < lo_) << 4) | (np.int64(c0[x] < lo_) << 5)
                        | (np.int64(c1[x] < lo_) << 6) | (np.int64(c2[x] < lo_) << 7))
                lo[code] += 1


@njit(cache=True, nogil=True)
def _pattern_histogram(row, col, counts, table, n_bins, centres):
    """Write the 256 code counts, binned by ``table`` and divided by ``centres``, into
    ``row[col:col + n_bins]``; returns the next column."""
    row[col:col + n_bins] = 0.0
    for code in range(256):
        row[col + table[code]] += counts[code]
    row[col:col + n_bins] /= centres
    return col + n_bins


@njit(cache=True, nogil=True)
def _quantise(flat, step, levels, out):
    """``out = clip(round(flat / step), -T, T) + T``, rounding half to even as
    ``torch.round`` (``rint`` in the default rounding mode; 5x faster here than
    counting the boundaries crossed)."""
    for i in range(flat.shape[0]):
        r = np.rint(flat[i] / step)
        out[i] = np.int32(min(max(r, -levels), levels) + levels)


@njit(cache=True, nogil=True)
def _cooccurrence(q, base, order, lag, axis, counts):
    """Counts of ``order``-tuples of the quantised residual ``q`` (D, H, W) along ``axis``."""
    d, h, w = q.shape
    span = (order - 1) * lag
    sd = span if axis == 0 else 0
    sh = span if axis == 1 else 0
    sw = span if axis == 2 else 0
    step_d = lag if axis == 0 else 0
    step_h = lag if axis == 1 else 0
    step_w = lag if axis == 2 else 0
    if order == 2:
        m = w - sw
        for z in range(d - sd):
            for y in range(h - sh):
                a = q[z, y, 0:m]
                b = q[z + step_d, y + step_h, step_w:step_w + m]
                for x in range(m):
                    counts[a[x] * base + b[x]] += 1
        return
    for z in range(d - sd):
        for y in range(h - sh):
            for x in range(w - sw):
                code = 0
                for i in range(order):
                    code = code * base + q[z + i * step_d, y + i * step_h, x + i * step_w]
                counts[code] += 1


@njit(cache=True, nogil=True)
def describe_batch(x, k, dil, two_d, moments, ranks, low_slot, high_slot, frac, kinds,
                   ternary, ternary_kinds, tables, cooc_order, levels, step, lags, n_axes,
                   out):
    """Residual descriptors of every image and output channel into ``out`` (n, C, F).

    Parameters (all prepared by :func:`kernelbank.core.residual._compiled_describe`)
    ----------
    x : (n, C, D, H, W) float32 or float64, C-contiguous (D = 1 for 2-D images)
    k : (n, C, C, kd, kh, kw) float64, each image's (vector) kernel (kd = 1 for 2-D)
    dil : int, the dilation
    two_d : bool, whether the images are 2-D (patterns allowed)
    moments : bool
    ranks : (R,) int64, sorted distinct order statistics the quantiles need
    low_slot, high_slot : (Q,) int64, index in ``ranks`` of each quantile's two ranks
    frac : (Q,) float64, interpolation weights (as the reference computes them)
    kinds : (K,) int64, pattern histograms to keep in order (0: ri, 1: nri)
    ternary : float, LTP threshold in units of σ (< 0: none)
    ternary_kinds : (K',) int64, kinds of the LTP histograms
    tables : (2, 256) int64, bin of each code in the ri and nri histograms
    cooc_order, levels : int, tuple length (0: none) and clip level T
    step : float, quantisation step in units of σ
    lags : (L,) int64
    n_axes : int, spatial axes of the images (co-occurrence axes)
    out : (n, C, F) float64
    """
    n, channels = x.shape[0], x.shape[1]
    kd, kh, kw = k.shape[3], k.shape[4], k.shape[5]
    vd = x.shape[2] - (kd - 1) * dil
    vh = x.shape[3] - (kh - 1) * dil
    vw = x.shape[4] - (kw - 1) * dil
    size = vd * vh * vw
    e = np.empty((vd, vh, vw), dtype=np.float64)
    flat = e.reshape(size)
    bins = np.empty(size, dtype=np.int32)
    work = np.empty(size, dtype=np.float64)
    quant = np.empty((vd, vh, vw), dtype=np.int32)     # 4 bytes a pixel: stays in cache
    up = np.zeros(256, dtype=np.int64)
    lo = np.zeros(256, dtype=np.int64)
    base = 2 * levels + 1
    n_cooc = base ** cooc_order if cooc_order > 0 else 0
    cooc = np.zeros(max(n_cooc, 1), dtype=np.int64)
    n_bins = np.array([10, 59])
    tiny = np.finfo(np.float64).tiny
    xb = np.empty(x.shape[1:], dtype=np.float64)
    for img in range(n):
        _widen(x, img, xb)
        for c in range(channels):
            _residual(xb, k, img, c, dil, e)
            row = out[img, c]
            total, square, absolute = _sums(flat, None)
            mse = square / size
            sigma = np.sqrt(mse)
            safe = max(sigma, 1e-12)
            col = 0
            if moments:
                m2, m3, m4 = _sums(flat, total / size)
                m2 /= size
                m3 /= size
                m4 /= size
                var = max(m2, 1e-24)
                row[0] = np.log(max(mse, 1e-24))
                row[1] = np.log(max(absolute / size, 1e-12))
                row[2] = m3 / var ** 1.5
                row[3] = m4 / (var * var)
                col = 4
            if ranks.shape[0] > 0:
                order = _select(flat, sigma, ranks, bins, work)
                for j in range(frac.shape[0]):
                    a = order[low_slot[j]] / safe
                    b = order[high_slot[j]] / safe
                    row[col] = a + frac[j] * (b - a)
                    col += 1
            quantised = False
            for li in range(lags.shape[0]):
                lag = lags[li]
                if two_d and kinds.shape[0] > 0:
                    up[:] = 0
                    _lbp_counts(e, lag, 0.0, up, lo, 0)
                    centres = (vh - 2 * lag) * (vw - 2 * lag)
                    for kind in kinds:
                        col = _pattern_histogram(row, col, up, tables[kind], n_bins[kind],
                                                 centres)
                if two_d and ternary >= 0:
                    up[:] = 0
                    lo[:] = 0
                    _lbp_counts(e, lag, ternary * sigma, up, lo, 1)
                    centres = (vh - 2 * lag) * (vw - 2 * lag)
                    for half in range(2):
                        counts = up if half == 0 else lo
                        for kind in ternary_kinds:
                            col = _pattern_histogram(row, col, counts, tables[kind],
                                                     n_bins[kind], centres)
                if cooc_order > 0:
                    if not quantised:
                        q_step = max(step * safe, tiny)
                        _quantise(flat, q_step, levels, quant.reshape(size))
                        quantised = True
                    for axis in range(3 - n_axes, 3):
                        cooc[:] = 0
                        _cooccurrence(quant, base, cooc_order, lag, axis, cooc)
                        span = (cooc_order - 1) * lag
                        tuples = size // quant.shape[axis] * (quant.shape[axis] - span)
                        for b in range(n_cooc):
                            row[col + b] = cooc[b] / tuples
                        col += n_cooc
