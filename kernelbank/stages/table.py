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

__all__ = ["TableMeta", "flat_sums", "flat_covariance", "covariance_of_rows", "sums_of_rows",
           "column_array", "fit_result_of", "table_files"]


def table_files(fs, path: str) -> list[str]:
    """The part files of a stage's table: ``*.parquet`` directly in ``path``.

    Files and folders whose names start with ``_`` or ``.`` (the fit stage's input
    manifest and pixel cache, metadata) are not table rows.
    """
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    names = fs.ls(path, detail=False)
    return sorted(p for p in names if p.endswith(".parquet")
                  and not p.rstrip("/").rsplit("/", 1)[-1].startswith(("_", ".")))


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
    channels: str = "luminance"
    n_channels: int = 1

    @classmethod
    def from_json(cls, meta: dict[str, Any], where: str = "fit/") -> "TableMeta":
        if int(meta.get("version", 1)) < 2:
            raise ValueError(
                f"{where} was written by an older kernelbank (a table without window sums); "
                "rerun the fit stage")
        return cls(str(meta["basis"]), int(meta["radius"]), int(meta["ndim"]),
                   tuple((int(s), int(d)) for s, d in meta["scale_index"]),
                   int(meta["n_components"]), meta.get("grid"), float(meta["ridge"]),
                   bool(meta["normalize"]), tuple(meta.get("descriptor_names", [])),
                   str(meta.get("channels", "luminance")), int(meta.get("n_channels", 1)))

    @property
    def n_taps(self) -> int:
        return (2 * self.radius + 1) ** self.ndim

    @property
    def n_entries(self) -> int:
        return len(self.scale_index)

    @property
    def channel_names(self) -> list[str]:
        """``c<c>`` per channel (the prefix of its columns); empty for one channel."""
        return [f"c{c}" for c in range(self.n_channels)] if self.n_channels > 1 else []

    def basis_at(self, dilation: int):
        """The fit basis at ``dilation`` (with its channels)."""
        from .common import make_basis
        return make_basis(self.basis, self.radius, self.ndim,
                          self.n_channels).with_dilation(dilation)


def flat_sums(entries) -> np.ndarray:
    """(n, S·L) float64 rows of a list of WindowSums: each entry's rows side by side
    (:func:`kernelbank.core.sums_rows.sums_to_rows`)."""
    from ..core.sums_rows import sums_to_rows
    return np.concatenate([sums_to_rows(ws) for ws in entries], 1)


def flat_covariance(covariance) -> np.ndarray:
    """(n, S·C(C+1)/2) float64 rows of covariances (n, S, C, C): each entry's upper
    triangle, row-major (``numpy.triu_indices`` order)."""
    values = covariance.detach().cpu().numpy() if hasattr(covariance, "detach") \
        else np.asarray(covariance)
    upper = np.triu_indices(values.shape[-1])
    return values[..., upper[0], upper[1]].reshape(len(values), -1).astype(np.float64)


def covariance_of_rows(rows: np.ndarray, meta: "TableMeta") -> np.ndarray:
    """Inverse of :func:`flat_covariance`: (n, S, C, C) symmetric float64."""
    c = meta.n_channels
    upper = np.triu_indices(c)
    out = np.zeros((len(rows), meta.n_entries, c, c))
    values = np.asarray(rows, np.float64).reshape(len(rows), meta.n_entries, -1)
    out[..., upper[0], upper[1]] = values
    out[..., upper[1], upper[0]] = values
    return out


def sums_of_rows(rows: np.ndarray, meta: "TableMeta", *, cells: bool = False,
                 packed: bool = False) -> list:
    """Inverse of :func:`flat_sums`: one WindowSums per entry of ``meta.scale_index``
    (``packed``: kept as upper triangles, see :func:`~kernelbank.core.sums_rows.sums_from_rows`)."""
    from ..core.sums_rows import sums_from_rows
    grid = meta.grid if cells else None
    per_entry = np.split(rows, meta.n_entries, axis=1)
    return [sums_from_rows(part, radius=meta.radius, dilation=d, ndim=meta.ndim, scale=s,
                           grid=grid, channels=meta.n_channels, packed=packed)
            for part, (s, d) in zip(per_entry, meta.scale_index)]


