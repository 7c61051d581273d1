r"""Exact window sums from lag products, contracted by matrix products.

For one image ``x``, a window of taps ``o_a = δ a`` (``a ∈ [-r, r]^d``) and the valid
pixels ``V``, every entry of the window's cross-product matrix is a sum of one *lag
product* over a shifted copy of ``V``::

    cross[a, b] = Σ_{p∈V} x(p + o_a) x(p + o_b) = Σ_{q ∈ V + o_a} x(q) x(q + L),   L = o_b − o_a

There are far fewer lags than entries, and the rectangles ``V + o_a`` of all taps share a
large core: along each axis a rectangle is ``[R + δa, S − R + δa)`` (``R = rδ``, ``S`` the
image side), so cutting the axis at every such boundary splits it into *blocks* (single
rows near the two ends, one long core block in the middle) and every rectangle is a
contiguous run of blocks. The engine therefore computes, per lag, the lag-product sum of
every (plane block, row block, column block) box, and the window sums are box sums of
those: exact, from float64 prefix sums over at most a few dozen blocks per axis.

The box sums of the lags come from three kinds of work, one per region of the image:

* **core rows × all columns** (nearly all pixels): for each row lag, a batched matrix
  product over the core rows of column tiles, ``Xᵀ_tile · X_tile+halo``, of which the
  band of column lags ``|l| ≤ 2r`` is kept: one BLAS call per row lag;
* **edge rows × core columns**: per column lag, a batched product over the core columns
  of the few edge rows against their partner rows;
* **edge rows × edge columns** (the corners): explicit products, a few thousand per image.

Columns are dilated by deinterleaving: the ``δ`` column phases of the image are laid side
by side, separated by zero gaps of ``2r`` columns, so a column lag is ``|l| ≤ 2r`` in
phase units and no product is wasted on columns the window never pairs. Rows and planes
are used as they are, with lags that are multiples of ``δ``.

Notes
-----
Products are formed in the images' dtype and summed in float64 across blocks: within a
block the matrix products accumulate in the images' dtype, as the strip Grams of
:mod:`kernelbank.core.responses` do. The caller passes a shift (each image's mean) that
is subtracted when the layout is filled, so a large offset cancels no digits in the
float32 products; :func:`kernelbank.core.sums.window_sums` adds its exact contribution
back in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["lag_window_sums"]

# Elements of the float64 block table (all lags × blocks) or of the image layout held at
# once: larger batches are split into groups of images.
_TABLE_ELEMENTS = 4 << 20
_LAYOUT_ELEMENTS = 8 << 20
# Elements of one explicit corner-product tensor.
_CORNER_ELEMENTS = 1 << 21


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tile_width(radius: int) -> int:
    """Columns per matrix-product tile: wide enough to amortise the 4r-column halo
    (measured: 8 columns for radius ≤ 2, 16 for radius 4)."""
    return max(8, 4 * radius)


# ---------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _AxisPlan:
    """How one axis of the layout splits into blocks that every run covers whole.

    Attributes
    ----------
    block : np.ndarray of shape (extent,)
        Block of each layout position; -1 for gaps and padding.
    n_blocks : int
    lo, hi : np.ndarray of shape (2 radius + 1, pieces)
        Run ``k`` (tap coordinate ``k - radius``) covers blocks ``[lo[k, i], hi[k, i])``
        of each piece ``i`` (pieces: the column phases when their block structures
        differ, else one).
    core_block : int
        The block every run covers (summed by matrix products), -1 if none.
    """

    block: np.ndarray
    n_blocks: int
    lo: np.ndarray
    hi: np.ndarray
    core_block: int

    def edge_positions(self, stop: int | None = None) -> np.ndarray:
        """Layout positions in some block other than the core."""
        block = self.block[:stop]
        return np.nonzero((block >= 0) & (block != self.core_block))[0]

    def core_range(self) -> tuple[int, int] | None:
        """[start, stop) of the core block when it is one contiguous range."""
        if self.core_block < 0:
            return None
        where = np.nonzero(self.block == self.core_block)[0]
        return int(where[0]), int(where[-1]) + 1


def _axis_plan(segments: list[tuple[int, int]], unit: int, radius: int,
               extent: int) -> _AxisPlan:
    """Blocks of an axis made of ``segments`` ``(layout offset, length)``.

    In a segment of length ``S``, run ``k`` covers ``[R + k u, S − R + k u)`` with
    ``R = radius · unit``. Segments whose blocks belong to the same runs in the same
    order are merged (block ``b`` of the axis is block ``b`` of every segment).
    """
    reach = radius * unit
    taps = range(-radius, radius + 1)
    layouts = []
    for offset, length in segments:
        cuts = {0, length}
        for k in taps:
            cuts.add(min(max(reach + k * unit, 0), length))
            cuts.add(min(max(length - reach + k * unit, 0), length))
        cuts = sorted(cuts)
        blocks = list(zip(cuts[:-1], cuts[1:]))
        members = tuple(frozenset(k for k in taps
                                  if s >= reach + k * unit and e <= length - reach + k * unit)
                        for s, e in blocks)
        layouts.append((offset, blocks, members))
    merged = all(members == layouts[0][2] for _, _, members in layouts)
    pieces = layouts[:1] if merged else layouts
    block = np.full(extent, -1, dtype=np.int64)
    lo = np.zeros((len(taps), len(pieces)), dtype=np.int64)
    hi = np.zeros_like(lo)
    base = 0
    for piece, (_, blocks, members) in enumerate(pieces):
        for k_index, k in enumerate(taps):
            inside = [b for b, m in enumerate(members) if k in m]
            if inside:
                if inside != list(range(inside[0], inside[-1] + 1)):
                    raise RuntimeError("internal error: a run is not a contiguous range of blocks")
                lo[k_index, piece], hi[k_index, piece] = base + inside[0], base + inside[-1] + 1
        base += len(blocks)
    for index, (offset, blocks, _) in enumerate(layouts):
        first = 0 if merged else sum(len(b) for _, b, _ in layouts[:index])
        for b, (s, e) in enumerate(blocks):
            block[offset + s:offset + e] = first + b
    core = [b for b, m in enumerate(layouts[0][2]) if len(m) == len(taps)]
    core_block = core[0] if merged and core else -1
    return _AxisPlan(block, base, lo, hi, core_block)


# ---------------------------------------------------------------------------- layout
class _Layout:
    """The shifted images copied once into the arrangement every product reads.

    ``z`` has shape ``(rows, planes, n, width)``: image rows outermost (the contraction
    axis of the core products), then planes (volumes) and images, then the column phases
    side by side with ``2r`` zero columns before, between and after them, the width
    rounded up to whole tiles. ``2R + δ`` zero rows follow the image rows, and the flat
    ``buffer`` has ``2r`` zeros before and after ``z``, so every shifted view a product
    reads stays inside it and reads zeros outside the image.
    """

    def __init__(self, images: torch.Tensor, shift: torch.Tensor, radius: int, dilation: int):
        n, ndim = images.shape[0], images.ndim - 1
        planes = images.shape[1] if ndim == 3 else 1
        height, width = images.shape[-2:]
        r, d = radius, dilation
        self.radius, self.dilation, self.ndim = r, d, ndim
        self.n, self.planes, self.height = n, planes, height
        self.tile = _tile_width(r)
        gap = 2 * r
        widths = [_ceil_div(width - phase, d) for phase in range(d)]
        offsets = [gap + sum(w + gap for w in widths[:phase]) for phase in range(d)]
        self.width = _ceil_div(offsets[-1] + widths[-1] + gap, self.tile) * self.tile
        rows = height + 2 * r * d + d
        self.margin = gap
        self.row_stride = planes * n * self.width
        self.buffer = images.new_zeros(2 * self.margin + rows * self.row_stride)
        self.z = self.buffer[self.margin:self.margin + rows * self.row_stride].view(
            rows, planes, n, self.width)
        for phase, (offset, w) in enumerate(zip(offsets, widths)):
            source = images[..., phase::d]
            source = source.permute(2, 1, 0, 3) if ndim == 3 else source.permute(1, 0, 2)[:, None]
            torch.sub(source, shift.reshape(1, 1, n, 1),
                      out=self.z[:height, :, :, offset:offset + w])
        self.rows = _axis_plan([(0, height)], d, r, height)
        self.columns = _axis_plan(list(zip(offsets, widths)), 1, r, self.width)
        self.plane_radius = r if ndim == 3 else 0
        self.plane_axis = _axis_plan([(0, planes)], d, self.plane_radius, planes)

    def plane_lags(self):
        """(lag index, shift in planes, first plane, stop plane) of each plane lag."""
        rp = self.plane_radius
        for index, lag in enumerate(range(-2 * rp, 2 * rp + 1)):
            shift = lag * self.dilation
            p0, p1 = max(0, -shift), min(self.planes, self.planes - shift)
            if p0 < p1:
                yield index, shift, p0, p1

    def strided(self, shape: tuple[int, ...], strides: tuple[int, ...], row: int, plane: int,
                column: int) -> torch.Tensor:
        """A view of the buffer starting at (row, plane, image 0, column)."""
        offset = self.margin + row * self.row_stride + plane * self.n * self.width + column
        return self.buffer.as_strided(shape, strides, offset)


def _to_blocks(values: torch.Tensor, block_ids: np.ndarray, plan: _AxisPlan) -> torch.Tensor:
    """Sum ``values (..., len(block_ids))`` into ``(..., plan.n_blocks)`` float64.

    Positions with id -1 are dropped; the core block is summed in float64 over its
    contiguous ranges, the few other positions through a 0/1 matrix.
    """
    out = values.new_zeros(values.shape[:-1] + (plan.n_blocks,), dtype=torch.float64)
    if plan.core_block >= 0:
        core = np.flatnonzero(block_ids == plan.core_block)
        if core.size:
            breaks = np.flatnonzero(np.diff(core) != 1)
            starts = np.concatenate([[core[0]], core[breaks + 1]])
            stops = np.concatenate([core[breaks] + 1, [core[-1] + 1]])
            for s, e in zip(starts.tolist(), stops.tolist()):
                out[..., plan.core_block] += values[..., s:e].sum(-1, dtype=torch.float64)
    edge = np.flatnonzero((block_ids >= 0) & (block_ids != plan.core_block))
    if edge.size:
        indicator = torch.zeros((edge.size, plan.n_blocks), dtype=torch.float64,
                                device=values.device)
        indicator[torch.arange(edge.size), torch.from_numpy(block_ids[edge])] = 1
        index = torch.from_numpy(edge).to(values.device)
        out += values.index_select(-1, index).to(torch.float64) @ indicator
    return out


# ---------------------------------------------------------------------------- lag products
class _Table:
    """Lag-product sums per (plane block, row block, column block), float64.

    ``values`` has shape ``(n, plane lags, row lags, column lags, Bp, Br, Bc)``: plane
    lag ``(i - 2r)δ``, row lag ``iδ`` (only non-negative: the other half is the same
    products with the taps swapped), column lag ``i - 2r`` in phase units.
    """

    def __init__(self, layout: _Layout):
        r, rp = layout.radius, layout.plane_radius
        self.layout = layout
        self.values = torch.zeros(
            (layout.n, 4 * rp + 1, 2 * r + 1, 4 * r + 1, layout.plane_axis.n_blocks,
             layout.rows.n_blocks, layout.columns.n_blocks),
            dtype=torch.float64, device=layout.buffer.device)

    def add_planes(self, values: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
        """Sum a trailing axis over planes ``[p0, p1)`` into plane blocks."""
        return _to_blocks(values, self.layout.plane_axis.block[p0:p1], self.layout.plane_axis)

    def core_rows(self) -> None:
        """Core rows × all columns: one batched product per (plane lag, row lag)."""
        lay = self.layout
        core = lay.rows.core_range()
        if core is None:
            return
        r, d, tile, width = lay.radius, lay.dilation, lay.tile, lay.width
        c0, c1 = core
        span = c1 - c0
        halo = tile + 4 * r
        column_ids = lay.columns.block
        for lag_index, shift, p0, p1 in lay.plane_lags():
            batch = (p1 - p0) * lay.n * (width // tile)
            left = lay.strided((batch, tile, span), (tile, 1, lay.row_stride), c0, p0, 0)
            for k in range(2 * r + 1):
                right = lay.strided((batch, span, halo), (tile, lay.row_stride, 1),
                                    c0 + k * d, p0 + shift, -2 * r)
                product = torch.bmm(left, right)
                band = product.as_strided((batch, tile, 4 * r + 1),
                                          (tile * halo, halo + 1, 1))
                # (planes, n, column lags, columns)
                band = band.reshape(p1 - p0, lay.n, width // tile, tile, 4 * r + 1)
                band = band.permute(0, 1, 4, 2, 3).reshape(p1 - p0, lay.n, 4 * r + 1, width)
                blocks = _to_blocks(band, column_ids, lay.columns)      # (P', n, Lj, Bc)
                blocks = self.add_planes(blocks.permute(1, 2, 3, 0), p0, p1)  # (n, Lj, Bc, Bp)
                self.values[:, lag_index, k, :, :, lay.rows.core_block, :] += \
                    blocks.permute(0, 1, 3, 2)

    def edge_rows(self) -> None:
        """Edge rows × core columns: one batched product per (group, plane lag, column lag)."""
        lay = self.layout
        core_block = lay.columns.core_block
        if core_block < 0:
            return
        r, d = lay.radius, lay.dilation
        edge = lay.rows.edge_positions(lay.height)
        if edge.size == 0:
            return
        mask = torch.from_numpy(lay.columns.block == core_block).to(lay.buffer)
        breaks = np.flatnonzero(np.diff(edge) != 1)
        groups = zip(np.concatenate([[edge[0]], edge[breaks + 1]]).tolist(),
                     np.concatenate([edge[breaks] + 1, [edge[-1] + 1]]).tolist())
        for g0, g1 in groups:
            count = _ceil_div(g1 - g0, d)          # rows per residue mod δ
            partners = count + 2 * r
            rows = g0 + np.arange(d)[:, None] + d * np.arange(count)[None, :]   # (δ, count)
            row_ids = np.where(rows < g1, lay.rows.block[np.minimum(rows, g1 - 1)], -1)
            masked = lay.z[g0:g0 + d * count] * mask           # core columns only
            for lag_index, shift, p0, p1 in lay.plane_lags():
                planes = p1 - p0
                for j, lag in enumerate(range(-2 * r, 2 * r + 1)):
                    band = self._edge_band(masked, g0, count, partners, shift, p0, p1, lag)
                    # band: (δ, P', n, count, 2r+1) → (P', n, row lags, δ·count)
                    band = band.permute(1, 2, 4, 0, 3).reshape(planes, lay.n, 2 * r + 1, -1)
                    blocks = _to_blocks(band, row_ids.reshape(-1), lay.rows)  # (P', n, Li, Br)
                    blocks = self.add_planes(blocks.permute(1, 2, 3, 0), p0, p1)
                    self.values[:, lag_index, :, j, :, :, core_block] += blocks.permute(0, 1, 3, 2)

    def _edge_band(self, masked: torch.Tensor, g0: int, count: int, partners: int,
                   shift: int, p0: int, p1: int, lag: int) -> torch.Tensor:
        lay = self.layout
        d, width, stride = lay.dilation, lay.width, lay.row_stride
        planes = p1 - p0
        if planes == lay.planes:
            # all residues in one batch: (residue, plane, image) is one stride of `width`
            batch = d * planes * lay.n
            left = masked.as_strided((batch, count, width), (width, d * stride, 1), 0)
            right = lay.strided((batch, partners, width), (width, d * stride, 1), g0, shift, lag)
            product = torch.bmm(left, right.transpose(1, 2))
        else:
            parts = []
            for residue in range(d):
                left = masked.as_strided((planes * lay.n, count, width), (width, d * stride, 1),
                                         residue * stride + p0 * lay.n * width)
                right = lay.strided((planes * lay.n, partners, width), (width, d * stride, 1),
                                    g0 + residue, p0 + shift, lag)
                parts.append(torch.bmm(left, right.transpose(1, 2)))
            product = torch.cat(parts)
        r = lay.radius
        band = product.as_strided((product.shape[0], count, 2 * r + 1),
                                  (count * partners, partners + 1, 1))
        return band.reshape(d, planes, lay.n, count, 2 * r + 1)

    def corners(self) -> None:
        """Edge rows × edge columns: explicit products (float64)."""
        lay = self.layout
        r, d = lay.radius, lay.dilation
        rows = lay.rows.edge_positions(lay.height)
        columns = lay.columns.edge_positions()
        if rows.size == 0 or columns.size == 0:
            return
        device = lay.buffer.device
        as_index = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        partner_rows = as_index(rows[:, None, None, None]
                                + d * np.arange(2 * r + 1)[None, :, None, None])
        partner_columns = as_index(columns[None, None, :, None] + np.arange(-2 * r, 2 * r + 1))
        rows_index, columns_index = as_index(rows[:, None]), as_index(columns[None, :])
        row_ids, column_ids = lay.rows.block[rows], lay.columns.block[columns]
        per_image = rows.size * columns.size * (2 * r + 1) * (4 * r + 1) * lay.planes
        chunk = max(1, _CORNER_ELEMENTS // per_image)
        for i0 in range(0, lay.n, chunk):
            z = lay.z[:, :, i0:i0 + chunk]
            # advanced indices first: (rows, [row lags,] columns, [column lags,] planes, n')
            left = z[rows_index, :, :, columns_index].to(torch.float64)
            right = z[partner_rows, :, :, partner_columns].to(torch.float64)
            for lag_index, shift, p0, p1 in lay.plane_lags():
                a = left[..., p0:p1, :]
                b = right[..., p0 + shift:p1 + shift, :]
                product = a[:, None, :, None] * b        # (Er, Li, Ec, Lj, P', n')
                # → (P', n', Li, Lj, Er, Ec) → column blocks → row blocks → plane blocks
                blocks = _to_blocks(product.permute(4, 5, 1, 3, 0, 2), column_ids, lay.columns)
                blocks = _to_blocks(blocks.transpose(-1, -2), row_ids, lay.rows)
                blocks = self.add_planes(blocks.permute(1, 2, 3, 4, 5, 0), p0, p1)
                # (n', Li, Lj, Bc, Br, Bp) → (n', Li, Lj, Bp, Br, Bc)
                self.values[i0:i0 + chunk, lag_index] += blocks.permute(0, 1, 2, 5, 4, 3)

    def image_blocks(self) -> torch.Tensor:
        """Sums of the shifted images per box, (n, Bp, Br, Bc) float64."""
        lay = self.layout
        z = lay.z[:lay.height].permute(1, 2, 3, 0)                  # (P, n, width, rows)
        blocks = _to_blocks(z, lay.rows.block, lay.rows)           # (P, n, width, Br)
        blocks = _to_blocks(blocks.transpose(-1, -2), lay.columns.block, lay.columns)
        blocks = _to_blocks(blocks.permute(1, 2, 3, 0), lay.plane_axis.block, lay.plane_axis)
        return blocks.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------- box sums
def _box_terms(starts: np.ndarray, plans: list[_AxisPlan], radii: list[int],
               strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat offsets and signs of the prefix-table corners giving each run's box sum.

    ``starts`` (count, axes) are tap coordinates; returns (count, terms) offsets into a
    prefix table whose block axes have the given strides (index ``b`` = blocks ``< b``).
    """
    count = len(starts)
    offsets = np.zeros((count, 1), dtype=np.int64)
    zero = np.zeros((count, 1), dtype=bool)        # the corner reads an all-zero slice
    signs = np.ones((1,), dtype=np.int64)
    for axis, (plan, radius, stride) in enumerate(zip(plans, radii, strides)):
        k = starts[:, axis] + radius
        bounds = np.stack([plan.hi[k], plan.lo[k]], -1).reshape(count, -1)  # (count, 2·pieces)
        sign = np.tile([1, -1], plan.hi.shape[1])
        offsets = (offsets[:, :, None] + stride * bounds[:, None, :]).reshape(count, -1)
        zero = (zero[:, :, None] | (bounds == 0)[:, None, :]).reshape(count, -1)
        signs = (signs[:, None] * sign[None, :]).reshape(-1)
    needed = ~zero.all(0)
    return offsets[:, needed], np.where(zero[:, needed], 0, signs[needed])


