r"""Local sign patterns and quantised co-occurrences of a residual image, as histograms.

Two families of higher-order descriptors of a 2-D (or, for co-occurrences, any-D)
residual ``e`` over its pixels ``p``:

**Local binary patterns (LBP).** The 8 neighbours of ``p`` at lag ``L`` pixels, in
circular order ``o_0 … o_7`` = E, NE, N, NW, W, SW, S, SE (rows grow downwards), give the
code ``c(p) = Σ_k [e(p + L o_k) ≥ e(p)] 2^k``. Two histograms of the codes are kept:

* ``ri`` (rotation-invariant uniform, 10 bins): a *uniform* code has at most two 0/1
  transitions around the circle; bin ``j`` in 0..8 counts uniform codes with ``j`` ones,
  bin 9 every non-uniform code. Invariant to any circular shift of the bits, hence to
  rotations of the image by 90°.
* ``nri`` (uniform, not rotation-invariant, 59 bins): bin 0 all zeros; bin
  ``1 + 8 (j - 1) + s`` the uniform code with ``j`` ones (1..7) whose run of ones starts
  at bit ``s``; bin 57 all ones; bin 58 non-uniform. Rotating the image by 90°
  counter-clockwise moves bit ``k`` to bit ``k + 2`` (mod 8), so ``s → s + 2``.

**Local ternary patterns (LTP).** With a threshold ``t`` two binary codes per pixel:
the *upper* bits ``[e(p + L o_k) - e(p) > t]`` and the *lower* bits
``[e(p + L o_k) - e(p) < -t]``, each histogrammed like an LBP code.

**Co-occurrences** (steganalysis rich models). The residual is quantised to
``v = clip(round(e / q), -T, T)`` and the ``order``-tuples
``(v(p), v(p + L a), …, v(p + (order-1) L a))`` along each axis ``a`` are counted in
``(2T + 1)^order`` bins.

Every histogram is normalised by its number of pixels (a frequency) and is computed for a
whole batch with one ``bincount``: no Python loop over images.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NEIGHBOURS", "N_RI", "N_NRI", "pattern_bins", "binary_codes", "ternary_codes",
           "histograms", "quantise", "cooccurrence_codes"]

# (row, column) offsets in circular, counter-clockwise order starting east.
NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
N_RI = 10
N_NRI = 59


def _lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """Bin of each of the 256 codes in the ``ri`` and the ``nri`` histogram."""
    ri = np.empty(256, dtype=np.int64)
    nri = np.empty(256, dtype=np.int64)
    for code in range(256):
        bits = [(code >> k) & 1 for k in range(8)]
        ones = sum(bits)
        transitions = sum(bits[k] != bits[(k + 1) % 8] for k in range(8))
        if transitions > 2:
            ri[code], nri[code] = N_RI - 1, N_NRI - 1
            continue
        ri[code] = ones
        if ones in (0, 8):
            nri[code] = 0 if ones == 0 else N_NRI - 2
        else:
            start = next(k for k in range(8) if bits[k] and not bits[(k - 1) % 8])
            nri[code] = 1 + 8 * (ones - 1) + start
    return ri, nri


_RI_TABLE, _NRI_TABLE = (torch.from_numpy(t) for t in _lookup_tables())


def pattern_bins(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """Map 8-bit codes to their ``"ri"`` or ``"nri"`` bins (same shape, int64)."""
    if kind not in ("ri", "nri"):
        raise ValueError(f"pattern kind must be 'ri' or 'nri', got {kind!r}")
    table = (_RI_TABLE if kind == "ri" else _NRI_TABLE).to(codes.device)
    return table[codes.long()]


def _centre_and_neighbours(e: torch.Tensor, lag: int):
    """The centre crop of (n, H, W) and its 8 neighbour views at ``lag`` pixels."""
    h, w = e.shape[1] - 2 * lag, e.shape[2] - 2 * lag
    if h < 1 or w < 1:
        raise ValueError(f"a residual of shape {tuple(e.shape[1:])} has no pixel whose "
                         f"neighbours at lag {lag} are inside it; use a smaller lag or a "
                         "larger image")
    centre = e[:, lag:lag + h, lag:lag + w]
    views = [e[:, lag + lag * dr:lag + lag * dr + h, lag + lag * dc:lag + lag * dc + w]
             for dr, dc in NEIGHBOURS]
    return centre, views


def _codes(views: list[torch.Tensor], bit_of) -> torch.Tensor:
    """8-bit codes, bit ``k`` from ``bit_of(views[k], out=bit)``, uint8."""
    codes = torch.zeros(views[0].shape, dtype=torch.uint8, device=views[0].device)
    bit = torch.empty(views[0].shape, dtype=torch.bool, device=views[0].device)
    # Horner's rule from the highest bit down: codes = 2 codes + bit, all in place (no
    # temporary per neighbour, which costs more than the comparison itself).
    for view in reversed(views):
        bit_of(view, out=bit)
        codes.mul_(2).add_(bit.view(torch.uint8))
    return codes


def binary_codes(e: torch.Tensor, lag: int) -> torch.Tensor:
    """LBP codes of (n, H, W) residuals at ``lag``, shape (n, H - 2 lag, W - 2 lag), uint8."""
    centre, views = _centre_and_neighbours(e, lag)
    return _codes(views, lambda view, out: torch.ge(view, centre, out=out))


def ternary_codes(e: torch.Tensor, lag: int, threshold: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper and lower LTP codes of (n, H, W) residuals; ``threshold`` of shape (n,)."""
    centre, views = _centre_and_neighbours(e, lag)
    t = threshold.to(e.dtype).reshape(-1, 1, 1)
    high, low = centre + t, centre - t
    return (_codes(views, lambda view, out: torch.gt(view, high, out=out)),
            _codes(views, lambda view, out: torch.lt(view, low, out=out)))