def list_column(values: np.ndarray, dtype) -> pa.Array:
    """Rows of a 2-D array as a fixed-size list column of ``dtype``."""
    values = np.ascontiguousarray(values, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def packed_column(values: np.ndarray) -> pa.Array:
    """Rows of a 2-D float64 array as a fixed-size binary column (little-endian float64).

    For the window sums: hundreds of values per row that only the table stages read
    (through :func:`column_array`). Parquet writes a list column value by value with its
    repetition levels; one binary value per row took the write of a real 4,096-row fit
    part from 125 to 88 ms.
    """
    values = np.ascontiguousarray(values, dtype="<f8")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(values.shape[1] * 8), len(values),
                                                [None, pa.py_buffer(values)])


def column_array(table: pa.Table, name: str, width: int | None = None) -> np.ndarray:
    """A fixed-size list column, or a packed float64 one (the window sums of a table of
    version 3), as a writable (rows, width) numpy array."""
    column = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_binary(column.type):
        size = column.type.byte_width
        flat = np.frombuffer(column.buffers()[1], "<f8", count=len(column) * size // 8,
                             offset=column.offset * size)
        return flat.reshape(len(column), size // 8).astype(np.float64)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    width = width or (len(flat) // max(table.num_rows, 1))
    return np.array(flat, dtype=np.float64).reshape(table.num_rows, width)


def unpack_columns(table: pa.Table) -> pa.Table:
    """``table`` with its packed float64 columns (a statistics table's window sums) as
    fixed-size lists of float64: what ``to_pylist`` or pandas then read as numbers."""
    for i, field in enumerate(table.schema):
        if pa.types.is_fixed_size_binary(field.type):
            table = table.set_column(i, field.name, list_column(
                column_array(table, field.name), np.float64))
    return table


def fit_result_of(table: pa.Table, meta: TableMeta):
    """The table's own fits as a :class:`kernelbank.FitResult` with a scale axis.

    Coefficients and MSE come from the table; ``G``/``h``/``Σx²`` of the chosen basis
    from the window sums. With channels, a
    :class:`~kernelbank.core.fit.FitResult` (its Gram ``A`` and residual
    covariance from the sums, the coefficients from the table).
    """
    import torch
    import kernelbank as kb
    from ..core.fit import fit_result_from_sums
    if meta.n_channels > 1:
        return _channel_fit_result_of(table, meta)
    s, m = meta.n_entries, meta.n_components
    coef = torch.from_numpy(column_array(table, "coef").reshape(-1, s, m))
    mse = torch.from_numpy(column_array(table, "mse"))
    entries = [fit_result_from_sums(ws, meta.basis_at(d), meta.ridge, coef=coef[:, e],
                                    mse=mse[:, e])
               for e, (ws, (_, d)) in enumerate(zip(sums_of_rows(column_array(table, "sums"),
                                                                 meta), meta.scale_index))]
    basis = meta.basis_at(meta.scale_index[0][1])
    stack = lambda key: torch.stack([getattr(r, key) for r in entries], 1)  # noqa: E731
    return kb.FitResult(coef=coef, kernels=basis.to_kernels(coef), mse=mse, gram=stack("gram"),
                        rhs=stack("rhs"), sum_sq=stack("sum_sq"), n_pixels=stack("n_pixels"),
                        basis=basis, scale_index=list(meta.scale_index))


def _channel_fit_result_of(table: pa.Table, meta: TableMeta):
    """:func:`fit_result_of` for a table with channels."""
    import torch
    from ..core import FitResult, fit_result_from_sums
    s, c, m = meta.n_entries, meta.n_channels, meta.n_components
    coef = torch.from_numpy(column_array(table, "coef").reshape(-1, s, c, m))
    sums = sums_of_rows(column_array(table, "sums"), meta)
    entries = [fit_result_from_sums(ws, meta.basis_at(d), meta.ridge, coef=coef[:, e])
               for e, (ws, (_, d)) in enumerate(zip(sums, meta.scale_index))]
    basis = meta.basis_at(meta.scale_index[0][1])
    stack = lambda key: torch.stack([getattr(r, key) for r in entries], 1)  # noqa: E731
    return FitResult(coef=coef, kernels=basis.to_kernels(coef), mse=stack("mse"),
                     covariance=stack("covariance"), gram=stack("gram"),
                     n_pixels=stack("n_pixels"), basis=basis, scale_index=list(meta.scale_index))