def _assemble(table: _Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Window cross products and first sums of the shifted images from the box table."""
    lay = table.layout
    r, rp, ndim = lay.radius, lay.plane_radius, lay.ndim
    values = table.values
    n = values.shape[0]
    prefix = torch.nn.functional.pad(values, (1, 0, 1, 0, 1, 0))
    for dim in (-1, -2, -3):
        prefix = prefix.cumsum(dim)
    plans = [lay.plane_axis, lay.rows, lay.columns]
    box_shape = prefix.shape[-3:]
    box_strides = [box_shape[1] * box_shape[2], box_shape[2], 1]

    axis = np.arange(-r, r + 1)
    taps = np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)
    if ndim == 2:
        taps = np.concatenate([np.zeros((len(taps), 1), dtype=taps.dtype), taps], 1)
    t = len(taps)
    a, b = np.repeat(taps, t, 0), np.tile(taps, (t, 1))
    forward = (b[:, 1] >= a[:, 1])[:, None]
    start = np.where(forward, a, b)
    lag = np.where(forward, b - a, a - b)
    lag_shape = prefix.shape[1:4]
    lag_flat = ((lag[:, 0] + 2 * rp) * lag_shape[1] + lag[:, 1]) * lag_shape[2] + lag[:, 2] + 2 * r
    offsets, signs = _box_terms(start, plans, [rp, r, r], box_strides)
    offsets = offsets + lag_flat[:, None] * int(np.prod(box_shape))
    device = values.device
    flat = prefix.reshape(n, -1)
    index = torch.from_numpy(offsets).to(device)
    cross = (flat[:, index] * torch.from_numpy(np.ascontiguousarray(signs)).to(flat)).sum(-1)

    blocks = torch.nn.functional.pad(table.image_blocks(), (1, 0, 1, 0, 1, 0))
    for dim in (-1, -2, -3):
        blocks = blocks.cumsum(dim)
    offsets, signs = _box_terms(taps, plans, [rp, r, r], box_strides)
    index = torch.from_numpy(offsets).to(device)
    first = (blocks.reshape(n, -1)[:, index]
             * torch.from_numpy(np.ascontiguousarray(signs)).to(blocks)).sum(-1)
    return cross.reshape(n, t, t), first


def lag_window_sums(images: torch.Tensor, radius: int, dilation: int, shift: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums of ``images - shift`` over the valid pixels of one dilation.

    Parameters
    ----------
    images : torch.Tensor of shape (n, H, W) or (n, D, H, W), float32 or float64
        Same-sized images, each side at least ``2 radius dilation + 1``.
    radius, dilation : int
    shift : torch.Tensor of shape (n,), dtype of ``images``
        Subtracted from each image before any product (its mean, say).

    Returns
    -------
    cross : torch.Tensor of shape (n, t, t), float64
    first : torch.Tensor of shape (n, t), float64
        With ``t = (2 radius + 1)^ndim`` taps in C order, centre included; the sums of
        the shifted images (see :mod:`kernelbank.core.sums` for the unshifted ones).
    """
    n = images.shape[0]
    per_image_layout = images[0].numel() * 2
    r, rp = radius, radius if images.ndim == 4 else 0
    lags = (4 * rp + 1) * (2 * r + 1) * (4 * r + 1)
    probe = _Layout(images[:1], shift[:1], radius, dilation)
    per_image_table = lags * probe.plane_axis.n_blocks * probe.rows.n_blocks * \
        probe.columns.n_blocks
    chunk = max(1, min(n, _TABLE_ELEMENTS // per_image_table,
                       _LAYOUT_ELEMENTS // max(1, per_image_layout)))
    crosses, firsts = [], []
    for i0 in range(0, n, chunk):
        layout = _Layout(images[i0:i0 + chunk], shift[i0:i0 + chunk], radius, dilation)
        table = _Table(layout)
        table.core_rows()
        table.edge_rows()
        table.corners()
        cross, first = _assemble(table)
        crosses.append(cross)
        firsts.append(first)
    return torch.cat(crosses), torch.cat(firsts)
