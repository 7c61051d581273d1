"""Read image datasets into Ray Data as decoded, validated rows: list once, fetch concurrently.

Two steps, so that a run lists its input once and every later read (another stage, a
resumed run) starts from the same manifest:

1. :func:`kernelbank.io.manifest.list_inputs` — the driver lists the input into a
   manifest table (path, size, label, split, shard/row for records inside shards);
2. :func:`read_images` — Ray tasks fetch and decode blocks of that manifest: many GETs in
   flight per task, throttling retried with backoff and counted, every bad record an
   error row. :func:`read_dataset` does both (what the stages call).

Each output row is one record, decoded or not (:data:`DECODED_SCHEMA`):

``id``            unique record id (see :mod:`kernelbank.io.manifest`)
``path``          where the record came from
``label``         class name, ``""`` when unknown
``split``         ``train``/``test``/``val``… from the path or column, ``"unsplit"`` otherwise
``shape``         ``list<int32>`` image shape, ``(H, W)`` or ``(D, H, W)``; ``(C, H, W)`` with
                  ``channels`` ``rgb``/``all`` (see :mod:`kernelbank.io.decode`)
``dtype``         NumPy dtype name of ``pixels``: ``uint8`` for 8-bit images, ``uint16`` for
                  16-bit, ``float32`` for float sources and colour (luminance)
``pixels``        the image as C-order bytes of ``dtype`` (null for an error row)
``stage``         ``"read"`` or ``"decode"`` for an error row (``"label"`` for a record
                  without a class), null otherwise
``reason``        why the record was rejected, null otherwise
``bytes_read``    bytes fetched from the store for this record (shard headers and footers
                  are counted on the first record of the request)
``read_retries``  retried requests on its behalf (throttling, time-outs)

Rows of each block are ordered by (shape, dtype), errors last, so a consumer stacks each
shape with one copy, or none (:func:`kernelbank.io.batches.shape_groups`).

Why raw bytes plus a shape rather than tensor columns: rows of any size share one Arrow
schema (variable-shaped tensor columns break block concatenation in Ray), decoding and
validation run on cheap CPU tasks that overlap the fitting actors, and a rejected record
is already an error row before any actor sees it. Pixels keep their native dtype, so an
8-bit image costs 1 byte per pixel in the object store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ReadConfig
from .batches import images_from_batch, shape_groups
from .decode import DecodeLimits, decode_record
from .fetch import RetryPolicy
from .manifest import (SPLIT_NAMES, UNSPLIT, SavedManifest, list_inputs, manifest_info,
                       plan_blocks, split_and_label)
from .records import cell_value, fetch_records
from .storage import read_filesystem

__all__ = ["DECODED_SCHEMA", "SPLIT_NAMES", "UNSPLIT", "read_dataset", "read_images",
           "read_block", "images_from_batch", "shape_groups", "split_and_label", "list_inputs",
           "read_totals", "channel_mismatch", "probe_channels"]

DECODED_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("label", pa.string()),
    ("split", pa.string()), ("shape", pa.list_(pa.int32())), ("dtype", pa.string()),
    ("pixels", pa.large_binary()), ("stage", pa.string()), ("reason", pa.string()),
    ("bytes_read", pa.int64()), ("read_retries", pa.int32()),
])

_cell_value = cell_value      # kept for kernelbank.report.collect

#: Error-row stage of a record without a class (see kernelbank.stages.validation).
LABEL_STAGE = "label"
NO_LABEL = ("no label: the file lies directly under the input root (or its split folder), "
            "not in a class folder, or its label cell is empty; lay images out as "
            "root/<class>/<image> or root/<split>/<class>/<image>")


def _pixels_column(images: list[np.ndarray | None]) -> pa.Array:
    """``large_binary`` column of the images' bytes, built with one copy (nulls for None)."""
    lengths = np.array([0 if im is None else im.nbytes for im in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.empty(int(offsets[-1]), np.uint8)
    for image, start, length in zip(images, offsets[:-1], lengths):
        if image is not None and length:
            data[start:start + length] = image.reshape(-1).view(np.uint8)
    valid = np.array([im is not None for im in images], bool)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.large_binary(), len(images),
                                 [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int((~valid).sum()))


def channel_mismatch(image: np.ndarray, config: ReadConfig, path: str) -> str | None:
    """Why a decoded ``(C, H, W)`` image does not fit the run's channel count, or None.

    Only ``channels="all"`` runs can meet one: ``rgb`` makes every image three channels,
    luminance one.
    """
    expected = config.n_channels
    if config.channels.value != "all" or expected is None or image.shape[0] == expected:
        return None
    return (f"{path} has {image.shape[0]} channel(s) but this run's images have {expected} "
            "(--channels all keeps every band; a run's channel count is that of its first "
            "record): convert the file, or use --channels rgb (grey replicated, alpha "
            "dropped) or luminance")


def read_block(block: pa.Table, *, fs, config: ReadConfig, image_column: str | None = None,
               footers: dict[str, bytes] | None = None) -> pa.Table:
    """Fetch and decode one manifest block into decoded rows (runs in a Ray task).

    Parameters
    ----------
    block : pyarrow.Table
        Manifest rows (:data:`kernelbank.io.manifest.MANIFEST_SCHEMA`).
    fs : fsspec.AbstractFileSystem
        The input's filesystem (:func:`kernelbank.io.storage.read_filesystem`).
    config : ReadConfig
        ``ndim``, ``min_side``, limits, concurrency and retry attempts.
    image_column : str, optional
        Image column of Parquet records; default: the manifest's, else the config's.
    footers : dict, optional
        Parquet shard -> footer, from the saved listing (the footers are not read again).

    Returns
    -------
    pyarrow.Table
        One row per manifest row (:data:`DECODED_SCHEMA`), ordered by (shape, dtype),
        error rows last.
    """
    n = block.num_rows
    limits = DecodeLimits(max_pixels=config.max_pixels, max_bytes=config.max_bytes)
    image_column = image_column or manifest_info(block).get("image_column",
                                                            config.image_column)
    images: list[np.ndarray | None] = [None] * n
    stage: list[str | None] = [None] * n
    reason: list[str | None] = [None] * n
    bytes_read = np.zeros(n, np.int64)
    retries = np.zeros(n, np.int32)
    paths = block.column("path").to_pylist()
    for record in fetch_records(fs, block, image_column=image_column,
                                concurrency=config.fetch_concurrency,
                                policy=RetryPolicy(attempts=config.read_attempts),
                                max_bytes=config.max_bytes, footers=footers):
        i = record.index
        bytes_read[i], retries[i] = record.bytes_read, record.retries
        if record.error is not None:
            stage[i], reason[i] = "read", record.error
            continue
        image, why = decode_record(record.value, paths[i], config.ndim, config.min_side, limits,
                                   config.channels.value)
        if why is None and image is not None:
            why = channel_mismatch(image, config, paths[i])
        images[i], stage[i], reason[i] = image, None if why is None else "decode", why
    # a record without a class is never guessed into one (a file directly under the root)
    for i, label in enumerate(block.column("label").to_pylist()):
        if not label and stage[i] is None:
            images[i], stage[i], reason[i] = None, LABEL_STAGE, NO_LABEL
    shapes = [[] if im is None else list(im.shape) for im in images]
    dtypes = [None if im is None else im.dtype.name for im in images]
    # a record that decoded but failed a check keeps its shape, not its pixels
    kept = [None if why else im for im, why in zip(images, reason)]
    order = sorted(range(n), key=lambda i: (kept[i] is None, len(shapes[i]), shapes[i],
                                            dtypes[i] or ""))
    table = pa.Table.from_arrays([
        block.column("id"), block.column("path"), block.column("label"), block.column("split"),
        pa.array(shapes, pa.list_(pa.int32())),
        pa.array([d if k is not None else None for d, k in zip(dtypes, kept)], pa.string()),
        _pixels_column(kept), pa.array(stage, pa.string()), pa.array(reason, pa.string()),
        pa.array(bytes_read), pa.array(retries)], schema=DECODED_SCHEMA)
    return table.take(pa.array(order, pa.int64()))


def probe_channels(manifest: "pa.Table | SavedManifest", config: ReadConfig, *,
                   max_records: int = 64) -> int:
    """The channel count of a ``channels="all"`` run: that of its first decodable record.

    Reads records in manifest order, one at a time on the driver, until one decodes
    (usually the first: one extra read of one image per run).

    Raises
    ------
    ValueError
        When none of the first ``max_records`` records decodes.
    """
    from dataclasses import replace
    if isinstance(manifest, SavedManifest):
        info, plain = manifest.info, manifest.read(0, min(manifest.rows, max_records))
    else:
        info, plain = manifest_info(manifest), manifest.slice(0, max_records)
    plain = plain.replace_schema_metadata(None)
    fs, _ = read_filesystem(info.get("url", config.url), s3_endpoint=config.s3_endpoint,
                            connections=4)
    probe = replace(config, channels="all", n_channels=None, min_side=1, fetch_concurrency=4)
    for start in range(plain.num_rows):
        row = read_block(plain.slice(start, 1), fs=fs, config=probe,
                         image_column=info.get("image_column", config.image_column))
        if row.column("pixels").is_valid()[0].as_py():
            return int(row.column("shape")[0].as_py()[0])
    raise ValueError(f"--channels all: none of the first {plain.num_rows} "
                     f"records of {config.url!r} decodes, so the run's channel count is "
                     "unknown; check errors of a --channels rgb run, or fix the input")


def read_images(manifest: pa.Table | SavedManifest, config: ReadConfig, *,
                skip_ids: pa.Array | None = None, ray_remote_args: dict | None = None):
    """A lazy Ray Dataset of decoded rows for the records of ``manifest``.

    Parameters
    ----------
    manifest : pyarrow.Table or SavedManifest
        From :func:`kernelbank.io.manifest.list_inputs` (or a subset of its rows, or one
        read back with :func:`~kernelbank.io.manifest.load_manifest`), or a listing saved
        by :func:`~kernelbank.io.manifest.save_listing`: then each read task reads its own
        rows from the file, and the driver never holds the listing (a million records
        are a few hundred megabytes of ids and paths).
    config : ReadConfig
        The input URL and S3 endpoint (for the filesystem), ``ndim``, ``min_side``,
        decoder limits, ``fetch_concurrency``, ``read_attempts``, block sizes.
    skip_ids : pyarrow.Array, optional
        Record ids to leave out (a resumed run's completed records).
    ray_remote_args : dict, optional
        Resources of the read tasks; the stage passes its actor pool's
        (:func:`kernelbank.stages.common.read_args`) so that Ray Data fuses the reads
        into the actors (default: one CPU per read task).

    Returns
    -------
    ray.data.Dataset
        One row per manifest row (:data:`DECODED_SCHEMA`). Blocks of a few hundred to
        ``config.block_rows`` records, cut by encoded bytes (``config.block_bytes``); each
        block is one Ray task that fetches its records ``fetch_concurrency`` at a time
        and decodes them as they arrive. Nothing is read until the dataset is consumed.

    Examples
    --------
    >>> manifest = list_inputs(config)                                      # doctest: +SKIP
    >>> ds = read_images(manifest, config)                                  # doctest: +SKIP
    >>> for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):  # doctest: +SKIP
    ...     for group in shape_groups(batch): ...
    """
    import ray.data
    saved = isinstance(manifest, SavedManifest)
    read_kwargs = read_arguments(manifest, config)
    if not saved and skip_ids is not None and len(skip_ids):
        manifest = manifest.filter(pc.invert(pc.is_in(manifest.column("id"),
                                                      value_set=skip_ids)))
    blocks = read_blocks(manifest, config)
    # from_blocks, not from_arrow: from_arrow asks one remote task per block for its
    # metadata and waits for them, behind whatever holds the CPUs (the warming workers
    # of a run: seconds before a small run's first read); these blocks are tiny, so their
    # metadata is computed here
    if saved:
        # one block of row numbers per read block (8 bytes per record): Ray sizes tasks
        # and bundles by rows, so a block must have as many rows as the records it reads
        numbers = [pa.table({"row": np.arange(a, b, dtype=np.int64)}) for a, b in blocks]
        return ray.data.from_blocks(numbers or [pa.table({"row": pa.array([], pa.int64())})]
                                    ).map_batches(
            _read_saved_rows, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
            fn_kwargs={"manifest": manifest, "skip_ids": skip_ids, **read_kwargs},
            **(ray_remote_args or {}))
    plain = manifest.replace_schema_metadata(None)
    tables = [plain.slice(start, stop - start) for start, stop in blocks] or [plain]
    return ray.data.from_blocks(tables).map_batches(
        read_block, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
        fn_kwargs=read_kwargs, **(ray_remote_args or {}))


def read_arguments(manifest: pa.Table | SavedManifest, config: ReadConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`read_block` for ``manifest``'s records: the
    input's filesystem, ``config``, its image column and (a saved listing of Parquet
    shards) the shards' footers."""
    saved = isinstance(manifest, SavedManifest)
    info = manifest.info if saved else manifest_info(manifest)
    fs, _ = read_filesystem(info.get("url", config.url), s3_endpoint=config.s3_endpoint,
                            connections=config.fetch_concurrency)
    kwargs = {"fs": fs, "config": config,
              "image_column": info.get("image_column", config.image_column)}
    if saved:
        kwargs["footers"] = manifest.footers()
    return kwargs


def read_blocks(manifest: pa.Table | SavedManifest, config: ReadConfig) -> list[tuple[int, int]]:
    """``manifest``'s read blocks (:func:`~kernelbank.io.manifest.plan_blocks` with
    ``config``'s sizes): at least two per CPU of the cluster, so every CPU has work, and up
    to eight where that leaves :data:`MIN_BLOCK_ROWS` records in each, so the last blocks,
    which leave CPUs idle while they finish, are a small share of the stage (10,000
    images on 2 CPUs in 5 blocks kept one CPU idle for a fifth of the fit)."""
    table = manifest.planning_table() if isinstance(manifest, SavedManifest) else manifest
    cpus = _cluster_cpus()
    wanted = config.override_num_blocks or \
        max(2 * cpus, min(8 * cpus, table.num_rows // MIN_BLOCK_ROWS))
    return plan_blocks(table, target_bytes=config.block_bytes, max_rows=config.block_rows,
                       min_blocks=wanted)


def read_saved_block(manifest: SavedManifest, start: int, stop: int, *,
                     skip_ids: pa.Array | None = None, **read_kwargs) -> pa.Table:
    """Decoded rows of the saved listing's rows ``[start, stop)``, less ``skip_ids``;
    ``read_kwargs`` (:func:`read_arguments`) go to :func:`read_block`."""
    block = manifest.read(start, stop)
    if skip_ids is not None and len(skip_ids):
        block = block.filter(pc.invert(pc.is_in(block.column("id"), value_set=skip_ids)))
    return read_block(block, **read_kwargs)


def _read_saved_rows(numbers: pa.Table, *, manifest: SavedManifest,
                     skip_ids: pa.Array | None, **read_kwargs) -> pa.Table:
    """Decoded rows of the saved manifest's rows ``numbers["row"]`` (Ray Data may bundle
    blocks: each run of consecutive rows is one :func:`read_saved_block`)."""
    rows = np.asarray(numbers.column("row").to_numpy(zero_copy_only=False), np.int64)
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = [read_saved_block(manifest, int(run[0]), int(run[-1]) + 1, skip_ids=skip_ids,
                              **read_kwargs) for run in np.split(rows, cuts) if len(run)]
    return pa.concat_tables(parts) if parts else DECODED_SCHEMA.empty_table()


#: Fewest records a read block is cut down to for parallelism: every block is a task, a
#: part file and later a feature task, each with milliseconds of fixed cost.
MIN_BLOCK_ROWS = 256


def _cluster_cpus() -> int:
    import ray
    if not ray.is_initialized():
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def read_dataset(url: str | None = None, *, config: ReadConfig):
    """List ``url`` and read it: :func:`list_inputs` then :func:`read_images`.

    Parameters
    ----------
    url : str, optional
        Overrides ``config.url``: an image folder, packed shards, Parquet or tar files,
        on any fsspec URL (local path, ``s3://bucket/prefix``, ``gs://…``).
    config : ReadConfig

    Returns
    -------
    ray.data.Dataset
        Decoded rows (:data:`DECODED_SCHEMA`).

    Raises
    ------
    FileNotFoundError
        When ``url`` does not exist.
    ValueError
        When it holds nothing readable, or a Parquet input lacks the image or label column.
    """
    if url is not None and url != config.url:
        from dataclasses import replace
        config = replace(config, url=url)
    return read_images(list_inputs(config), config)


def read_totals(table: pa.Table | dict[str, Any]) -> dict[str, int]:
    """``records``, ``errors``, ``bytes_read`` and ``read_retries`` summed over decoded rows."""
    import pyarrow.compute as pc
    if isinstance(table, pa.Table):
        total = lambda c: int(pc.sum(table.column(c)).as_py() or 0)  # noqa: E731
        return {"records": table.num_rows, "errors": int(table.column("reason").is_valid()
                                                         .to_numpy(zero_copy_only=False).sum()),
                "bytes_read": total("bytes_read"), "read_retries": total("read_retries")}
    return {"records": len(table["reason"]),
            "errors": int(sum(r is not None for r in table["reason"])),
            "bytes_read": int(np.sum(table["bytes_read"])),
            "read_retries": int(np.sum(table["read_retries"]))}
