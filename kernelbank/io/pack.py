"""Pack a tree of image files into Parquet shards: few large objects instead of millions.

``kernelbank pack INPUT OUTPUT`` (:func:`pack_images`) lists ``INPUT`` once
(:func:`kernelbank.io.manifest.list_inputs`), cuts the listing into shards of about
``shard_mb`` of encoded images each (the listing already has every size, so the cut is
planned before anything is read), and streams each shard: row groups of at most
``group_rows`` records are fetched concurrently and appended to the shard's Parquet
writer, so memory holds one row group at a time whatever the input size.

Each shard ``OUTPUT/shard-000000.parquet`` has the columns

``id``     the record id the folder reader gives (the file's path), so that results of a
           packed and an unpacked run can be compared row by row
``path``   the source file's path
``label``, ``split``  as the folder reader derives them
``size``   bytes of ``image``
``image``  the encoded file, byte for byte (stored uncompressed: it is compressed already)

and ``OUTPUT/_manifest.json`` is written last: ``format`` (``kernelbank-shards``),
``version``, ``source``, ``rows``, ``bytes`` (image bytes), ``shards`` (``path``,
``rows``, ``bytes``, ``file_bytes`` each), ``errors`` (count) and ``error_samples``.
Readers detect a shard folder by that file (so a half-written output is never taken
for a complete one) and read only its small columns to list it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ReadConfig
from .fetch import RetryPolicy
from .manifest import SHARDS_FORMAT, SHARDS_MANIFEST, list_inputs, manifest_info
from .records import fetch_records
from .storage import is_local, join, read_filesystem, redact, resolve

__all__ = ["SHARD_SCHEMA", "ShardWriter", "pack_images", "plan_shards",
           "write_shards_manifest"]

SHARD_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("label", pa.string()), ("split", pa.string()),
    ("size", pa.int64()), ("image", pa.large_binary()),
])
_MAX_ERROR_SAMPLES = 100


def plan_shards(sizes: np.ndarray, shard_bytes: int) -> np.ndarray:
    """Shard number of each record: consecutive records, about ``shard_bytes`` per shard.

    A record starts a new shard when the bytes before it cross a multiple of
    ``shard_bytes``, so a shard exceeds the target by less than one record.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    raw = np.floor(before / max(1, shard_bytes)).astype(np.int64)
    return np.unique(raw, return_inverse=True)[1].astype(np.int64)


def _protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _prepare_output(fs, root: str, overwrite: bool, input_root: str, same_fs: Any) -> None:
    """Refuse overlapping input/output and replacing anything that is not a pack output."""
    if same_fs and (root == input_root or root.startswith(input_root.rstrip("/") + "/")
                    or input_root.startswith(root.rstrip("/") + "/")):
        raise ValueError(f"output {root!r} and input {input_root!r} overlap; pack into a "
                         "separate folder")
    if not fs.exists(root) or (fs.isdir(root) and not fs.ls(root)):
        return
    if not overwrite:
        raise FileExistsError(f"output {root!r} exists; pass --overwrite to replace a "
                              "previous pack output")
    if not fs.exists(join(root, SHARDS_MANIFEST)):
        raise ValueError(f"refusing to overwrite {root!r}: it is not a kernelbank pack output "
                         f"(no {SHARDS_MANIFEST}); choose an empty or new folder")
    fs.rm(join(root, SHARDS_MANIFEST))          # first: a half-replaced output is not a pack
    for path in fs.find(root):
        if path.rsplit("/", 1)[-1].startswith("shard-"):
            fs.rm(path)


class ShardWriter:
    """One shard file being written: rows appended in row groups, in the pack format.

    Use as a context manager; :attr:`entry` (``rows``, ``bytes``, ``file_bytes``) is the
    shard's line of ``_manifest.json`` once it is closed. Both ``kernelbank pack`` and
    generators of synthetic shards (``bench/scale.py``) write through this class, so
    there is one shard format.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
        Protocol-free path of the shard file.
    """

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.rows = self.image_bytes = self.file_bytes = 0

    def __enter__(self) -> "ShardWriter":
        self._handle = self.fs.open(self.path, "wb")
        self._writer = pq.ParquetWriter(self._handle, SHARD_SCHEMA, compression={
            "id": "zstd", "path": "zstd", "label": "zstd", "split": "zstd", "size": "zstd",
            "image": "none"}, use_dictionary=["label", "split"],
            write_statistics=["id", "path", "label", "split", "size"])
        return self

    def write(self, ids, paths, labels, splits, images: list[bytes]) -> None:
        """Append one row group: per record its id, path, label, split and encoded bytes."""
        if not images:
            return
        as_strings = lambda values: values if isinstance(values, (pa.Array, pa.ChunkedArray)) \
            else pa.array(values, pa.string())  # noqa: E731
        self._writer.write_table(pa.Table.from_arrays([
            as_strings(ids), as_strings(paths), as_strings(labels), as_strings(splits),
            pa.array([len(b) for b in images], pa.int64()),
            pa.array(images, pa.large_binary())], schema=SHARD_SCHEMA),
            row_group_size=len(images))
        self.rows += len(images)
        self.image_bytes += sum(len(b) for b in images)

    def __exit__(self, *exc) -> None:
        self._writer.close()
        self.file_bytes = int(self._handle.tell())
        self._handle.close()

    @property
    def entry(self) -> dict[str, Any]:
        """``rows``, ``bytes`` (image bytes) and ``file_bytes`` of the shard."""
        return {"rows": self.rows, "bytes": self.image_bytes, "file_bytes": self.file_bytes}


