"""Write a stage's rows as two Parquet tables in one pass: good rows and error rows.

A stage's output rows carry ``stage``/``reason`` columns that are null for good rows.
:class:`SplitParquetSink` (a Ray Data ``Datasink``) writes each write task's rows to
``<ok_dir>/<prefix>-<task>.parquet`` and its error rows to
``<errors_dir>/<prefix>-<task>.parquet`` (columns ``id, path, label, split, stage,
reason``). File names depend only on the prefix (stage and attempt, see
:attr:`kernelbank.io.runs.StageWriter.part_prefix`) and the task index, so a retried task
overwrites its own files, and each file is written whole (:func:`write_table`): every
row lands exactly once, and a crash leaves no partial file. Each task returns its counts,
which the driver adds up in :meth:`SplitParquetSink.on_write_complete` — the summary
needs no extra pass.

Writes go through fsspec (s3fs for ``s3://``): credentials are found on each worker
the standard way and never pass through this code.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import retried, write_with
from .storage import join

__all__ = ["ERROR_COLUMNS", "SplitParquetSink", "PartWriter", "write_split", "part_name",
           "write_table", "parquet_files", "count_rows", "table_rows"]

ERROR_COLUMNS = ["id", "path", "label", "split", "stage", "reason"]
#: Decoded-pixel columns a row may carry (kept only in a pixel cache, never in a table).
PIXEL_COLUMNS = ("dtype", "pixels")
#: The reader's per-record accounting, summed into the sink's counts.
ACCOUNTING_COLUMNS = ("bytes_read", "read_retries")


def _float64_values(kind: pa.DataType) -> bool:
    """A float64 column, a (fixed-size) list of float64, or packed float64 (fixed-size
    binary: the window sums)."""
    if pa.types.is_fixed_size_binary(kind):
        return True
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or \
            pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_float64(kind)


def write_table(table: pa.Table, fs, path: str, row_group_rows: int | None = None) -> None:
    """Write one Parquet file with ``fs``, whole or not at all (retried on transient errors).

    The file is encoded straight into a hidden temporary file beside ``path`` (locally;
    in memory for object stores) and renamed into place
    (:func:`kernelbank.io.atomic.write_with`). ``row_group_rows``: rows per row group
    (Parquet's default of 1 Mi rows when not given); the writer buffers one row group,
    and a reader can take the file one row group at a time. Only string columns are
    dictionary-encoded: ids, labels and splits repeat, while window sums, features and
    pixel bytes never do, and trying a dictionary on them doubled the time of a write
    (4,096 fit rows: 0.95 s against 0.46 s, and a slightly larger file). float64 columns
    (the window sums, coefficients and MSE of a fit table) are stored uncompressed: zstd
    saved 5 % of their bytes for twice the CPU of their write and read; everything else
    (strings, float32 features and descriptors) is zstd-compressed.
    """
    write_with(fs, path, lambda handle: _write_parquet(handle, [table], row_group_rows))


def write_tables(tables: Iterator[pa.Table], fs, path: str, row_group_rows: int | None = None,
                 before_rename: Callable[[], None] = lambda: None) -> None:
    """Write the tables of an iterator (computed as they are written, one schema) as one
    Parquet file, as :func:`write_table` does; nothing when it yields none.

    Memory holds one table and one row group, not the file. ``before_rename`` runs once
    every table is written, before the file appears under ``path``. Not retried: the
    iterator is consumed once (a failure fails the caller, whose task Ray retries).
    """
    first = next(tables, None)
    if first is None:
        return

    def stream(handle) -> None:
        _write_parquet(handle, itertools.chain([first], tables), row_group_rows)
        before_rename()
    write_with(fs, path, stream, retry=False)


def _write_parquet(handle, tables: Iterable[pa.Table], row_group_rows: int | None) -> None:
    """The tables (one schema: the first's) as one Parquet file, encoded as
    :func:`write_table` says."""
    writer = None
    for table in tables:
        if writer is None:
            schema = table.schema
            strings = [f.name for f in schema
                       if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            codecs = {f.name: "none" if _float64_values(f.type) else "zstd" for f in schema}
            writer = pq.ParquetWriter(handle, schema, compression=codecs,
                                      use_dictionary=strings)
        writer.write_table(table if table.schema.equals(schema) else table.cast(schema),
                           row_group_size=row_group_rows or 1 << 20)
    if writer is not None:
        writer.close()


def count_rows(fs, ok_files: list[str], error_files: list[str]) -> Counter:
    """Counts of existing part files, keyed like :attr:`SplitParquetSink.counts`.

    For a resumed stage: the rows earlier attempts wrote, added to this attempt's.
    """
    counts: Counter = Counter()

    def read(path: str, columns: list[str]) -> pa.Table:
        def once():
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        return retried(once)
    for path in ok_files:
        table = read(path, ["split", "label"])
        for split, label in zip(table.column("split").to_pylist(),
                                table.column("label").to_pylist()):
            counts[("ok", split, label)] += 1
    for path in error_files:
        for stage in read(path, ["stage"]).column("stage").to_pylist():
            counts[("error", stage)] += 1
    return counts


def table_rows(fs, files: list[str]) -> int:
    """Rows of Parquet ``files``, from their footers (read 16 at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def rows(path: str) -> int:
        def once() -> int:
            with fs.open(path, "rb") as handle:
                return pq.ParquetFile(handle).metadata.num_rows
        return retried(once)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(rows, files))


def parquet_files(fs, path: str) -> list[str]:
    """Sorted ``*.parquet`` files below ``path`` (empty when it does not exist)."""
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if p.endswith(".parquet"))


def _sink_base():
    from ray.data.datasource import Datasink
    return Datasink


class CountSummaries:
    """Summaries of a ``counts`` Counter keyed like :func:`write_split`'s."""

    counts: Counter

    def per_split_and_class(self) -> dict[str, dict[str, int]]:
        """Good rows as ``{split: {label: n}}`` (sorted)."""
        out: dict[str, dict[str, int]] = {}
        for key, n in sorted(self.counts.items()):
            if key[0] == "ok":
                out.setdefault(key[1], {})[key[2]] = n
        return out

    def read_totals(self) -> dict[str, int]:
        """Bytes read and read retries summed over the rows written."""
        return {column: self.counts.get(("read", column), 0) for column in ACCOUNTING_COLUMNS}

    def errors_by_stage(self) -> dict[str, int]:
        """Error rows per stage that produced them."""
        return {key[1]: n for key, n in sorted(self.counts.items()) if key[0] == "error"}


def _define_sink():
    """Define :class:`SplitParquetSink` (a subclass of Ray Data's ``Datasink``).

    Done on first use (module ``__getattr__``), not at import: importing ``ray.data``
    costs a worker about a second, and most users of this module (the fit actors' and
    feature tasks' writes, the classify tasks) never need the sink.
    """
    class SplitParquetSink(_sink_base(), CountSummaries):
        """Ray Data sink writing good rows and error rows of a stage to two folders.

        Parameters
        ----------
        fs : fsspec.AbstractFileSystem
        ok_dir, errors_dir : str
            Protocol-free folders (see :func:`kernelbank.io.storage.resolve`).
        prefix : str
            File-name prefix, the stage name (``fit``, ``features``).
        cache_dir : str, optional
            Where good rows' decoded pixels go (``id, label, split, shape, dtype, pixels``)
            when the rows carry them; they are left out of ``ok_dir``'s table either way.
        counter : Ray actor handle, optional
            Told ``add(rows, error_rows)`` after each write (progress lines; see
            :func:`kernelbank.stages.progress.remote_progress`).

        Rows may carry the reader's accounting columns (``bytes_read``, ``read_retries``):
        they are summed into :attr:`counts` and left out of both tables.

        Attributes
        ----------
        counts : collections.Counter
            After the write: ``("ok", split, label)`` and ``("error", stage)`` counts.
        """

        def __init__(self, fs, ok_dir: str, errors_dir: str, prefix: str,
                     cache_dir: str | None = None, counter=None):
            self.fs, self.ok_dir, self.errors_dir, self.prefix = fs, ok_dir, errors_dir, prefix
            self.cache_dir, self.counter = cache_dir, counter
            self.counts: Counter = Counter()

        def write(self, blocks, ctx) -> dict[str, Any]:
            from ray.data.block import BlockAccessor
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return {"counts": Counter()}
            table = pa.concat_tables(tables, promote_options="default")
            name = f"{self.prefix}-{ctx.task_idx:06d}.parquet"
            counts = write_split(table, self.fs, self.ok_dir, self.errors_dir, name,
                                 cache_dir=self.cache_dir)
            if self.counter is not None:
                self.counter.add.remote(table.num_rows, sum(n for k, n in counts.items()
                                                            if k[0] == "error"))
            return {"counts": counts}

        def on_write_complete(self, write_result) -> None:
            for part in write_result.write_returns:
                if part:
                    self.counts.update(part["counts"])

        def get_name(self) -> str:
            return f"Write{self.prefix.split('-')[0].capitalize()}"

    SplitParquetSink.__module__ = __name__
    SplitParquetSink.__qualname__ = "SplitParquetSink"     # pickled by reference
    return SplitParquetSink


def __getattr__(name: str):
    if name == "SplitParquetSink":
        globals()[name] = _define_sink()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def part_name(prefix: str, ids: list[str]) -> str:
    """``<prefix>-<digest>.parquet``: a part file named by the ids of its rows.

    A writer that is not a Ray Data write task (an actor writing the block it computed)
    has no task index; naming the file by its rows' ids gives the same guarantee — a
    retried block rewrites the same file, never a second copy of its rows.
    """
    digest = hashlib.blake2b("\n".join(ids).encode(), digest_size=10).hexdigest()
    return f"{prefix}-{digest}.parquet"


def write_split(tables: pa.Table | Iterator[pa.Table], fs, ok_dir: str, errors_dir: str,
                name: str, *, cache_dir: str | None = None,
                row_group_rows: int | None = None) -> Counter:
    """Write a stage's rows as ``ok_dir/name`` (good rows) and ``errors_dir/name`` (error
    rows), each file whole; the counts of what was written.

    ``tables``: one table, or an iterator of tables (one batch's slices, computed as they
    are written: the good rows go to their file one table at a time,
    :func:`write_tables`). Each carries ``stage``/``reason`` (null for good rows) and
    may carry the reader's accounting columns (summed into the counts, written nowhere)
    and decoded pixels (written to ``cache_dir/name`` when given, never to the table,
    and before the table's file appears: rows are done only with their pixels). Counts
    are keyed ``("ok", split, label)``, ``("error", stage)`` and ``("read", column)``.
    """
    counts: Counter = Counter()
    errors: list[pa.Table] = []
    cache: list[pa.Table] = []

    def good_rows() -> Iterator[pa.Table]:
        for table in [tables] if isinstance(tables, pa.Table) else tables:
            for column in ACCOUNTING_COLUMNS:
                if column in table.column_names:
                    counts[("read", column)] += int(pc.sum(table.column(column)).as_py() or 0)
                    table = table.drop_columns([column])
            failed = pc.is_valid(table.column("reason"))
            if table.column("reason").null_count == table.num_rows:   # no copy when clean
                good, bad = table, table.slice(0, 0)
            else:
                good, bad = table.filter(pc.invert(failed)), table.filter(failed)
            if bad.num_rows:
                errors.append(bad.select(ERROR_COLUMNS))
                for stage in bad.column("stage").to_pylist():
                    counts[("error", stage)] += 1
            if not good.num_rows:
                continue
            good = good.drop_columns(["stage", "reason"])
            pixel_columns = [c for c in PIXEL_COLUMNS if c in good.column_names]
            if cache_dir is not None and pixel_columns:
                cache.append(good.select(["id", "label", "split", "shape"] + pixel_columns))
            for split, label in zip(good.column("split").to_pylist(),
                                    good.column("label").to_pylist()):
                counts[("ok", split, label)] += 1
            yield good.drop_columns(pixel_columns)

    def pixels_first() -> None:
        if cache:
            write_table(pa.concat_tables(cache), fs, join(cache_dir, name))
    write_tables(good_rows(), fs, join(ok_dir, name), row_group_rows, pixels_first)
    if errors:
        write_table(pa.concat_tables(errors), fs, join(errors_dir, name))
    return counts


class PartWriter(CountSummaries):
    """Where a stage's own workers write their part files, and the counts they return.

    The write half of :class:`SplitParquetSink` for a worker that already holds the rows
    (the fit actor that computed them, a feature task that read its file): no block
    crosses the object store to a separate write process. ``write(table, ids)`` writes
    the part named :func:`part_name` and returns its counts; :meth:`add` and the summary
    methods collect them on the driver.
    """

    def __init__(self, fs, ok_dir: str, errors_dir: str, prefix: str,
                 cache_dir: str | None = None, row_group_rows: int | None = None):
        self.fs, self.ok_dir, self.errors_dir, self.prefix = fs, ok_dir, errors_dir, prefix
        self.cache_dir, self.row_group_rows = cache_dir, row_group_rows
        self.counts: Counter = Counter()

    def write(self, table: pa.Table | Iterator[pa.Table], name: str | None = None) -> Counter:
        """Write ``table`` (or an iterator of tables: ``name`` is then required) as the
        part ``name`` (default: :func:`part_name` of its ids); its counts."""
        name = name or part_name(self.prefix, table.column("id").to_pylist())
        return write_split(table, self.fs, self.ok_dir, self.errors_dir, name,
                           cache_dir=self.cache_dir, row_group_rows=self.row_group_rows)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "counts"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, counts=Counter())

    def add(self, counts) -> None:
        self.counts.update(counts)
