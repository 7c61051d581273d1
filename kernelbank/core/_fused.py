r"""Compiled CPU engine of the residual descriptors: one fused sweep per image and dilation.

:func:`kernelbank.core.residual.describe_residuals` computes, for each image and its own
kernel, the residual ``e = x - k ⋆ x`` and a few dozen descriptors of it. Its torch code
(the reference, and the GPU backend) does that with a few hundred whole-batch tensor
operations, each one a pass over memory; on a CPU with small images the time goes to
those passes and their dtype and layout copies, not to arithmetic. This module does
the same arithmetic in one compiled loop nest per image (Numba, ``cache=True``: the
machine code is written next to this file on first use and loaded by every later
process):

1. the residual of each output channel in float64 straight from the images' own dtype,
   each tap one long multiply-add over the full-width rows (:func:`_residual`);
2. ``Σe``, ``Σe²``, ``Σ|e|`` and the centred moments (two sweeps of the cache-resident
   residual, exactly the reference's definitions);
3. quantiles of ``|e| / σ`` by exact selection (:func:`_select`: only the histogram bins
   holding the wanted ranks are sorted), interpolated as ``torch.quantile`` does;
4. local binary / ternary pattern codes (8 neighbours at each lag) counted in a
   256-bin histogram, mapped to the ``ri`` / ``nri`` bins by the same lookup tables;
5. quantised co-occurrence tuples along each axis counted in their histogram;
6. the image's own sign patterns (``image_patterns``: the residual of a zero kernel,
   i.e. the image itself) from the same widened copy of the image, no residual formed.

Every histogram is filled in two steps: a loop that only computes codes, which
vectorises (a scattered increment in the same loop keeps it scalar: 1.6× here), then
:func:`_count`.

Notes
-----
Everything is float64 whatever the images' dtype (float32 images are widened on the fly);
how far the engines then agree is in the Notes of
:func:`~kernelbank.core.residual.describe_residuals`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["describe_batch"]

_HIST_BINS_MIN = 64          # bins of the selection histogram: about 4 values per bin


@njit(cache=True, nogil=True)
def _widen(x, n, buffer):
    """Image ``n`` of ``x`` (n, C, D, H, W), any float dtype, into the float64 ``buffer``
    (an explicit loop: Numba's slice assignment across dtypes does not vectorise, 3x)."""
    src = x[n].reshape(buffer.size)
    dst = buffer.reshape(buffer.size)
    for i in range(dst.size):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def _residual(xb, k, n, c, dil, full, offsets, weights, out):
    """``out[z, y, x] = x_c(p) - Σ_{c', taps} k[c, c', tap] x_{c'}(p + δ tap)`` (float64).

    ``xb`` (C, D, H, W) is the image, widened to float64. The prediction of a plane is
    accumulated in ``full`` on the image's full-width rows, so a tap is one contiguous
    multiply-add over ``(vh − 1) W + vw`` values (the columns past the valid ones are
    computed and dropped) instead of one short loop per row, and four taps share one
    pass (one load and store of the prediction for four products) — at 32² the loop
    overheads of 24 taps × 28 rows were most of the time. Each pixel still adds its
    non-zero taps one by one in tap order (the zero taps that pad their list to a
    multiple of four add exact zeros), so the residual is bit for bit the same.
    ``offsets`` and ``weights`` (≥ taps + 3) are scratch.
    """
    channels, kd, kh, kw = k.shape[2], k.shape[3], k.shape[4], k.shape[5]
    depth, height, width = xb.shape[1], xb.shape[2], xb.shape[3]
    rz, ry, rx = (kd // 2) * dil, (kh // 2) * dil, (kw // 2) * dil
    vd, vh, vw = out.shape
    span = (vh - 1) * width + vw
    src = xb.reshape(xb.size)
    pred = full[:span]
    offsets[:] = 0                           # the non-zero taps: plane-relative offsets
    weights[:] = 0.0
    taps = 0
    for cc in range(channels):
        for tz in range(kd):
            for ty in range(kh):
                for tx in range(kw):
                    if k[n, c, cc, tz, ty, tx] != 0.0:
                        offsets[taps] = ((cc * depth + tz * dil) * height + ty * dil) * width \
                            + tx * dil
                        weights[taps] = k[n, c, cc, tz, ty, tx]
                        taps += 1
    for z in range(vd):
        pred[:] = 0.0
        plane = z * height * width
        for t in range(0, taps, 4):
            # slices, so the inner index is a bare loop counter: Numba's negative-index
            # check then vanishes and the loop vectorises
            o0, o1, o2, o3 = (plane + offsets[t], plane + offsets[t + 1],
                              plane + offsets[t + 2], plane + offsets[t + 3])
            s0, s1 = src[o0:o0 + span], src[o1:o1 + span]
            s2, s3 = src[o2:o2 + span], src[o3:o3 + span]
            w0, w1, w2, w3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
            for i in range(span):
                pred[i] = (((pred[i] + w0 * s0[i]) + w1 * s1[i]) + w2 * s2[i]) + w3 * s3[i]
        for y in range(vh):
            target = xb[c, z + rz, y + ry, rx:rx + vw]
            row = pred[y * width:y * width + vw]
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
def _count(codes, hist):
    """``hist[code] += 1`` for every code (``hist`` is added to)."""
    for code in codes:
        hist[code] += 1


@njit(cache=True, nogil=True)
def _sort(values):
    """Sort in place: insertion sort for the few values of a selection bin (Numba's
    ``ndarray.sort`` costs ~0.5 µs a call even for four values), its sort beyond 32."""
    if values.shape[0] > 32:
        values.sort()
        return
    for i in range(1, values.shape[0]):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v


@njit(cache=True, nogil=True)
def _select(flat, sigma, ranks, bins, work, counts, slot, out):
    """Order statistics ``sorted(|flat|)[ranks]`` (``ranks`` sorted) into ``out``, by
    histogram selection.

    Bins ``min(⌊|v| · nb / (4σ)⌋, nb − 1)`` are monotone in ``|v|`` (a product by a
    positive constant and a floor never swap two values), so the r-th smallest value lies
    in the bin where the cumulative count passes r, and only the wanted bins are sorted
    (values past 4σ share the last bin, which a heavy tail only makes larger).
    ``bins``, ``work`` (≥ size), ``counts`` (≥ nb + 1) and ``slot`` (≥ nb, all −1, and
    left so) are scratch.
    """
    size = flat.shape[0]
    if sigma == 0.0:
        out[:] = 0.0
        return
    nb = max(_HIST_BINS_MIN, size // 4)
    scale = nb / (4.0 * sigma)
    top = nb - 1
    b = bins[:size]
    for i in range(size):                    # bins only: vectorises
        b[i] = min(int(abs(flat[i]) * scale), top) + 1
    total = counts[:nb + 1]                  # then total[b] = values in bins < b
    total[:] = 0
    _count(b, total)
    for j in range(1, nb + 1):
        total[j] += total[j - 1]
    # the bin of each rank, and a slot (start in ``work``) for each distinct wanted bin
    rank_bin = np.empty(ranks.shape[0], dtype=np.int64)
    used = 0
    for j in range(ranks.shape[0]):
        r = ranks[j]
        lo, hi = 0, nb                       # largest bin with total[bin] <= r
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if total[mid] <= r:
                lo = mid
            else:
                hi = mid
        rank_bin[j] = lo
        if slot[lo] < 0:
            slot[lo] = used
            used += total[lo + 1] - total[lo]
    for i in range(size):                    # the wanted bins' values, bin after bin
        s = slot[b[i] - 1]
        if s >= 0:
            work[s] = abs(flat[i])
            slot[b[i] - 1] = s + 1
    for j in range(ranks.shape[0]):          # slot[bin] is now its end in ``work``
        lo = rank_bin[j]
        end = slot[lo]
        if end >= 0:
            start = end - (total[lo + 1] - total[lo])
            _sort(work[start:end])
            slot[lo] = -1 - start            # sorted: remember its start as a negative
        start = -1 - slot[lo]
        out[j] = work[start + ranks[j] - total[lo]]
    for j in range(ranks.shape[0]):
        slot[rank_bin[j]] = -1


@njit(cache=True, nogil=True)
def _pattern_codes(e, lag, threshold, mode, up, lo):
    """Pattern codes of a 2-D array ``e`` (H, W) at ``lag`` into ``up`` (and ``lo``),
    row after row; returns their number.

    ``mode`` 0: binary codes ``[e(q) >= e(p)]``; mode 1: ternary codes
    ``[e(q) > e(p) + t]`` into ``up`` and ``[e(q) < e(p) - t]`` into ``lo``.
    Neighbour ``k`` (bit ``k``) in circular order E, NE, N, NW, W, SW, S, SE.
    """
    h, w = e.shape
    m = w - 2 * lag
    k = 0
    for y in range(lag, h - lag):
        # the 9 rows of the neighbourhood as slices (indices are bare loop counters, so
        # the comparisons vectorise)
        a0, a1, a2 = e[y - lag, 0:m], e[y - lag, lag:lag + m], e[y - lag, 2 * lag:]
        b0, b1, b2 = e[y, 0:m], e[y, lag:lag + m], e[y, 2 * lag:]
        c0, c1, c2 = e[y + lag, 0:m], e[y + lag, lag:lag + m], e[y + lag, 2 * lag:]
        u = up[k:k + m]
        if mode == 0:
            for x in range(m):
                p = b1[x]
                u[x] = (np.int32(b2[x] >= p) | (np.int32(a2[x] >= p) << 1)
                        | (np.int32(a1[x] >= p) << 2) | (np.int32(a0[x] >= p) << 3)
                        | (np.int32(b0[x] >= p) << 4) | (np.int32(c0[x] >= p) << 5)
                        | (np.int32(c1[x] >= p) << 6) | (np.int32(c2[x] >= p) << 7))
        else:
            d = lo[k:k + m]
            for x in range(m):
                hi_ = b1[x] + threshold
                lo_ = b1[x] - threshold
                u[x] = (np.int32(b2[x] > hi_) | (np.int32(a2[x] > hi_) << 1)
                        | (np.int32(a1[x] > hi_) << 2) | (np.int32(a0[x] > hi_) << 3)
                        | (np.int32(b0[x] > hi_) << 4) | (np.int32(c0[x] > hi_) << 5)
                        | (np.int32(c1[x] > hi_) << 6) | (np.int32(c2[x] > hi_) << 7))
                d[x] = (np.int32(b2[x] < lo_) | (np.int32(a2[x] < lo_) << 1)
                        | (np.int32(a1[x] < lo_) << 2) | (np.int32(a0[x] < lo_) << 3)
                        | (np.int32(b0[x] < lo_) << 4) | (np.int32(c0[x] < lo_) << 5)
                        | (np.int32(c1[x] < lo_) << 6) | (np.int32(c2[x] < lo_) << 7))
        k += m
    return k


@njit(cache=True, nogil=True)
def _pattern_histograms(e, lag, kinds, tables, n_bins, codes, hist, binned, row, col):
    """Binary pattern histograms of ``e`` (H, W) at ``lag``, one per kind, into
    ``row[col:…]`` as frequencies; returns the next column."""
    m = _pattern_codes(e, lag, 0.0, 0, codes, codes)
    hist[:] = 0
    _count(codes[:m], hist)
    for kind in kinds:
        col = _pattern_histogram(row, col, hist, tables[kind], n_bins[kind], m, binned)
    return col


@njit(cache=True, nogil=True)
def _pattern_histogram(row, col, hist, table, n_bins, centres, binned):
    """Write the 256 code counts ``hist``, binned by ``table`` (as integers, in the
    scratch ``binned``: float adds into ``row`` were 15 % of the descriptors' time) and
    divided by ``centres``, into ``row[col:col + n_bins]``; returns the next column."""
    acc = binned[:n_bins]
    acc[:] = 0
    for code in range(256):
        acc[table[code]] += hist[code]
    for b in range(n_bins):
        row[col + b] = acc[b] / centres
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
def _tuple_codes(q, base, order, lag, axis, codes):
    """Codes ``Σ_i q(p + i lag a) base^(order-1-i)`` of the ``order``-tuples of the
    quantised residual ``q`` (D, H, W) along ``axis`` into ``codes``; returns their number."""
    d, h, w = q.shape
    span = (order - 1) * lag
    sd = span if axis == 0 else 0
    sh = span if axis == 1 else 0
    sw = span if axis == 2 else 0
    step_d = lag if axis == 0 else 0
    step_h = lag if axis == 1 else 0
    step_w = lag if axis == 2 else 0
    m = w - sw
    k = 0
    for z in range(d - sd):
        for y in range(h - sh):
            out = codes[k:k + m]
            if order == 2:
                a = q[z, y, 0:m]
                b = q[z + step_d, y + step_h, step_w:step_w + m]
                for x in range(m):
                    out[x] = a[x] * base + b[x]
            else:
                for x in range(m):
                    code = 0
                    for i in range(order):
                        code = code * base + q[z + i * step_d, y + i * step_h, x + i * step_w]
                    out[x] = code
            k += m
    return k


@njit(cache=True, nogil=True)
def describe_batch(x, k, dil, two_d, moments, ranks, low_slot, high_slot, frac, kinds,
                   ternary, ternary_kinds, tables, cooc_order, levels, step, lags, n_axes,
                   image_kinds, image_lags, out, image_out):
    """Residual descriptors of every image and output channel into ``out`` (n, C, F),
    and the image's own patterns into ``image_out`` (n, C, F').

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
    image_kinds : (K'',) int64, the image's own pattern histograms (empty: none; 2-D)
    image_lags : (L'',) int64, their lags in pixels
    out : (n, C, F) float64
    image_out : (n, C, F') float64
    """
    n, channels = x.shape[0], x.shape[1]
    kd, kh, kw = k.shape[3], k.shape[4], k.shape[5]
    vd = x.shape[2] - (kd - 1) * dil
    vh = x.shape[3] - (kh - 1) * dil
    vw = x.shape[4] - (kw - 1) * dil
    size = vd * vh * vw
    e = np.empty((vd, vh, vw), dtype=np.float64)
    flat = e.reshape(size)
    full = np.empty(x.shape[3] * x.shape[4], dtype=np.float64)
    offsets = np.empty(k[0].size + 3, dtype=np.int64)
    weights = np.empty(k[0].size + 3, dtype=np.float64)
    codes = np.empty(x.shape[2] * x.shape[3] * x.shape[4], dtype=np.int32)
    lower = np.empty(codes.shape[0], dtype=np.int32)
    work = np.empty(size, dtype=np.float64)
    nb = max(_HIST_BINS_MIN, size // 4)
    select_counts = np.empty(nb + 1, dtype=np.int64)
    slot = np.full(nb, -1, dtype=np.int64)
    order = np.empty(ranks.shape[0], dtype=np.float64)
    quant = np.empty((vd, vh, vw), dtype=np.int32)     # 4 bytes a pixel: stays in cache
    up = np.zeros(256, dtype=np.int64)
    lo = np.zeros(256, dtype=np.int64)
    base = 2 * levels + 1
    n_cooc = base ** cooc_order if cooc_order > 0 else 0
    cooc = np.zeros(max(n_cooc, 1), dtype=np.int64)
    binned = np.empty(64, dtype=np.int64)
    n_bins = np.array([10, 59])
    tiny = np.finfo(np.float64).tiny
    needs_sigma = moments or ranks.shape[0] > 0 or ternary >= 0 or cooc_order > 0
    xb = np.empty(x.shape[1:], dtype=np.float64)
    for img in range(n):
        _widen(x, img, xb)
        for c in range(channels):
            col = 0
            for li in range(image_lags.shape[0]):
                # from the images' own dtype: widening never changes a comparison, and
                # float32 compares twice as many pixels per instruction
                col = _pattern_histograms(x[img, c, 0], image_lags[li], image_kinds, tables,
                                          n_bins, codes, up, binned, image_out[img, c], col)
            _residual(xb, k, img, c, dil, full, offsets, weights, e)
            row = out[img, c]
            total = square = absolute = mse = sigma = 0.0
            if needs_sigma:
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
                _select(flat, sigma, ranks, codes, work, select_counts, slot, order)
                for j in range(frac.shape[0]):
                    a = order[low_slot[j]] / safe
                    b = order[high_slot[j]] / safe
                    row[col] = a + frac[j] * (b - a)
                    col += 1
            quantised = False
            for li in range(lags.shape[0]):
                lag = lags[li]
                if two_d and kinds.shape[0] > 0:
                    col = _pattern_histograms(e[0], lag, kinds, tables, n_bins, codes, up,
                                              binned, row, col)
                if two_d and ternary >= 0:
                    m = _pattern_codes(e[0], lag, ternary * sigma, 1, codes, lower)
                    up[:] = 0
                    lo[:] = 0
                    _count(codes[:m], up)
                    _count(lower[:m], lo)
                    for half in range(2):
                        counts = up if half == 0 else lo
                        for kind in ternary_kinds:
                            col = _pattern_histogram(row, col, counts, tables[kind],
                                                     n_bins[kind], m, binned)
                if cooc_order > 0:
                    if not quantised:
                        q_step = max(step * safe, tiny)
                        _quantise(flat, q_step, levels, quant.reshape(size))
                        quantised = True
                    for axis in range(3 - n_axes, 3):
                        m = _tuple_codes(quant, base, cooc_order, lag, axis, codes)
                        cooc[:] = 0
                        _count(codes[:m], cooc)
                        for b in range(n_cooc):
                            row[col + b] = cooc[b] / m
                        col += n_cooc
