r"""Private engine: exact window sums from lag products, contracted by matrix products.

For one image ``x``, taps ``o_a = δ a`` (``a ∈ [-r, r]^d``) and the valid pixels ``V``,
every entry of the window's cross products is a sum of one *lag product* over a shifted
copy of ``V``::

    cross[a, b] = Σ_{p∈V} x(p + o_a) x(p + o_b) = Σ_{q ∈ V + o_a} x(q) x(q + L),   L = o_b − o_a

Only ``((4r+1)^d + 1) / 2`` lags are distinct. Along an axis of ``S`` pixels, tap
coordinate ``u`` (``0 … 2r``) covers the *run* ``[δu, S − 2R + δu)`` (``R = rδ``): the
core ``[2R, S − 2R)``, the *low* blocks ``m ≥ u`` near the start and the *high* blocks
``m < u`` near the end, so every run sum is ``core + Σ low + prefix_u(high − low)`` —
sums of sums, never a difference of large prefix sums. The box sums come from three
kinds of work, one per region of the image:

* **core rows × all columns** (nearly all pixels): per row lag, one batched matrix
  product over the core rows of column tiles, ``X_tileᵀ · X_tile+halo``, of which the
  band of column lags ``|l| ≤ 2r`` is kept, then one product with the 0/1 matrix of
  the columns of each run;
* **edge rows × core columns**: per column lag, one batched product over the columns
  of the ``4R`` edge rows against their partner rows;
* **edge rows × edge columns** (the four corners): explicit products, images innermost
  so they vectorise, reduced to runs by two small matrix products.

Columns are dilated by deinterleaving (the ``δ`` column phases laid side by side), so
no product pairs columns the window never pairs; volumes take every plane lag in turn.
Images too small for this structure are summed from their stack of shifted windows.
For ``C`` channels the taps are ``(c, o_a)`` (channel-major) and the three regions'
products are taken for every ordered channel pair: ``C²`` times the one-channel work.

Products are formed in the images' dtype, a float32 product summing at most ``_SPAN``
terms before float64 takes over; the caller's shift (each image's mean) is subtracted
when the layout is filled, so a large offset costs no digits. Every operation is a
device-agnostic torch operation: this is the reference engine and the GPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["lag_window_sums"]

# Elements of the image layout (or of the run table, all lags × runs) per group of images:
# bounded so the working set stays in cache and memory stays flat for any batch.
_LAYOUT_ELEMENTS = 1 << 19
_TABLE_ELEMENTS = 2 << 20
# Elements of one corner's products per pass (bounds memory for large groups).
_CORNER_ELEMENTS = 1 << 18
# Products summed in the images' dtype before float64 takes over (rows × columns of one
# matrix-product block): the span of one strip Gram of kernelbank.core._strips.
_SPAN = 1 << 17


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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


# ---------------------------------------------------------------------------- layout
def _taps(radius: int, ndim: int) -> np.ndarray:
    """Window taps as (plane, row, column) coordinates in C order, shape (t, 3)."""
    axis = np.arange(-radius, radius + 1)
    taps = np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)
    if ndim == 2:
        taps = np.concatenate([np.zeros((len(taps), 1), dtype=taps.dtype), taps], 1)
    return taps


class _Plan:
    """Everything that depends on the image shape but not on the pixels (once per call).

    The layout (:class:`_Layout`) has ``width`` columns: the ``δ`` column phases side by
    side (phase ``φ`` at ``offsets[φ]``, ``widths[φ]`` columns), rounded up to whole
    tiles; ``rows`` rows: the image's, then ``2R + δ`` zero rows.
    """

    def __init__(self, shape: tuple[int, ...], radius: int, dilation: int,
                 dtype: torch.dtype, device: torch.device):
        r, d, ndim = radius, dilation, len(shape)
        self.radius, self.dilation, self.ndim = r, d, ndim
        self.planes = shape[0] if ndim == 3 else 1
        self.height, image_width = shape[-2:]
        # columns per product tile: enough to amortise the 4r-column halo (fastest
        # measured: 8 for radius ≤ 2, 16 for radius 4)
        self.tile = max(8, 4 * r)
        self.widths = [_ceil_div(image_width - phase, d) for phase in range(d)]
        self.offsets = [sum(self.widths[:phase]) for phase in range(d)]
        self.image_width = image_width
        self.width = _ceil_div(image_width, self.tile) * self.tile
        self.rows = self.height + 2 * r * d + d
        self.margin = 2 * r
        self.row_axis = _Axis.rows(self.height, r, d)
        self.column_axis = _Axis.phases(self.offsets, self.widths, r)
        self.plane_axis = _Axis.rows(self.planes, r, d) if ndim == 3 else None
        self.plane_radius = r if ndim == 3 else 0

        def constant(array: np.ndarray, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device, kind)

        # 0/1 run membership of every column and row, in the images' dtype
        self.column_runs = constant(self.column_axis.membership(self.width).T)   # (Sc, width)
        self.row_runs = constant(self.row_axis.membership(self.height).T)        # (Sr, rows)
        self.core_columns = self.column_runs.amin(0)       # in every columns run: the core
        # corners: rows group (top, bottom) × residue × 4r (2r rows + 2r partner rows);
        # columns side (left, right) × phase × 6r (2r columns + 2r halo each side)
        reach = r * d
        self.corner_rows = (np.array([0, self.height - 2 * reach])[:, None, None]
                            + np.arange(d)[None, :, None] + d * np.arange(4 * r))
        starts = np.array([[o - 2 * r for o in self.offsets],
                           [o + w - 4 * r for o, w in zip(self.offsets, self.widths)]])
        self.corner_columns = starts[:, :, None] + np.arange(6 * r)
        u, m = np.arange(2 * r + 1)[:, None], np.arange(2 * r)[None, :]
        self.block_runs = (constant(m >= u), constant(m < u))       # low, high blocks
        self._gather_indices(device)

    def plane_lags(self):
        """(lag index, shift in planes, first plane, stop plane) of each plane lag."""
        rp = self.plane_radius
        for index, lag in enumerate(range(-2 * rp, 2 * rp + 1)):
            shift = lag * self.dilation
            p0, p1 = max(0, -shift), min(self.planes, self.planes - shift)
            if p0 < p1:
                yield index, shift, p0, p1

    def plane_runs(self, values: torch.Tensor, dim: int, p0: int = 0,
                   p1: int | None = None) -> torch.Tensor:
        """Run sums over planes of values given for planes ``[p0, p1)`` (2-D: one plane)."""
        if self.plane_axis is None:
            return values.to(torch.float64)
        if (p0, p1) not in ((0, None), (0, self.planes)):
            shape = list(values.shape)
            shape[dim] = self.planes
            full = values.new_zeros(shape)
            full.narrow(dim, p0, p1 - p0).copy_(values)
            values = full
        return self.plane_axis.runs(values, dim)

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the run tables of :class:`_RunSums`, without the image axis."""
        r, rp = self.radius, self.plane_radius
        ld, li, lj, s, sp = 4 * rp + 1, 2 * r + 1, 4 * r + 1, 2 * r + 1, 2 * rp + 1
        return {"core": (ld, li, s, lj, sp), "edge": (ld, s, li, lj, sp),
                "corners": (ld, s, li, s, lj, sp), "image": (s, s, sp)}

    def _gather_indices(self, device: torch.device) -> None:
        """Rows of each run table holding each (tap, tap) entry and each tap's first sum."""
        r, rp = self.radius, self.plane_radius
        taps = _taps(r, self.ndim)
        t = len(taps)
        a, b = np.repeat(taps, t, 0), np.tile(taps, (t, 1))
        # one canonical direction per unordered pair, so (a, b) and (b, a) read the same
        # sum: row lag > 0, or row lag 0 and column lag > 0, or both 0 and plane lag >= 0
        step = b - a
        forward = ((step[:, 1] > 0) | ((step[:, 1] == 0) & (
            (step[:, 2] > 0) | ((step[:, 2] == 0) & (step[:, 0] >= 0)))))[:, None]
        sp, sr, sc = (np.where(forward, a, b) + np.array([rp, r, r])).T    # run per axis
        ld, li, lj = (np.where(forward, b - a, a - b) + np.array([2 * rp, 0, 2 * r])).T
        shapes = self.table_shapes()

        def rows(name: str, index: tuple[np.ndarray, ...]) -> torch.Tensor:
            return torch.from_numpy(np.ravel_multi_index(index, shapes[name])).to(device)

        self.gather = {"corners": rows("corners", (ld, sr, li, sc, lj, sp)),
                       "core": rows("core", (ld, li, sc, lj, sp)),
                       "edge": rows("edge", (ld, sr, li, lj, sp)),
                       "image": rows("image", (taps[:, 1] + r, taps[:, 2] + r, taps[:, 0] + rp))}
        self.n_taps = t
        # per (tap, tap): whether the entry is read in the direction asked (else the taps,
        # and with channels the channels, are swapped), and whether the taps are one
        self.forward = torch.from_numpy(forward[:, 0]).to(device)
        self.same_tap = torch.from_numpy((step == 0).all(1)).to(device)