def write_shards_manifest(fs, root: str, shards: list[dict[str, Any]], *, source: str,
                          errors: int = 0, error_samples: list | None = None,
                          **extra: Any) -> dict[str, Any]:
    """Write ``root/_manifest.json`` — last, since it marks the shard folder complete.

    ``shards`` holds one ``{"path": name, **ShardWriter.entry}`` per shard file; ``extra``
    (settings, timings) is stored as given. Returns the manifest's content.
    """
    result = {"format": SHARDS_FORMAT, "version": 1, "source": redact(source),
              "rows": sum(s["rows"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
              "shards": shards, "errors": errors, "error_samples": error_samples or [],
              **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with fs.open(join(root, SHARDS_MANIFEST), "wb") as handle:
        handle.write(json.dumps(result, indent=1).encode())
    return result


def _write_shard(fs_in, fs_out, path: str, part: pa.Table, config: ReadConfig,
                 group_rows: int, on_rows: Callable[[int, int], None]
                 ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Fetch ``part``'s records group by group into one Parquet shard at ``path``."""
    errors: list[dict[str, str]] = []
    policy = RetryPolicy(attempts=config.read_attempts)
    with ShardWriter(fs_out, path) as shard:
        for start in range(0, part.num_rows, group_rows):
            group = part.slice(start, group_rows)
            data: list[bytes | None] = [None] * group.num_rows
            for record in fetch_records(fs_in, group, image_column=config.image_column,
                                        concurrency=config.fetch_concurrency, policy=policy,
                                        max_bytes=config.max_bytes):
                if record.error is None and isinstance(record.value, bytes):
                    data[record.index] = record.value
                else:
                    errors.append({"path": group.column("path")[record.index].as_py(),
                                   "reason": record.error or "array cell: only encoded "
                                             "images can be packed"})
            ok = np.flatnonzero([d is not None for d in data])
            kept = group.take(pa.array(ok, pa.int64()))
            shard.write(kept.column("id"), kept.column("path"), kept.column("label"),
                        kept.column("split"), [data[i] for i in ok])
            on_rows(group.num_rows, group.num_rows - len(ok))
    return shard.entry, errors


def pack_images(input_url: str, output_url: str, *, shard_mb: float = 256,
                config: ReadConfig | None = None, overwrite: bool = False,
                group_rows: int = 1024, on_listed: Callable[[int], None] | None = None,
                on_rows: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack the images under ``input_url`` into Parquet shards under ``output_url``.

    Parameters
    ----------
    input_url, output_url : str
        Local paths or fsspec URLs (``s3://``, ``gs://``); the output must not overlap
        the input.
    shard_mb : float, default=256
        Target encoded megabytes (2**20 bytes) per shard.
    config : ReadConfig, optional
        Listing and fetching options (format, Parquet columns, S3 endpoint,
        ``fetch_concurrency``, ``read_attempts``, ``max_bytes``); its ``url`` is replaced
        by ``input_url``.
    overwrite : bool, default=False
        Replace an earlier pack output at ``output_url`` (nothing else is ever deleted).
    group_rows : int, default=1024
        Records per Parquet row group: the unit a reader fetches.
    on_listed : callable, optional
        Called as ``on_listed(records)`` once the input is listed (progress totals).
    on_rows : callable, optional
        Called as ``on_rows(done, failed)`` after each row group (progress).

    Returns
    -------
    dict
        The content of ``_manifest.json``.

    Raises
    ------
    FileExistsError
        When the output exists and ``overwrite`` is false.
    ValueError
        Overlapping input/output, an output that is not a pack output, bad sizes.
    """
    if not shard_mb > 0:
        raise ValueError(f"shard_mb must be > 0, got {shard_mb!r}")
    if not isinstance(group_rows, int) or group_rows < 1:
        raise ValueError(f"group_rows must be a positive integer, got {group_rows!r}")
    config = replace(config, url=input_url) if config else ReadConfig(input_url)
    start = time.perf_counter()
    manifest = list_inputs(config)
    if on_listed is not None:
        on_listed(manifest.num_rows)
    info = manifest_info(manifest)
    if info.get("layout") == "parquet" or info.get("layout") == "shards":
        config = replace(config, image_column=info.get("image_column", config.image_column))
    fs_in, _ = read_filesystem(config.url, s3_endpoint=config.s3_endpoint,
                               connections=config.fetch_concurrency)
    fs_out, root = resolve(output_url, s3_endpoint=config.s3_endpoint)
    same_fs = is_local(fs_in) == is_local(fs_out) and \
        set(_protocols(fs_in)) & set(_protocols(fs_out))
    _prepare_output(fs_out, root, overwrite, info.get("root", ""), same_fs)
    fs_out.makedirs(root, exist_ok=True)
    sizes = np.asarray(manifest.column("size").to_numpy(zero_copy_only=False), np.float64)
    sizes[~np.isfinite(sizes)] = 0
    shard_of = plan_shards(sizes, int(shard_mb * 2 ** 20))
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(shard_of)) + 1, [manifest.num_rows]])
    shards, errors, n_errors = [], [], 0
    for number, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        name = f"shard-{number:06d}.parquet"
        entry, failed = _write_shard(fs_in, fs_out, join(root, name),
                                     manifest.slice(int(a), int(b - a)), config, group_rows,
                                     on_rows or (lambda done, bad: None))
        n_errors += len(failed)
        errors.extend(failed[:max(0, _MAX_ERROR_SAMPLES - len(errors))])
        if entry["rows"]:
            shards.append({"path": name, **entry})
        else:
            fs_out.rm(join(root, name))
    return write_shards_manifest(fs_out, root, shards, source=input_url, errors=n_errors,
                                 error_samples=errors, shard_mb=shard_mb, group_rows=group_rows,
                                 seconds=round(time.perf_counter() - start, 3))
