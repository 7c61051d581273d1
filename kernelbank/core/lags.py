r"""Exact window sums from lag products, contracted by matrix products.

For one image ``x``, a window of taps ``o_a = δ a`` (``a ∈ [-r, r]^d``) and the valid
pixels ``V``, every entry of the window's cross-product matrix is a sum of one *lag
product* over a shifted copy of ``V``::

    cross[a, b] = Σ_{p∈V} x(p + o_a) x(p + o_b) = Σ_{q ∈ V + o_a} x(q) x(q + L),   L = o_b − o_a

Only ``((4r+1)^d + 1) / 2`` lags are distinct, and the rectangles ``V + o_a`` share a large
core. Along an axis of ``S`` pixels, tap coordinate ``u − r`` (``u = 0 … 2r``) covers the
*run* ``[δu, S − 2R + δu)`` (``R = rδ``): the core ``[2R, S − 2R)``, the *low* blocks
``m ≥ u`` (``[δm, δm + δ)``, ``m < 2r``, near the start) and the *high* blocks ``m < u``
(``S − 2R + [δm, δm + δ)``, near the end). So every run sum is
``core + Σ low + prefix_u(high − low)``, and each entry of the window sums is a sum of
the lag product over (rows run) × (columns run) [× (planes run)]: float64 algebra on a
few per-block sums. Those come from three kinds of work, one per region of the image:

* **core rows × all columns** (nearly all pixels): for each row lag, one batched matrix
  product over the core rows of column tiles, ``X_tileᵀ · X_tile+halo``, of which the
  band of column lags ``|l| ≤ 2r`` is kept;
* **edge rows × core columns**: for each column lag, one batched product over the
  columns of the ``4R`` edge rows against their partner rows;
* **edge rows × edge columns** (the four corners): explicit products, with the images
  innermost so that they vectorise.

Columns are dilated by deinterleaving: the ``δ`` column phases of the image are laid side
by side, so column lags are ``|l| ≤ 2r`` in phase units and no product pairs columns the
window never pairs. Rows and planes are used as they
are, with lags that are multiples of ``δ``. Images smaller than this structure needs
(an axis shorter than ``4R``) are summed directly from their stack of shifted windows.

Channels: for images of ``C`` channels the taps are ``(c, o_a)`` (channel-major) and every
entry is a lag product of two channels, ``Σ x_c(q) x_{c'}(q + L)``. Each channel is laid
out as a one-channel batch (channels outermost), and every region's products run once
per ordered channel pair ``(c, c')``: ``C²`` times the one-channel work and nothing else
(swapping the taps of a cross-channel product swaps its channels, so both orders are
needed). One channel is the case ``C = 1``, operation for operation.

Notes
-----
Products are formed in the images' dtype; within a block the matrix products accumulate
in that dtype (as the strip Grams of :mod:`kernelbank.core.responses` do) and everything
after is float64. The caller passes a shift (each image's mean) that is subtracted when
the layout is filled, so a large offset costs no digits in float32 products;
:func:`kernelbank.core.sums.window_sums` adds its exact contribution back in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["lag_window_sums"]

# Elements of the image layout (or of the run table, all lags × runs) per group of images:
# bounded so the working set stays in cache and memory stays flat for any batch.
_LAYOUT_ELEMENTS = 1 << 18
_TABLE_ELEMENTS = 2 << 20
# Products summed in the images' dtype before float64 takes over (rows × columns of one
# matrix-product block): the span of one strip Gram of kernelbank.core.responses.
_SPAN = 1 << 17


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tile_width(radius: int) -> int:
    """Columns per matrix-product tile: wide enough to amortise its 4r-column halo
    (fastest measured: 8 for radius ≤ 2, 16 for radius 4)."""
    return max(8, 4 * radius)


# ---------------------------------------------------------------------------- run sums
def _runs(low: torch.Tensor, high: torch.Tensor, dim: int,
          core: torch.Tensor | None = None) -> torch.Tensor:
    """Sums over the ``2r + 1`` runs of an axis from its block sums, float64.

    ``low`` and ``high`` hold the ``2r`` low and high blocks along ``dim``; run ``u``
    is ``core + Σ_{m ≥ u} low[m] + Σ_{m < u} high[m]`` (``core`` broadcasts).
    """
    low, high = low.to(torch.float64), high.to(torch.float64)
    steps = (high - low).cumsum(dim)
    runs = torch.cat([torch.zeros_like(steps.narrow(dim, 0, 1)), steps], dim)
    runs += low.sum(dim, keepdim=True)
    return runs if core is None else runs + core.unsqueeze(dim)


@dataclass(frozen=True)
class _Axis:
    """Layout positions of one axis: the core ranges and the low/high blocks.

    ``low`` and ``high`` have shape (2r, g): block ``m`` is the ``g`` positions
    ``low[m]`` (the δ rows of a block, or one column of each of the δ phases).
    """

    core: tuple[tuple[int, int], ...]
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def rows(cls, length: int, radius: int, dilation: int) -> "_Axis":
        reach = radius * dilation
        blocks = np.arange(2 * radius)[:, None] * dilation + np.arange(dilation)[None, :]
        core = ((2 * reach, length - 2 * reach),) if length > 4 * reach else ()
        return cls(core, blocks, length - 2 * reach + blocks)

    @classmethod
    def phases(cls, offsets: list[int], widths: list[int], radius: int) -> "_Axis":
        m = np.arange(2 * radius)[:, None]
        low = np.array(offsets)[None, :] + m
        high = np.array([o + w - 2 * radius for o, w in zip(offsets, widths)])[None, :] + m
        core = tuple((o + 2 * radius, o + w - 2 * radius)
                     for o, w in zip(offsets, widths) if w > 4 * radius)
        return cls(core, low, high)

    def membership(self, extent: int) -> np.ndarray:
        """(extent, 2r + 1) 0/1 matrix: is layout position ``p`` in run ``u``."""
        member = np.zeros((extent, self.low.shape[0] + 1))
        for start, stop in self.core:
            member[start:stop] = 1
        u = np.arange(self.low.shape[0] + 1)
        for m in range(self.low.shape[0]):
            member[self.low[m]] = m >= u
            member[self.high[m]] = m < u
        return member

    def runs(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        """Run sums of ``values`` along ``dim`` (indexed by layout position), float64."""
        values = values.movedim(dim, -1)
        core = values.new_zeros(values.shape[:-1], dtype=torch.float64)
        for start, stop in self.core:
            core += values[..., start:stop].sum(-1, dtype=torch.float64)
        blocks = []
        for positions in (self.low, self.high):
            index = torch.from_numpy(positions.reshape(-1)).to(values.device)
            picked = values.index_select(-1, index).to(torch.float64)
            blocks.append(picked.reshape(values.shape[:-1] + positions.shape).sum(-1))
        return _runs(blocks[0], blocks[1], -1, core).movedim(-1, dim)


def _plane_runs(values: torch.Tensor, dim: int, axis: _Axis | None, planes: int,
                p0: int, p1: int) -> torch.Tensor:
    """Run sums over planes of values given for planes ``[p0, p1)`` (2-D: one plane)."""
    if axis is None:
        return values.to(torch.float64)
    if (p0, p1) != (0, planes):
        shape = list(values.shape)
        shape[dim] = planes
        full = values.new_zeros(shape)
        full.narrow(dim, p0, p1 - p0).copy_(values)
        values = full
    return axis.runs(values, dim)


# ---------------------------------------------------------------------------- layout
class _Layout:
    """The shifted images copied once into the arrangement the matrix products read.

    ``z`` has shape ``(channels, rows, planes, n, width)``: channels outermost, each laid
    out as a one-channel batch with image rows outermost (the contraction axis of the
    core products), then planes (volumes) and images, then the column phases side by
    side, the width rounded up to whole tiles with zeros. ``2R + δ`` zero rows follow
    each channel's image rows and the flat ``buffer`` has ``2r`` zeros before and after
    ``z``, so every shifted view a product reads stays inside it.
    """

    def __init__(self, images: torch.Tensor, shift: torch.Tensor, radius: int, dilation: int):
        """``images`` (n, channels, *spatial), ``shift`` (n, channels)."""
        n, channels, ndim = images.shape[0], images.shape[1], images.ndim - 2
        planes = images.shape[2] if ndim == 3 else 1
        height, width = images.shape[-2:]
        r, d = radius, dilation
        self.radius, self.dilation, self.ndim = r, d, ndim
        self.n, self.channels, self.planes, self.height = n, channels, planes, height
        self.tile = _tile_width(r)
        self.widths = [_ceil_div(width - phase, d) for phase in range(d)]
        self.offsets = [sum(self.widths[:phase]) for phase in range(d)]
        self.width = _ceil_div(width, self.tile) * self.tile
        rows = height + 2 * r * d + d
        self.margin = 2 * r
        self.row_stride = planes * n * self.width
        self.channel_stride = rows * self.row_stride
        size = channels * self.channel_stride
        self.buffer = images.new_empty(2 * self.margin + size)
        self.z = self.buffer[self.margin:self.margin + size].view(
            channels, rows, planes, n, self.width)
        # Zeros wherever no pixel goes. The phases need no zeros between them: a product
        # reaching past a phase's end only enters (run, lag) pairs that no tap pair
        # reads, which only requires it to be finite.
        self.buffer[:self.margin].zero_()
        self.buffer[self.margin + size:].zero_()
        self.z[:, height:].zero_()
        self.z[:, :height, :, :, width:].zero_()
        for c in range(channels):
            self._fill(self.z[c], images[:, c], shift[:, c].reshape(1, 1, n, 1))
        self.row_axis = _Axis.rows(height, r, d)
        self.column_axis = _Axis.phases(self.offsets, self.widths, r)
        self.plane_axis = _Axis.rows(planes, r, d) if ndim == 3 else None
        self.plane_radius = r if ndim == 3 else 0
        self._columns = torch.from_numpy(self.column_axis.membership(self.width)).to(
            images.device, images.dtype)

    def _fill(self, z: torch.Tensor, images: torch.Tensor, shift: torch.Tensor) -> None:
        """Copy one channel's images (n, *spatial), less ``shift``, into its ``z``."""
        n, planes, height, d = self.n, self.planes, self.height, self.dilation
        width = images.shape[-1]
        if width % d == 0:
            # equal phases: one pass reads the images in order
            w = width // d
            source = images.reshape(n, planes, height, w, d).permute(2, 1, 0, 4, 3)
            torch.sub(source, shift[..., None],
                      out=z[:height, :, :, :width].unflatten(-1, (d, w)))
        else:
            for offset, w, phase in zip(self.offsets, self.widths, range(d)):
                source = images.reshape(n, planes, height, width)[..., phase::d]
                torch.sub(source.permute(2, 1, 0, 3), shift,
                          out=z[:height, :, :, offset:offset + w])

    def pairs(self) -> list[tuple[int, int]]:
        """Every ordered (left, right) channel pair; (0, 0) alone for one channel."""
        return [(a, b) for a in range(self.channels) for b in range(self.channels)]

    def column_membership(self) -> torch.Tensor:
        """(width, Sc) 0/1 matrix of columns in each columns run, images' dtype."""
        return self._columns

    def plane_lags(self):
        """(lag index, shift in planes, first plane, stop plane) of each plane lag."""
        rp = self.plane_radius
        for index, lag in enumerate(range(-2 * rp, 2 * rp + 1)):
            shift = lag * self.dilation
            p0, p1 = max(0, -shift), min(self.planes, self.planes - shift)
            if p0 < p1:
                yield index, shift, p0, p1

    def strided(self, shape: tuple[int, ...], strides: tuple[int, ...], row: int, plane: int,
                column: int, channel: int = 0) -> torch.Tensor:
        """A view of the buffer starting at (channel, row, plane, image 0, column)."""
        offset = (self.margin + channel * self.channel_stride + row * self.row_stride
                  + plane * self.n * self.width + column)
        return self.buffer.as_strided(shape, strides, offset)


