"""The statistics table's columns ↔ the math layer's objects.

The fit stage writes, and every later stage reads, the layout described in
:mod:`kernelbank.stages.fit`; this module is the one place that knows it: window sums
to flat float64 rows and back, the metadata file, and whole-table reads of the
columns a stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["TableMeta", "sums_width", "flat_sums", "sums_of_rows", "column_array",
           "fit_result_of"]


def sums_width(n_taps: int) -> int:
    """Values per entry in the ``sums`` column: upper triangle of cross, first, n."""
    return n_taps * (n_taps + 1) // 2 + n_taps + 1


@dataclass(frozen=True)
class TableMeta:
    """``fit/_kernelbank.json``: what the statistics table holds."""

    basis: str
    radius: int
    ndim: int
    scale_index: tuple[tuple[int, int], ...]
    n_components: int
    grid: int | None
    ridge: float
    normalize: bool
    descriptor_names: tuple[str, ...]

    @classmethod
    def from_json(cls, meta: dict[str, Any], where: str = "fit/") -> "TableMeta":
        if int(meta.get("version", 1)) < 2:
            raise ValueError(
                f"{where} was written by an older kernelbank (a table without window sums); "
                "rerun the fit stage")
        return cls(str(meta["basis"]), int(meta["radius"]), int(meta["ndim"]),
                   tuple((int(s), int(d)) for s, d in meta["scale_index"]),
                   int(meta["n_components"]), meta.get("grid"), float(meta["ridge"]),
                   bool(meta["normalize"]), tuple(meta.get("descriptor_names", [])))

    @property
    def n_taps(self) -> int:
        return (2 * self.radius + 1) ** self.ndim

    @property
    def n_entries(self) -> int:
        return len(self.scale_index)

    def basis_at(self, dilation: int):
        from .common import make_basis
        return make_basis(self.basis, self.radius, self.ndim).with_dilation(dilation)


def flat_sums(entries) -> np.ndarray:
    """(n, S·[cells·]L) float64 rows of a list of WindowSums (entry-major, cells next)."""
    import torch
    parts = []
    for ws in entries:
        t = ws.cross.shape[-1]
        rows, cols = torch.triu_indices(t, t, device=ws.cross.device)
        count = ws.n_pixels.to(torch.float64)[..., None]
        block = torch.cat([ws.cross[..., rows, cols], ws.first, count], -1)
        parts.append(block.reshape(block.shape[0], -1))
    return torch.cat(parts, 1).cpu().numpy()


def sums_of_rows(rows: np.ndarray, meta: TableMeta, *, cells: bool = False) -> list:
    """Inverse of :func:`flat_sums`: one WindowSums per entry of ``meta.scale_index``."""
    import torch
    from ..core.sums import WindowSums
    t, n = meta.n_taps, rows.shape[0]
    width = sums_width(t)
    n_cells = meta.grid ** meta.ndim if cells else 1
    blocks = torch.from_numpy(np.ascontiguousarray(rows, np.float64)).reshape(
        n, meta.n_entries, n_cells, width)
    if not cells:
        blocks = blocks[:, :, 0]
    upper, lower = torch.triu_indices(t, t)
    out = []
    for e, (scale, dilation) in enumerate(meta.scale_index):
        block = blocks[:, e]
        cross = block.new_zeros(block.shape[:-1] + (t, t))
        tri = block[..., :len(upper)]
        cross[..., upper, lower] = tri
        cross[..., lower, upper] = tri
        first = block[..., len(upper):len(upper) + t]
        count = block[..., -1].round().to(torch.int64)
        out.append(WindowSums(cross, first.contiguous(), count, meta.radius, dilation,
                              meta.ndim, scale, meta.grid if cells else None))
    return out


def column_array(table: pa.Table, name: str, width: int | None = None) -> np.ndarray:
    """A fixed-size list column as a writable (rows, width) numpy array."""
    column = table.column(name).combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    width = width or (len(flat) // max(table.num_rows, 1))
    return np.array(flat, dtype=np.float64).reshape(table.num_rows, width)


def fit_result_of(table: pa.Table, meta: TableMeta):
    """The table's own fits as a :class:`kernelbank.FitResult` (coef, mse, G, h, Σx², n).

    ``G``/``h``/``Σx²`` are those of the chosen basis, from the window sums.
    """
    import torch
    import kernelbank as kb
    s, m = meta.n_entries, meta.n_components
    sums = sums_of_rows(column_array(table, "sums"), meta)
    parts = [ws.basis_sums(meta.basis_at(d)) for ws, (_, d) in zip(sums, meta.scale_index)]
    coef = torch.from_numpy(column_array(table, "coef").reshape(-1, s, m))
    basis = meta.basis_at(meta.scale_index[0][1])
    return kb.FitResult(coef=coef, kernels=basis.to_kernels(coef),
                        mse=torch.from_numpy(column_array(table, "mse")),
                        gram=torch.stack([p[0] for p in parts], 1),
                        rhs=torch.stack([p[1] for p in parts], 1),
                        sum_sq=torch.stack([p[2] for p in parts], 1),
                        n_pixels=torch.stack([p[3] for p in parts], 1),
                        basis=basis, scale_index=list(meta.scale_index))