def histograms(bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-image frequency of each bin: (n, *spatial) int → (n, n_bins) float64."""
    n = bins.shape[0]
    flat = bins.reshape(n, -1).long()
    offset = torch.arange(n, device=bins.device)[:, None] * n_bins
    counts = torch.bincount((flat + offset).flatten(), minlength=n * n_bins)
    return counts.reshape(n, n_bins).to(torch.float64) / max(1, flat.shape[1])


def quantise(e: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    """``clip(round(e / step), -T, T) + T`` per image: (n, *spatial) int64 in ``[0, 2T]``.

    ``step`` has shape (n,) (floored at the dtype's tiny so a zero residual maps to T).
    """
    shape = (-1,) + (1,) * (e.ndim - 1)
    scaled = e / step.to(e.dtype).clamp_min(torch.finfo(e.dtype).tiny).reshape(shape)
    return scaled.round_().clamp_(-levels, levels).add_(levels).to(torch.int64)


def cooccurrence_codes(values: torch.Tensor, levels: int, order: int, lag: int,
                       axis: int) -> torch.Tensor:
    """Codes ``Σ_i v(p + i lag a) (2T+1)^(order-1-i)`` in ``[0, (2T+1)^order)`` of the
    ``order``-tuples, ``lag`` pixels apart along spatial ``axis`` ``a`` (0-based), of a
    residual quantised by :func:`quantise` ((n, *spatial) int64, values ``0 … 2T``,
    ``levels = T``): (n, *cropped) int64."""
    span = (order - 1) * lag
    length = values.shape[1 + axis]
    if length <= span:
        raise ValueError(f"a residual of shape {tuple(values.shape[1:])} is too short along "
                         f"axis {axis} for {order}-tuples at lag {lag}")
    base = 2 * levels + 1
    codes = values.narrow(1 + axis, 0, length - span).clone()
    for i in range(1, order):
        codes.mul_(base).add_(values.narrow(1 + axis, i * lag, length - span))
    return codes