class _Layout:
    """The shifted images copied once into the arrangement the matrix products read.

    ``z`` has shape ``(rows, planes, n, width)`` (see :class:`_Plan`): image rows
    outermost (the contraction axis of the core products), then planes and images,
    then the column phases side by side. The flat ``buffer`` has ``2r`` zeros before
    and after ``z``, so every shifted view a product reads stays inside it.
    """

    def __init__(self, plan: _Plan, images: torch.Tensor, shift: torch.Tensor):
        self.plan = plan
        n, planes, height, width = images.shape[0], plan.planes, plan.height, plan.image_width
        d = plan.dilation
        self.n = n
        self._edge: tuple[torch.Tensor, torch.Tensor] | None = None
        self._region: torch.Tensor | None = None
        self.row_stride = planes * n * plan.width
        self.buffer = images.new_empty(2 * plan.margin + plan.rows * self.row_stride)
        self.z = self.buffer[plan.margin:plan.margin + plan.rows * self.row_stride].view(
            plan.rows, planes, n, plan.width)
        # Zeros wherever no pixel goes. The phases need no zeros between them: a product
        # reaching past a phase's end only enters (run, lag) pairs that no tap pair
        # reads, which only requires it to be finite.
        self.buffer[:plan.margin].zero_()
        self.buffer[plan.margin + height * self.row_stride:].zero_()
        self.z[:height, :, :, width:].zero_()
        shift = shift.reshape(1, 1, n, 1)
        if width % d == 0:
            # equal phases: one pass reads the images in order
            w = width // d
            source = images.reshape(n, planes, height, w, d).permute(2, 1, 0, 4, 3)
            torch.sub(source, shift[..., None],
                      out=self.z[:height, :, :, :width].unflatten(-1, (d, w)))
        else:
            for offset, w, phase in zip(plan.offsets, plan.widths, range(d)):
                source = images.reshape(n, planes, height, width)[..., phase::d]
                torch.sub(source.permute(2, 1, 0, 3), shift,
                          out=self.z[:height, :, :, offset:offset + w])

    def strided(self, shape: tuple[int, ...], strides: tuple[int, ...], row: int, plane: int,
                column: int) -> torch.Tensor:
        """A view of the buffer starting at (row, plane, image 0, column)."""
        offset = self.plan.margin + row * self.row_stride + plane * self.n * self.plan.width \
            + column
        return self.buffer.as_strided(shape, strides, offset)

    def edge_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The edge rows and their partners, and the edge rows' core columns (built once).

        ``edge`` (4R+1, group, planes, n, width + 4r): both groups' rows interleaved per
        row, so that (residue, group, plane, image) is one batch stride of ``width`` and
        every row its own row; ``left`` the first 2R rows, core columns only.
        """
        if self._edge is None:
            plan, n = self.plan, self.n
            r, R, width = plan.radius, plan.radius * plan.dilation, plan.width
            edge = self.buffer.new_empty((4 * R + 1, 2, plan.planes, n, width + 4 * r))
            edge[..., :2 * r].zero_()
            edge[..., width + 2 * r:].zero_()
            edge[-1].zero_()
            for group, g0 in enumerate((0, plan.height - 2 * R)):
                edge[:4 * R, group, ..., 2 * r:width + 2 * r] = self.z[g0:g0 + 4 * R]
            self._edge = edge, edge[:2 * R, ..., 2 * r:width + 2 * r] * plan.core_columns
        return self._edge

    def corner_region(self) -> torch.Tensor:
        """(group, residue, side, phase, 4r, 6r, planes·n) corner pixels, images
        innermost (built once); the views may reach past a row's end, which only reads
        finite neighbours."""
        if self._region is None:
            plan, n = self.plan, self.n
            r, d = plan.radius, plan.dilation
            rows, columns = plan.corner_rows, plan.corner_columns
            region = self.buffer.new_empty((2, d, 2, d, 4 * r, 6 * r, plan.planes * n))
            for group, side, phase in np.ndindex(2, 2, d):
                offset = plan.margin + int(rows[group, 0, 0]) * self.row_stride \
                    + int(columns[side, phase, 0])
                region[group, :, side, phase].copy_(self.buffer.as_strided(
                    (d, 4 * r, 6 * r, plan.planes * n),
                    (self.row_stride, d * self.row_stride, 1, plan.width), offset))
            self._region = region
        return self._region

    def image_runs(self) -> torch.Tensor:
        """Sums of the shifted images per (Sr, Sc, Sp) box, shape (Sr, Sc, Sp, n), float64."""
        plan = self.plan
        z = self.z[:plan.height].reshape(plan.height, -1)
        step = max(1, _SPAN // plan.width)
        boxes = 0
        for b0 in range(0, plan.height, step):
            part = plan.row_runs[:, b0:b0 + step] @ z[b0:b0 + step]     # (Sr, P·n·width)
            part = part.view(-1, plan.width) @ plan.column_runs.T
            boxes = boxes + part.to(torch.float64)
        boxes = boxes.view(2 * plan.radius + 1, plan.planes, self.n, 2 * plan.radius + 1)
        boxes = plan.plane_runs(boxes, 1)
        return boxes.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------- the regions
class _RunSums:
    """Lag-product sums per run of each axis, from the three regions of the image.

    Lags are indexed as plane lag ``(i − 2rp)δ``, row lag ``iδ`` (only non-negative:
    the other half is the same products with the two taps swapped) and column lag
    ``i − 2r`` in phase units; runs ``S·`` as in the module docstring. Every table ends
    with the image axis (shapes: :meth:`_Plan.table_shapes`). The products are
    ``Σ x(q) y(q + L)`` of the images ``x`` of ``layout`` and ``y`` of ``partner`` (two
    channels of the same images; ``layout`` itself by default).

    Attributes
    ----------
    core : (plane lags, Li, Sc, Lj, Sp, n) float64
        Core rows (in every rows run) × the columns of each columns run.
    edge : (plane lags, Sr, Li, Lj, Sp, n) float64
        Edge rows of each rows run × core columns (in every columns run).
    corners : (plane lags, Sr, Li, Sc, Lj, Sp, n) float64
        Edge rows × edge columns of each (rows run, columns run).
    """

    def __init__(self, layout: _Layout, partner: _Layout | None = None):
        self.layout, self.plan = layout, layout.plan
        self.partner = layout if partner is None else partner
        shapes = self.plan.table_shapes()
        new = layout.buffer.new_zeros
        for name in ("core", "edge", "corners"):
            setattr(self, name, new(shapes[name] + (layout.n,), dtype=torch.float64))
        self._core_rows()
        self._edge_rows()
        self._corners()

    def _core_rows(self) -> None:
        """Core rows × all columns: one batched product per (row block, plane lag, row lag)."""
        lay, plan = self.layout, self.plan
        if not plan.row_axis.core:
            return
        (c0, c1), = plan.row_axis.core
        r, d, tile, width, n = plan.radius, plan.dilation, plan.tile, plan.width, lay.n
        halo = tile + 4 * r
        step = max(1, _SPAN // width)
        for lag_index, shift, p0, p1 in plan.plane_lags():
            planes = p1 - p0
            batch = planes * n * (width // tile)
            # per column: (row lags, P'·n·tiles, tile, column lags)
            bands = lay.buffer.new_empty((2 * r + 1, batch, tile, 4 * r + 1))
            product = lay.buffer.new_empty((batch, tile, halo))
            for b0 in range(c0, c1, step):
                span = min(c1, b0 + step) - b0
                # the left operand serves every row lag: packed once, rows innermost
                # (measured 1.5× faster products than reading it in place)
                left = lay.strided((batch, span, tile), (tile, lay.row_stride, 1), b0, p0, 0)
                left = left.contiguous().transpose(1, 2)
                for k in range(2 * r + 1):
                    right = self.partner.strided((batch, span, halo), (tile, lay.row_stride, 1),
                                                 b0 + k * d, p0 + shift, -2 * r)
                    torch.bmm(left, right, out=product)
                    bands[k].copy_(product.as_strided((batch, tile, 4 * r + 1),
                                                      (tile * halo, halo + 1, 1)))
                runs = torch.matmul(plan.column_runs,
                                    bands.view((2 * r + 1) * planes * n, width, -1))
                if b0 == c0:                                      # (Li·P'·n, Sc, Lj)
                    total = runs.to(torch.float64)
                else:
                    total += runs
            runs = plan.plane_runs(total.view(2 * r + 1, planes, n, 2 * r + 1, 4 * r + 1),
                                   1, p0, p1)                        # (Li, Sp, n, Sc, Lj)
            self.core[lag_index] = runs.permute(0, 3, 4, 1, 2)

    def _edge_rows(self) -> None:
        """Edge rows × core columns: one batched product per (plane lag, column lag)."""
        lay, plan = self.layout, self.plan
        if not plan.column_axis.core:
            return
        r, d, width, n = plan.radius, plan.dilation, plan.width, lay.n
        _, left = lay.edge_rows()                      # this channel's rows, core columns
        edge, _ = self.partner.edge_rows()             # the partner rows
        stride = 2 * plan.planes * n * (width + 4 * r)
        for lag_index, shift, p0, p1 in plan.plane_lags():
            planes = p1 - p0
            batch = d * 2 * planes * n
            if planes == plan.planes:
                a = left.as_strided((batch, 2 * r, width), (width, d * left.stride(0), 1))
                a = a.contiguous()                        # shared by every column lag
                bands = a.new_empty((4 * r + 1, batch, 2 * r, 4 * r))
                for j, lag in enumerate(range(-2 * r, 2 * r + 1)):
                    b = edge.as_strided((batch, 4 * r, width), (width + 4 * r, d * stride, 1),
                                        2 * r + lag)
                    torch.bmm(a, b.transpose(1, 2), out=bands[j])
            else:
                bands = torch.stack([self._edge_band(left, edge, residue, group, shift, p0,
                                                     p1, lag)
                                     for lag in range(-2 * r, 2 * r + 1)
                                     for residue in range(d) for group in range(2)])
            band = bands.as_strided((4 * r + 1, batch, 2 * r, 2 * r + 1),
                                    (batch * 8 * r * r, 8 * r * r, 4 * r + 1, 1))
            # (Lj, δ, group, P', n, 2r, Li) → sum the δ rows of each block
            band = band.reshape(4 * r + 1, d, 2, planes, n, 2 * r, 2 * r + 1).sum(1)
            runs = _runs(band[:, 0], band[:, 1], 3)                    # (Lj, P', n, Sr, Li)
            runs = plan.plane_runs(runs, 1, p0, p1)                    # (Lj, Sp, n, Sr, Li)
            self.edge[lag_index] = runs.permute(3, 4, 0, 1, 2)

    def _edge_band(self, left: torch.Tensor, edge: torch.Tensor, residue: int, group: int,
                   shift: int, p0: int, p1: int, lag: int) -> torch.Tensor:
        """(P'·n, 2r, 4r) products of one residue and group for a plane lag (volumes)."""
        r, d, n, width = self.plan.radius, self.plan.dilation, self.layout.n, self.plan.width
        planes = p1 - p0
        a = left[residue::d, group, p0:p1].permute(1, 2, 0, 3).reshape(planes * n, 2 * r, width)
        b = edge[residue::d, group, p0 + shift:p1 + shift, :, 2 * r + lag:2 * r + lag + width]
        b = b[:4 * r].permute(1, 2, 0, 3).reshape(planes * n, 4 * r, width)
        return torch.bmm(a, b.transpose(1, 2)).view(planes * n, 2 * r, 4 * r)

    def _corners(self) -> None:
        """Edge rows × edge columns: explicit products, images innermost."""
        plan = self.plan
        region, partner = self.layout.corner_region(), self.partner.corner_region()
        for lag_index, shift, p0, p1 in plan.plane_lags():
            parts = [self._corner_runs(region, partner, i0, i1, shift, p0, p1)
                     for i0, i1 in self._corner_groups(p1 - p0)]
            both = parts[0] if len(parts) == 1 else torch.cat(parts, -1)     # (…, P', n)
            self.corners[lag_index] = plan.plane_runs(both.to(torch.float64), 4, p0, p1)

    def _corner_groups(self, planes: int) -> list[tuple[int, int]]:
        """Images per corner pass, so that one corner's products stay in cache."""
        r, n = self.plan.radius, self.layout.n
        per_image = (2 * r) ** 2 * (2 * r + 1) * (4 * r + 1) * planes
        step = max(1, min(n, _CORNER_ELEMENTS // per_image))
        return [(i0, min(n, i0 + step)) for i0 in range(0, n, step)]

    def _corner_runs(self, region: torch.Tensor, partner: torch.Tensor, i0: int, i1: int,
                     shift: int, p0: int, p1: int) -> torch.Tensor:
        """(Sr, Li, Sc, Lj, P', n') run sums of the corners of images ``[i0, i1)``.

        ``region``, ``partner``: (group, residue, side, phase, 4r, 6r, planes·n) of this
        layout and of the partner's (:meth:`_Layout.corner_region`), same strides.
        """
        plan = self.plan
        r, d, n = plan.radius, plan.dilation, i1 - i0
        if n != self.layout.n:
            def subset(values: torch.Tensor) -> torch.Tensor:
                return values.unflatten(-1, (plan.planes, -1))[..., i0:i1].flatten(-2).contiguous()
            same = partner is region
            region = subset(region)
            partner = region if same else subset(partner)
        st = region.stride()
        inner = (p1 - p0) * n
        shape = (2 * r, 2 * r + 1, 2 * r, 4 * r + 1, inner)     # (m, Li, m', Lj, ·)
        products = region.new_empty(shape)
        expanded = region.new_empty((2 * r, 1, 2 * r, 4 * r + 1, inner))
        both = None                                          # (Sr·Li, Sc, Lj·inner)
        for group, side in np.ndindex(2, 2):         # one corner of the images at a time
            for residue, phase in np.ndindex(d, d):
                base = (region.storage_offset() + group * st[0] + residue * st[1]
                        + side * st[2] + phase * st[3])
                a = region.as_strided((2 * r, 1, 2 * r, 4 * r + 1, inner),
                                      (st[4], 0, st[5], 0, 1), base + 2 * r * st[5] + p0 * n)
                b = partner.as_strided(shape, (st[4], st[4], st[5], st[5], 1),
                                       base + (p0 + shift) * n)
                # expanded once along the column lags, so that every operand runs
                # contiguously over (column lag, image) and the product vectorises
                if residue == phase == 0:
                    torch.mul(b, expanded.copy_(a), out=products)
                else:
                    products.addcmul_(b, expanded.copy_(a))
            # top rows and left columns are low blocks, bottom and right high ones
            rows_run = (plan.block_runs[group] @ products.view(2 * r, -1)).view(
                (2 * r + 1) * (2 * r + 1), 2 * r, -1)       # (Sr·Li, m', Lj·inner)
            columns = plan.block_runs[side].expand(rows_run.shape[0], -1, -1)
            if both is None:
                both = torch.bmm(columns, rows_run)
            else:
                both.baddbmm_(columns, rows_run)
        return both.view(2 * r + 1, 2 * r + 1, 2 * r + 1, 4 * r + 1, p1 - p0, n)


# ---------------------------------------------------------------------------- assembly
def _rows(sums: _RunSums) -> torch.Tensor:
    """The (tap, tap) entries of one layout pair's run tables, (t², n): whole-row gathers."""
    plan, n = sums.plan, sums.layout.n

    def rows(table: torch.Tensor, name: str) -> torch.Tensor:
        return table.reshape(-1, n).index_select(0, plan.gather[name])

    cross = rows(sums.corners, "corners")
    cross += rows(sums.core, "core")
    cross += rows(sums.edge, "edge")
    return cross


def _assemble(layouts: list[_Layout]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross products and first sums of the shifted images, channel-major taps.

    Entry ``((c, a), (c', b))`` is read from the run tables of the channel pair ``(c, c')``
    when the plan reads taps ``(a, b)`` forward, else from those of ``(c', c)``; at one
    tap, from the pair in channel order, so the matrix is exactly symmetric.
    """
    plan, n = layouts[0].plan, layouts[0].n
    t, channels = plan.n_taps, len(layouts)
    first = torch.cat([layout.image_runs().reshape(-1, n).index_select(0, plan.gather["image"])
                       for layout in layouts]).T
    if channels == 1:
        return _rows(_RunSums(layouts[0])).T.reshape(n, t, t), first
    pairs = {(a, b): _rows(_RunSums(layouts[a], layouts[b]))
             for a in range(channels) for b in range(channels)}
    cross = first.new_empty((channels, t, channels, t, n))
    for a, b in pairs:
        direct = plan.forward & ~(plan.same_tap & (a > b))
        cross[a, :, b] = torch.where(direct[:, None], pairs[a, b], pairs[b, a]).view(t, t, n)
    return cross.permute(4, 0, 1, 2, 3).reshape(n, channels * t, channels * t), first


def _direct_sums(images: torch.Tensor, radius: int, dilation: int, shift: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums from the explicit stack of shifted windows, float64.

    For images too small for the run structure (and small 3-D windows, where it is the
    faster engine): ``t²`` products per valid pixel, a slab of valid rows at a time.
    ``images`` (n, channels, *spatial) and ``shift`` (n, channels); taps channel-major.
    """
    ndim = images.ndim - 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in images.shape[2:]]
    shifted = images.to(torch.float64) - shift.to(torch.float64).reshape(
        shift.shape + (1,) * ndim)
    spatial = (_taps(radius, ndim)[:, 3 - ndim:] * dilation).tolist()
    taps = [(c, o) for c in range(images.shape[1]) for o in spatial]
    n, t = len(images), len(taps)
    cross = shifted.new_zeros((n, t, t))
    first = shifted.new_zeros((n, t))
    per_slab = max(1, _LAYOUT_ELEMENTS // max(1, t * int(np.prod(valid[1:]))))
    for s0 in range(0, valid[0], per_slab):
        rows = min(valid[0], s0 + per_slab) - s0
        def view(c: int, o: list[int]) -> torch.Tensor:
            first_axis = slice(reach + o[0] + s0, reach + o[0] + s0 + rows)
            others = tuple(slice(reach + a, reach + a + v) for a, v in zip(o[1:], valid[1:]))
            return shifted[(slice(None), c, first_axis) + others].reshape(n, -1)
        views = torch.stack([view(c, o) for c, o in taps], 1)
        cross += views @ views.transpose(1, 2)
        first += views.sum(-1)
    return cross, first


def _compiled_wins(radius: int, dilation: int, shape: tuple[int, ...]) -> bool:
    """Whether the compiled CPU engine (:mod:`kernelbank.core._fused_lags`) beats the
    matrix products here. Measured on one thread (bench/fit.py, 32²–256²): it is 1.4–4×
    faster on small images at radius ≤ 2 and about even at 128²; at radius 4 it wins only
    on images below 64² that the products do not already sum directly."""
    height, width = shape
    pixels = height * width
    if radius <= 2:
        return pixels <= 128 * 128
    direct = min(height, width) < 4 * radius * dilation or width // dilation < 4 * radius
    return pixels <= 64 * 64 and not direct


def lag_window_sums(images: torch.Tensor, radius: int, dilation: int, shift: torch.Tensor,
                    *, engine: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums ``cross`` (n, T, T) and ``first`` (n, T), float64, of ``images − shift``
    over the valid pixels of one dilation (:mod:`kernelbank.core.sums`; ``T = C t`` taps,
    channel-major, centres included). ``images`` (n, C, *spatial), float32 or float64, each
    side at least ``2 radius dilation + 1``; ``shift`` (n, C), each channel's mean, say.
    ``engine="auto"`` takes the compiled CPU engine of :mod:`kernelbank.core._fused_lags`
    for one-channel 2-D CPU images where it is measured faster (:func:`_compiled_wins`);
    ``"torch"`` always the matrix products below (the reference, and the GPU path).
    """
    if (engine == "auto" and images.shape[1] == 1 and images.ndim == 4
            and images.device.type == "cpu" and not images.requires_grad
            and _compiled_wins(radius, dilation, images.shape[2:])):
        from ._fused_lags import compiled_lag_window_sums
        return compiled_lag_window_sums(images[:, 0], radius, dilation, shift[:, 0])
    r, d = radius, dilation
    reach = r * d
    *lead, height, width = images.shape[2:]
    if min(lead + [height]) < 4 * reach or width // d < 4 * r:
        return _direct_sums(images, r, d, shift)
    plan = _Plan(tuple(images.shape[2:]), r, d, images.dtype, images.device)
    table = int(np.prod(plan.table_shapes()["corners"]))
    # budgets per channel: one pair of channels is what a product reads
    chunk = max(1, min(_LAYOUT_ELEMENTS // images[0, 0].numel(), _TABLE_ELEMENTS // table))
    parts = [_assemble([_Layout(plan, images[i0:i0 + chunk, c], shift[i0:i0 + chunk, c])
                        for c in range(images.shape[1])])
             for i0 in range(0, images.shape[0], chunk)]
    return torch.cat([cross for cross, _ in parts]), torch.cat([first for _, first in parts])