# ---------------------------------------------------------------------------- the regions
class _RunSums:
    """Lag-product sums per run of each axis, from the three regions of the image.

    Lags are indexed as plane lag ``(i − 2rp)δ``, row lag ``iδ`` (only non-negative:
    the other half is the same products with the two taps swapped) and column lag
    ``i − 2r`` in phase units; runs ``S·`` as in the module docstring. Every table
    starts with the image axis and the (left, right) channel pair ``Ca, Cb`` of the
    products ``Σ x_left(q) x_right(q + L)``.

    Attributes
    ----------
    core : (n, Ca, Cb, plane lags, Li, Sc, Lj, Sp) float64
        Core rows (in every rows run) × the columns of each columns run.
    edge : (n, Ca, Cb, plane lags, Sr, Li, Lj, Sp) float64
        Edge rows of each rows run × core columns (in every columns run).
    corners : (n, Ca, Cb, plane lags, Sr, Li, Sc, Lj, Sp) float64
        Edge rows × edge columns of each (rows run, columns run).
    """

    def __init__(self, layout: _Layout):
        r, rp = layout.radius, layout.plane_radius
        self.layout = layout
        lags, runs = (4 * rp + 1, 2 * r + 1, 4 * r + 1), (2 * r + 1, 2 * rp + 1)
        new = layout.buffer.new_zeros
        pairs = (layout.n, layout.channels, layout.channels)
        self.core = new(pairs + (lags[0], lags[1], runs[0], lags[2], runs[1]),
                        dtype=torch.float64)
        self.edge = new(pairs + (lags[0], runs[0], lags[1], lags[2], runs[1]),
                        dtype=torch.float64)
        self.corners = new(pairs + (lags[0], runs[0], lags[1], runs[0], lags[2], runs[1]),
                           dtype=torch.float64)
        for ca, cb in layout.pairs():
            self._core_rows(ca, cb)
            self._edge_rows(ca, cb)
            self._corners(ca, cb)

    def _plane_runs(self, values: torch.Tensor, dim: int, p0: int, p1: int) -> torch.Tensor:
        lay = self.layout
        return _plane_runs(values, dim, lay.plane_axis, lay.planes, p0, p1)

    def _core_rows(self, ca: int, cb: int) -> None:
        """Core rows × all columns: one batched product per (row block, plane lag, row lag)."""
        lay = self.layout
        if not lay.row_axis.core:
            return
        (c0, c1), = lay.row_axis.core
        r, d, tile, width = lay.radius, lay.dilation, lay.tile, lay.width
        halo = tile + 4 * r
        member = lay.column_membership().T                       # (Sc, width)
        step = max(1, _SPAN // width)
        for lag_index, shift, p0, p1 in lay.plane_lags():
            planes = p1 - p0
            batch = planes * lay.n * (width // tile)
            # per column: (row lags, P'·n·tiles, tile, column lags)
            bands = lay.buffer.new_empty((2 * r + 1, batch, tile, 4 * r + 1))
            total = 0
            for b0 in range(c0, c1, step):
                span = min(c1, b0 + step) - b0
                left = lay.strided((batch, tile, span), (tile, 1, lay.row_stride), b0, p0, 0,
                                   ca)
                for k in range(2 * r + 1):
                    right = lay.strided((batch, span, halo), (tile, lay.row_stride, 1),
                                        b0 + k * d, p0 + shift, -2 * r, cb)
                    product = torch.bmm(left, right)
                    bands[k].copy_(product.as_strided((batch, tile, 4 * r + 1),
                                                      (tile * halo, halo + 1, 1)))
                runs = torch.matmul(member, bands.view((2 * r + 1) * planes * lay.n, width, -1))
                total = total + runs.to(torch.float64)            # (Li·P'·n, Sc, Lj)
            runs = self._plane_runs(total.view(2 * r + 1, planes, lay.n, 2 * r + 1, 4 * r + 1),
                                    1, p0, p1)                       # (Li, Sp, n, Sc, Lj)
            self.core[:, ca, cb, lag_index] = runs.permute(2, 0, 3, 4, 1)

    def _edge_rows(self, ca: int, cb: int) -> None:
        """Edge rows × core columns: one batched product per (group, plane lag, column lag)."""
        lay = self.layout
        if not lay.column_axis.core:
            return
        r, R = lay.radius, lay.radius * lay.dilation
        mask = torch.zeros(lay.width, dtype=lay.buffer.dtype, device=lay.buffer.device)
        for start, stop in lay.column_axis.core:
            mask[start:stop] = 1
        for lag_index, shift, p0, p1 in lay.plane_lags():
            groups = []
            for g0 in (0, lay.height - 2 * R):
                masked = lay.z[ca, g0:g0 + 2 * R] * mask        # core columns only
                bands = [self._edge_band(masked, cb, g0, shift, p0, p1, lag)
                         for lag in range(-2 * r, 2 * r + 1)]
                # (Lj, δ, P', n, 2r, Li) → sum the δ rows of each block
                groups.append(torch.stack(bands).sum(1))
            runs = _runs(groups[0], groups[1], 3)                     # (Lj, P', n, Sr, Li)
            runs = self._plane_runs(runs, 1, p0, p1)                   # (Lj, Sp, n, Sr, Li)
            self.edge[:, ca, cb, lag_index] = runs.permute(2, 3, 4, 0, 1)

    def _edge_band(self, masked: torch.Tensor, channel: int, g0: int, shift: int, p0: int,
                   p1: int, lag: int) -> torch.Tensor:
        """(δ, P', n, 2r, 2r+1): rows ``g0 + ρ + δm`` against rows ``+ δk`` of ``channel``,
        column lag ``lag``."""
        lay = self.layout
        r, d, width, stride = lay.radius, lay.dilation, lay.width, lay.row_stride
        count, partners, planes = 2 * r, 4 * r, p1 - p0
        if planes == lay.planes:
            # (residue, plane, image) is one stride of `width`: all residues in one batch
            batch = d * planes * lay.n
            left = masked.as_strided((batch, count, width), (width, d * stride, 1), 0)
            right = lay.strided((batch, partners, width), (width, d * stride, 1), g0, 0, lag,
                                channel)
            product = torch.bmm(left, right.transpose(1, 2))
        else:
            parts = []
            for residue in range(d):
                left = masked.as_strided((planes * lay.n, count, width), (width, d * stride, 1),
                                         residue * stride + p0 * lay.n * width)
                right = lay.strided((planes * lay.n, partners, width), (width, d * stride, 1),
                                    g0 + residue, p0 + shift, lag, channel)
                parts.append(torch.bmm(left, right.transpose(1, 2)))
            product = torch.cat(parts)
        band = product.as_strided((product.shape[0], count, 2 * r + 1),
                                  (count * partners, partners + 1, 1))
        return band.reshape(d, planes, lay.n, count, 2 * r + 1)

    def _corners(self, ca: int, cb: int) -> None:
        """Edge rows × edge columns: explicit products, images innermost."""
        lay = self.layout
        r, d, R = lay.radius, lay.dilation, lay.radius * lay.dilation
        device, dtype = lay.buffer.device, lay.buffer.dtype
        # rows: group (top, bottom) × residue × 4r block rows (2r + their 2r partners)
        rows = (np.array([0, lay.height - 2 * R])[:, None, None] + np.arange(d)[None, :, None]
                + d * np.arange(4 * r)[None, None, :])
        # columns: side (left, right) × phase × 6r (2r + the 2r-column halo on each side)
        starts = np.array([[o - 2 * r for o in lay.offsets],
                           [o + w - 4 * r for o, w in zip(lay.offsets, lay.widths)]])
        columns = starts[:, :, None] + np.arange(6 * r)
        # (group, residue, side, phase, 4r, 6r, planes·n), images innermost, of the left
        # and the right channel; the views may reach past a row's end, which only reads
        # finite neighbours
        regions = {}
        for channel in {ca, cb}:
            region = lay.buffer.new_empty((2, d, 2, d, 4 * r, 6 * r, lay.planes * lay.n))
            for group, side, phase in np.ndindex(2, 2, d):
                offset = lay.margin + channel * lay.channel_stride \
                    + int(rows[group, 0, 0]) * lay.row_stride + int(columns[side, phase, 0])
                region[group, :, side, phase].copy_(lay.buffer.as_strided(
                    (d, 4 * r, 6 * r, lay.planes * lay.n),
                    (lay.row_stride, d * lay.row_stride, 1, lay.width), offset))
            regions[channel] = region
        region, partner = regions[ca], regions[cb]
        st = region.stride()
        # run sums of an axis's 2r low blocks (m ≥ u) and 2r high blocks (m < u)
        u = np.arange(2 * r + 1)[:, None]
        m = np.arange(2 * r)[None, :]
        runs = [torch.from_numpy((m >= u) * 1.0).to(device, dtype),
                torch.from_numpy((m < u) * 1.0).to(device, dtype)]
        for lag_index, shift, p0, p1 in lay.plane_lags():
            inner = (p1 - p0) * lay.n
            shape = (2 * r, 2 * r + 1, 2 * r, 4 * r + 1, inner)     # (m, Li, m', Lj, ·)
            products = region.new_empty(shape)
            expanded = region.new_empty((2 * r, 1, 2 * r, 4 * r + 1, inner))
            both = None                                          # (Sc, Sr, Li, Lj, ·)
            # one corner (group of rows × side of columns) at a time: stays in cache
            for group, side in np.ndindex(2, 2):
                for residue, phase in np.ndindex(d, d):
                    base = (region.storage_offset() + group * st[0] + residue * st[1]
                            + side * st[2] + phase * st[3])
                    a = region.as_strided((2 * r, 1, 2 * r, 4 * r + 1, inner),
                                          (st[4], 0, st[5], 0, 1),
                                          base + 2 * r * st[5] + p0 * lay.n)
                    b = partner.as_strided(shape, (st[4], st[4], st[5], st[5], 1),
                                           base + (p0 + shift) * lay.n)
                    # expanded once along the column lags, so that every operand runs
                    # contiguously over (column lag, image) and the product vectorises
                    if residue == phase == 0:
                        torch.mul(b, expanded.copy_(a), out=products)
                    else:
                        products.addcmul_(b, expanded.copy_(a))
                rows_run = (runs[group] @ products.view(2 * r, -1)).view(
                    (2 * r + 1) * (2 * r + 1), 2 * r, -1)       # (Sr·Li, m', Lj·inner)
                part = runs[side] @ rows_run.transpose(0, 1).reshape(2 * r, -1)
                both = part if both is None else both.add_(part)
            both = both.to(torch.float64).view(2 * r + 1, 2 * r + 1, 2 * r + 1, 4 * r + 1,
                                               p1 - p0, lay.n)
            if lay.plane_axis is not None:
                both = self._plane_runs(both, 4, p0, p1)
            # (Sc, Sr, Li, Lj, Sp, n) → (n, Sr, Li, Sc, Lj, Sp)
            self.corners[:, ca, cb, lag_index] = both.permute(5, 1, 2, 0, 3, 4)

    def image_runs(self) -> torch.Tensor:
        """Sums of the shifted images per (Sr, Sc, Sp) box, (n, channels, Sr, Sc, Sp), float64."""
        lay = self.layout
        rows = torch.from_numpy(lay.row_axis.membership(lay.height).T).to(lay.buffer)
        step = max(1, _SPAN // lay.width)
        out = []
        for c in range(lay.channels):
            z = lay.z[c, :lay.height].reshape(lay.height, -1)
            boxes = 0
            for b0 in range(0, lay.height, step):
                part = rows[:, b0:b0 + step] @ z[b0:b0 + step]           # (Sr, P·n·width)
                part = part.view(-1, lay.width) @ lay.column_membership()
                boxes = boxes + part.to(torch.float64)
            boxes = boxes.view(2 * lay.radius + 1, lay.planes, lay.n, 2 * lay.radius + 1)
            boxes = _plane_runs(boxes, 1, lay.plane_axis, lay.planes, 0, lay.planes)
            out.append(boxes.permute(2, 0, 3, 1))
        return torch.stack(out, 1)


# ---------------------------------------------------------------------------- assembly
def _taps(radius: int, ndim: int) -> np.ndarray:
    """Window taps as (plane, row, column) coordinates in C order, shape (t, 3)."""
    axis = np.arange(-radius, radius + 1)
    taps = np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)
    if ndim == 2:
        taps = np.concatenate([np.zeros((len(taps), 1), dtype=taps.dtype), taps], 1)
    return taps


def _gather(table: torch.Tensor, index: tuple[np.ndarray, ...]) -> torch.Tensor:
    """Entries ``table[:, index]`` of a table whose first axis is the image, (n, count)."""
    flat = np.ravel_multi_index(index, table.shape[1:])
    return table.reshape(table.shape[0], -1).index_select(
        1, torch.from_numpy(flat).to(table.device))


def _assemble(sums: _RunSums) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross products and first sums of the shifted images (channel-major taps)."""
    lay = sums.layout
    r, rp, n, channels = lay.radius, lay.plane_radius, lay.n, lay.channels
    spatial = _taps(r, lay.ndim)
    t = channels * len(spatial)
    taps = np.tile(spatial, (channels, 1))
    channel = np.repeat(np.arange(channels), len(spatial))
    first_tap, second_tap = np.repeat(np.arange(t), t), np.tile(np.arange(t), t)
    a, b = taps[first_tap], taps[second_tap]
    ca, cb = channel[first_tap], channel[second_tap]
    # one canonical direction per unordered pair, so (a, b) and (b, a) read the same
    # sum: row lag > 0, or row lag 0 and column lag > 0, or both 0 and plane lag > 0, or
    # no lag at all and the channels in order; swapping the taps swaps the channels
    step = b - a
    forward = ((step[:, 1] > 0) | ((step[:, 1] == 0) & (
        (step[:, 2] > 0) | ((step[:, 2] == 0) & (
            (step[:, 0] > 0) | ((step[:, 0] == 0) & (ca <= cb)))))))
    left, right = np.where(forward, ca, cb), np.where(forward, cb, ca)
    forward = forward[:, None]
    sp, sr, sc = (np.where(forward, a, b) + np.array([rp, r, r])).T    # run of each axis
    ld, li, lj = (np.where(forward, b - a, a - b) + np.array([2 * rp, 0, 2 * r])).T
    cross = _gather(sums.corners, (left, right, ld, sr, li, sc, lj, sp))
    cross += _gather(sums.core, (left, right, ld, li, sc, lj, sp))
    cross += _gather(sums.edge, (left, right, ld, sr, li, lj, sp))
    first = _gather(sums.image_runs(), (channel, taps[:, 1] + r, taps[:, 2] + r,
                                        taps[:, 0] + rp))
    return cross.view(n, t, t), first


def _direct_sums(images: torch.Tensor, radius: int, dilation: int, shift: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums from the explicit stack of shifted windows (images too small for runs),
    of ``images`` (n, channels, *spatial) less ``shift`` (n, channels)."""
    ndim = images.ndim - 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in images.shape[2:]]
    shifted = images.to(torch.float64) - shift.to(torch.float64).reshape(
        shift.shape + (1,) * ndim)
    taps = _taps(radius, ndim)[:, 3 - ndim:] * dilation
    views = torch.stack([shifted[(slice(None), c) + tuple(
        slice(reach + o, reach + o + v) for o, v in zip(offset, valid))].reshape(len(images), -1)
        for c in range(images.shape[1]) for offset in taps.tolist()], 1)
    return views @ views.transpose(1, 2), views.sum(-1)


def lag_window_sums(images: torch.Tensor, radius: int, dilation: int, shift: torch.Tensor,
                    channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums of ``images - shift`` over the valid pixels of one dilation.

    Parameters
    ----------
    images : torch.Tensor of shape (n, [channels,] H, W) or (n, [channels,] D, H, W)
        Same-sized images, float32 or float64, each side at least ``2 radius dilation
        + 1``; the channel axis is there only when ``channels > 1``.
    radius, dilation : int
    shift : torch.Tensor of shape (n,) or (n, channels), dtype of ``images``
        Subtracted from each image (channel) before any product (its mean, say).
    channels : int, default=1

    Returns
    -------
    cross : torch.Tensor of shape (n, T, T), float64
    first : torch.Tensor of shape (n, T), float64
        With ``T = channels · t`` taps, channel-major, each channel's ``t = (2 radius +
        1)^ndim`` in C order, centre included; the sums of the shifted images (see
        :mod:`kernelbank.core.sums` for the unshifted ones).
    """
    if channels == 1:
        images, shift = images[:, None], shift.reshape(-1, 1)
    r, d, ndim = radius, dilation, images.ndim - 2
    reach = r * d
    *lead, height, width = images.shape[2:]
    if min(lead + [height]) < 4 * reach or width // d < 4 * r:
        return _direct_sums(images, r, d, shift)
    rp = r if ndim == 3 else 0
    table = channels ** 2 * (4 * rp + 1) * (2 * rp + 1) * (2 * r + 1) ** 3 * (4 * r + 1)
    # the layout budget is per channel: a pair of channels is what one product reads
    chunk = max(1, min(_LAYOUT_ELEMENTS // images[0, 0].numel(), _TABLE_ELEMENTS // table))
    crosses, firsts = [], []
    for i0 in range(0, images.shape[0], chunk):
        sums = _RunSums(_Layout(images[i0:i0 + chunk], shift[i0:i0 + chunk], r, d))
        cross, first = _assemble(sums)
        crosses.append(cross)
        firsts.append(first)
    return torch.cat(crosses), torch.cat(firsts)
