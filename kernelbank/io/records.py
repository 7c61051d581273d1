"""Fetch the raw records of one read block: plain files, Parquet rows, tar members.

Runs inside a Ray read task (and in ``kernelbank pack``). Given a slice of the manifest
(:mod:`kernelbank.io.manifest`), :func:`fetch_records` yields, per row, the encoded bytes
(or an array, for Parquet array cells) or why they could not be read, with the bytes the
store returned and the retries it took:

* plain files — one whole-object GET each, ``concurrency`` in flight
  (:func:`kernelbank.io.fetch.fetch_ranges`);
* tar members — one ranged GET per tar covering the block's members of it, sliced by
  the offsets the listing recorded (no tar parsing at read time);
* Parquet rows — the footer and the block's row groups of the image column, through
  :class:`~kernelbank.io.fetch.RangeFile` (exact ranged GETs, pyarrow coalesces the
  column chunks of a row group), several shards at once.

Bytes a store returns beyond the records themselves (tar headers, Parquet footers and
other columns) are attributed to the first record of that request, so that the sum over
rows is exactly what was read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .fetch import RangeFile, RetryPolicy, fetch_ranges

__all__ = ["RawRecord", "fetch_records", "cell_value", "footer_bytes", "footer_metadata"]


@dataclass
class RawRecord:
    """One manifest row's fetched content.

    Attributes
    ----------
    index : int
        Row of the block it belongs to.
    value : bytes, ndarray or None
        Encoded bytes (or an array cell); ``None`` when ``error`` is set.
    error : str or None
        Why it could not be read (stage ``read``).
    bytes_read : int
        Bytes the store returned on its behalf.
    retries : int
        Retried requests on its behalf.
    """

    index: int
    value: Any
    error: str | None
    bytes_read: int = 0
    retries: int = 0


def cell_value(value: Any) -> Any:
    """Bytes, or an ndarray, from one Parquet image cell."""
    if isinstance(value, dict):              # {"bytes": ..., "path": ...} (Hugging Face style)
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype == object:                # nested lists arrive as arrays of arrays
        array = np.stack([np.asarray(v) for v in array])
    return array


def _column(block: pa.Table, name: str) -> np.ndarray:
    return np.asarray(block.column(name).to_numpy(zero_copy_only=False))


def _files(fs, block: pa.Table, rows: np.ndarray, concurrency: int, policy: RetryPolicy
           ) -> Iterator[RawRecord]:
    paths = block.column("path").take(pa.array(rows)).to_pylist()
    fetched = fetch_ranges(fs, [(p, None, None) for p in paths], concurrency=concurrency,
                           policy=policy)
    for row, result in zip(rows, fetched):
        yield RawRecord(int(row), result.data, None if result.error is None
                        else f"cannot read: {result.error}",
                        len(result.data) if result.data is not None else 0, result.retries)


def _tars(fs, block: pa.Table, rows: np.ndarray, concurrency: int, policy: RetryPolicy
          ) -> Iterator[RawRecord]:
    shards = block.column("shard").take(pa.array(rows)).to_pylist()
    offsets = _column(block, "offset")[rows].astype(np.int64)
    sizes = _column(block, "size")[rows].astype(np.int64)
    by_tar: dict[str, list[int]] = {}
    for k, shard in enumerate(shards):
        by_tar.setdefault(shard, []).append(k)
    requests = [(shard, int(offsets[ks].min()), int((offsets[ks] + sizes[ks]).max()))
                for shard, ks in by_tar.items()]
    fetched = fetch_ranges(fs, requests, concurrency=concurrency, policy=policy)
    for (shard, start, _), ks, result in zip(requests, by_tar.values(), fetched):
        for j, k in enumerate(ks):
            row = int(rows[k])
            if result.error is not None:
                yield RawRecord(row, None, f"cannot read {shard}: {result.error}", 0,
                                result.retries if j == 0 else 0)
                continue
            begin = int(offsets[k]) - start
            data = result.data[begin:begin + int(sizes[k])]
            extra = len(result.data) - int(sizes[ks].sum()) if j == 0 else 0
            yield RawRecord(row, data, None, len(data) + extra, result.retries if j == 0 else 0)


def footer_bytes(metadata: pq.FileMetaData) -> bytes:
    """A Parquet file's footer as bytes (a metadata-only Parquet file), for
    :func:`footer_metadata`: the listing keeps each shard's footer so read tasks fetch
    only their column chunks."""
    sink = pa.BufferOutputStream()
    metadata.write_metadata_file(sink)
    return sink.getvalue().to_pybytes()


def footer_metadata(data: bytes) -> pq.FileMetaData:
    """The footer :func:`footer_bytes` wrote."""
    return pq.read_metadata(pa.BufferReader(data))


def _parquet_shard(fs, shard: str, shard_size: int, units: dict[int, list[tuple[int, int]]],
                   image_column: str, policy: RetryPolicy, footer: bytes | None = None
                   ) -> list[RawRecord]:
    """Records of one Parquet file: ``units`` maps row group -> [(block row, file row)].

    ``footer`` (:func:`footer_bytes`, kept by the listing) saves reading the file's footer
    again: without it, pyarrow reads the last 64 KiB (or the whole footer) per call.
    """
    handle = RangeFile(fs, shard, shard_size, policy)
    out: list[RawRecord] = []
    try:
        parquet = pq.ParquetFile(handle, pre_buffer=True,
                                 metadata=footer_metadata(footer) if footer else None)
        firsts = np.concatenate([[0], np.cumsum([parquet.metadata.row_group(g).num_rows
                                                 for g in range(parquet.num_row_groups)])])
        for group, members in sorted(units.items()):
            column = parquet.read_row_group(group, columns=[image_column]).column(0)
            local = pa.array([member - int(firsts[group]) for _, member in members], pa.int64())
            cells = column.take(local).to_pylist()
            for (row, _), cell in zip(members, cells):
                value = cell_value(cell)
                if value is None:
                    out.append(RawRecord(row, None, "image cell is empty"))
                else:
                    out.append(RawRecord(row, value, None,
                                         len(value) if isinstance(value, bytes) else 0))
    except Exception as error:      # the whole shard is unreadable: every row says why
        reason = f"cannot read {shard}: {type(error).__name__}: {error}"
        done = {r.index for r in out}
        out.extend(RawRecord(row, None, reason) for members in units.values()
                   for row, _ in members if row not in done)
    if out:
        out[0].bytes_read += max(0, handle.bytes_read - sum(r.bytes_read for r in out))
        out[0].retries += handle.retries
    return out


def _parquet(fs, block: pa.Table, rows: np.ndarray, image_column: str, concurrency: int,
             policy: RetryPolicy, footers: dict[str, bytes]) -> Iterator[RawRecord]:
    shards = block.column("shard").take(pa.array(rows)).to_pylist()
    shard_sizes = _column(block, "shard_size")[rows]
    groups = _column(block, "group")[rows]
    members = _column(block, "member")[rows]
    plan: dict[str, dict[int, list[tuple[int, int]]]] = {}
    sizes: dict[str, int] = {}
    for k, shard in enumerate(shards):
        plan.setdefault(shard, {}).setdefault(int(groups[k]), []).append(
            (int(rows[k]), int(members[k])))
        sizes[shard] = int(shard_sizes[k])
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(plan)))) as pool:
        futures = [pool.submit(_parquet_shard, fs, shard, sizes[shard], units, image_column,
                               policy, footers.get(shard)) for shard, units in plan.items()]
        for future in futures:
            yield from future.result()


def fetch_records(fs, block: pa.Table, *, image_column: str = "image", concurrency: int = 32,
                  policy: RetryPolicy | None = None, max_bytes: int | None = None,
                  footers: dict[str, bytes] | None = None) -> Iterator[RawRecord]:
    """The raw content of every row of a manifest block (any order; see ``index``).

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The input's filesystem (see :func:`kernelbank.io.storage.read_filesystem`).
    block : pyarrow.Table
        Rows of a manifest (:data:`kernelbank.io.manifest.MANIFEST_SCHEMA`).
    image_column : str
        Image column of Parquet shards.
    concurrency : int
        Requests in flight.
    policy : RetryPolicy, optional
    max_bytes : int, optional
        Objects the listing says are larger are not fetched (an error row instead).
    footers : dict, optional
        Parquet shard -> its footer (:func:`footer_bytes`), kept by the listing: the
        shards' footers are then not read again.

    Yields
    ------
    RawRecord
        Exactly one per row of ``block``.
    """
    policy = policy or RetryPolicy()
    n = block.num_rows
    sizes = _column(block, "size")
    oversized = np.zeros(n, bool)
    if max_bytes is not None:
        known = np.asarray(pc.fill_null(block.column("size"), 0).to_numpy(zero_copy_only=False))
        oversized = known > max_bytes
        for row in np.flatnonzero(oversized):
            yield RawRecord(int(row), None, f"rejected: object of {int(sizes[row])} bytes is "
                            f"larger than max_bytes={max_bytes}; not fetched")
    in_shard = pc.is_valid(block.column("shard")).to_numpy(zero_copy_only=False)
    in_tar = pc.is_valid(block.column("offset")).to_numpy(zero_copy_only=False)
    keep = ~oversized
    yield from _files(fs, block, np.flatnonzero(keep & ~in_shard), concurrency, policy)
    yield from _tars(fs, block, np.flatnonzero(keep & in_tar), concurrency, policy)
    yield from _parquet(fs, block, np.flatnonzero(keep & in_shard & ~in_tar), image_column,
                        concurrency, policy, footers or {})
