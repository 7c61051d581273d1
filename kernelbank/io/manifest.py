"""List an input once into a manifest: one row per record, what to fetch and its label.

:func:`list_inputs` turns an input URL into a :class:`pyarrow.Table` (the *manifest*)
that every later read works from, so that a run lists its input exactly once (a
listing of a million objects is minutes of requests; reading it back is a second):

``id``          unique record id: the file's path (folders), the stored id (packed
                shards), ``<file>#<id or row>`` (other Parquet), ``<tar>#<member>`` (tar)
``path``        where the record is, protocol-free (``<shard>#<id>`` inside a shard)
``size``        bytes of the encoded record (from the listing; null when unknown)
``label``       class name; ``""`` when unknown
``split``       ``train``/``test``/``val``/``validation`` or ``unsplit``
``shard``       the Parquet or tar file holding the record (null for plain files)
``shard_size``  that file's size in bytes (so reads need no HEAD)
``group``       Parquet row group of the record (null otherwise)
``member``      row index in the Parquet file / member index in the tar
``offset``      byte offset of a tar member's data (null otherwise)

Layouts (``ReadConfig.format``; ``auto`` picks in this order):

* **packed shards** — a folder with ``_manifest.json`` written by ``kernelbank pack``
  (:mod:`kernelbank.io.pack`): only the small ``id/label/split/size`` columns of each
  shard are read, never the images;
* **image folders** — ``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` with
  PNG, JPEG, TIFF or ``.npy`` files; sizes come from the listing itself (no HEAD per
  object), zero-byte directory markers and other files are skipped;
* **Parquet** — files with an image column (encoded bytes, a ``{bytes: …}`` struct or a
  nested list) and a label column, optional split and id columns;
* **tar shards** (WebDataset style) — ``<key>.png`` (or another image extension) with an
  optional ``<key>.cls`` holding the label, else the label of the tar's folder. Listing a
  tar reads its headers, which on an object store streams the tar once: pack big inputs
  into Parquet shards instead.

Schema metadata keeps the layout, the input root and the image column, so a manifest
written to Parquet (:func:`save_manifest`) and read back (:func:`load_manifest`) is all a
resumed run needs.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import InputFormat, ReadConfig
from .decode import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS
from .fetch import RangeFile, RetryPolicy
from .records import footer_bytes
from .storage import is_local, join, resolve

__all__ = ["MANIFEST_SCHEMA", "SPLIT_NAMES", "UNSPLIT", "SHARDS_MANIFEST", "SHARDS_FORMAT",
           "list_inputs", "listing_parts", "split_and_label", "plan_blocks", "save_manifest",
           "load_manifest", "manifest_info", "SavedManifest", "save_listing", "open_manifest",
           "footers_path_of", "check_input"]

SPLIT_NAMES = ("train", "test", "val", "validation")
UNSPLIT = "unsplit"
#: The file ``kernelbank pack`` writes last into a shard folder, and its format tag.
SHARDS_MANIFEST = "_manifest.json"
SHARDS_FORMAT = "kernelbank-shards"
LABEL_EXTENSIONS = ("cls", "txt", "label")

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("size", pa.int64()),
    ("label", pa.string()), ("split", pa.string()),
    ("shard", pa.string()), ("shard_size", pa.int64()), ("group", pa.int32()),
    ("member", pa.int64()), ("offset", pa.int64()),
])
_SPLIT_LABEL = (r"^(?:(?P<split>(?i:validation|train|test|val))/)?"
                r"(?:(?P<label>[^/]*)/)?")
_META = "kernelbank."
_CHUNK_ROWS = 100_000


def split_and_label(path: str, root: str) -> tuple[str, str]:
    """Split and class of a file from its directories below ``root``.

    >>> split_and_label("/data/train/brick/a.png", "/data")
    ('train', 'brick')
    >>> split_and_label("bucket/imgs/grass/b.png", "bucket/imgs")
    ('unsplit', 'grass')
    """
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path
    parts = rel.split("/")[:-1]
    split = UNSPLIT
    if parts and parts[0].lower() in SPLIT_NAMES:
        split, parts = parts[0].lower(), parts[1:]
    return split, (parts[0] if parts else "")


def _splits_and_labels(paths: pa.Array, root: str) -> tuple[pa.Array, pa.Array]:
    """:func:`split_and_label` for a whole column at once (Arrow kernels, no Python loop)."""
    rel = pc.utf8_slice_codeunits(paths, len(root.rstrip("/")) + 1)
    found = pc.extract_regex(rel, _SPLIT_LABEL)
    split = pc.utf8_lower(pc.struct_field(found, "split"))
    split = pc.if_else(pc.equal(split, ""), UNSPLIT, split)
    return split, pc.struct_field(found, "label")


# ---------------------------------------------------------------------------- listing files
def _chunk(paths: list[str], sizes: list[int]) -> pa.Table:
    return pa.table({"path": pa.array(paths, pa.string()), "size": pa.array(sizes, pa.int64())})


def _walk_local(root: str) -> Iterator[pa.Table]:
    """``path, size`` chunks of every file below ``root`` (``os.scandir``, one stat each)."""
    stack, paths, sizes = [root], [], []
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    paths.append(entry.path)
                    sizes.append(entry.stat().st_size)
        if len(paths) >= _CHUNK_ROWS:
            yield _chunk(paths, sizes)
            paths, sizes = [], []
    yield _chunk(paths, sizes)


def _walk_s3(fs, root: str) -> Iterator[pa.Table]:
    """``path, size`` chunks of a prefix, page by page (s3fs's ``find`` would also keep
    every entry as a dict in its listing cache: about a gigabyte for a million keys)."""
    from fsspec.asyn import sync
    bucket, _, prefix = root.partition("/")
    prefix = prefix + "/" if prefix else ""

    async def collect() -> list[pa.Table]:
        chunks, paths, sizes = [], [], []
        async for info in fs._iterdir(bucket, prefix=prefix, delimiter=""):
            paths.append(info["name"])
            sizes.append(info["size"])
            if len(paths) >= _CHUNK_ROWS:
                chunks.append(_chunk(paths, sizes))
                paths, sizes = [], []
        chunks.append(_chunk(paths, sizes))
        return chunks

    yield from sync(fs.loop, collect)


def _walk(fs, root: str) -> Iterator[pa.Table]:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if is_local(fs):
        yield from _walk_local(root)
    elif "s3" in protocols and hasattr(fs, "_iterdir"):
        yield from _walk_s3(fs, root)
    else:
        files = [(p, i) for p, i in fs.find(root, detail=True).items()
                 if i.get("type") != "directory"]
        yield _chunk([p for p, _ in files], [int(i.get("size") or 0) for _, i in files])


def _listing(fs, root: str) -> pa.Table:
    """``path, size`` of every object below ``root``, sorted by path."""
    table = pa.concat_tables(list(_walk(fs, root)))
    return table.take(pc.sort_indices(table, [("path", "ascending")]))


def _extension_mask(paths: pa.Array, extensions: tuple[str, ...]) -> pa.Array:
    pattern = r"\.(?:" + "|".join(extensions) + r")$"
    return pc.match_substring_regex(paths, pattern, ignore_case=True)


def _empty_manifest() -> pa.Table:
    return MANIFEST_SCHEMA.empty_table()


def _with_metadata(table: pa.Table, **meta: str) -> pa.Table:
    return table.replace_schema_metadata({f"{_META}{k}": str(v) for k, v in meta.items()})


def manifest_info(manifest: pa.Table) -> dict[str, str]:
    """The layout, root and image column a manifest was listed with."""
    meta = manifest.schema.metadata or {}
    return {k.decode()[len(_META):]: v.decode() for k, v in meta.items()
            if k.decode().startswith(_META)}


def _folder_manifest(files: pa.Table, root: str) -> pa.Table:
    paths = files.column("path")
    split, label = _splits_and_labels(paths, root)
    n = files.num_rows
    nulls = lambda t: pa.nulls(n, t)  # noqa: E731
    return pa.Table.from_arrays(
        [paths, paths, files.column("size"), label, split, nulls(pa.string()),
         nulls(pa.int64()), nulls(pa.int32()), nulls(pa.int64()), nulls(pa.int64())],
        schema=MANIFEST_SCHEMA)


# ---------------------------------------------------------------------------- Parquet
#: Rows listed per unit of work: a Parquet file is listed a few row groups at a time, so
#: the driver holds a few units' rows, not whole 256 MB shards' (a million 32×32 images
#: are 4 shards of 250,000 rows).
LISTING_UNIT_ROWS = 16_384


@dataclass(frozen=True)
class _ParquetUnit:
    """Consecutive row groups of one Parquet file to list together."""

    path: str
    size: int
    metadata: Any           # pyarrow.parquet.FileMetaData, read once per file
    groups: list[int]
    first_row: int          # the file row of the first group's first row


def _footer(fs, path: str, size: int, config: ReadConfig) -> pq.FileMetaData:
    """A Parquet file's footer, checked for the image and label columns."""
    handle = RangeFile(fs, path, size, RetryPolicy(attempts=config.read_attempts))
    metadata = pq.ParquetFile(handle).metadata
    names = metadata.schema.to_arrow_schema().names
    missing = [c for c in (config.image_column, config.label_column) if c not in names]
    if missing:
        raise ValueError(f"Parquet input {path!r} has no column {missing} (columns: {names});"
                         " set image_column/label_column (--image-column/--label-column)")
    return metadata


def _units(path: str, size: int, metadata: pq.FileMetaData) -> Iterator[_ParquetUnit]:
    """The file's row groups in runs of about :data:`LISTING_UNIT_ROWS` rows."""
    groups: list[int] = []
    first = rows = 0
    for g in range(metadata.num_row_groups):
        count = metadata.row_group(g).num_rows
        if groups and rows + count > LISTING_UNIT_ROWS:
            yield _ParquetUnit(path, size, metadata, groups, first)
            groups, first, rows = [], first + rows, 0
        groups.append(g)
        rows += count
    if groups:
        yield _ParquetUnit(path, size, metadata, groups, first)


def _unit_manifest(fs, unit: _ParquetUnit, config: ReadConfig, packed: bool) -> pa.Table:
    """Manifest rows of a unit (reads the small columns of its row groups only)."""
    handle = RangeFile(fs, unit.path, unit.size, RetryPolicy(attempts=config.read_attempts))
    parquet = pq.ParquetFile(handle, pre_buffer=True, metadata=unit.metadata)
    names = parquet.schema_arrow.names
    wanted = [config.label_column] + [c for c in (config.split_column, config.id_column, "size")
                                      if c in names]
    small = parquet.read_row_groups(unit.groups, columns=wanted)
    n = small.num_rows
    groups = np.repeat(np.asarray(unit.groups, np.int32),
                       [unit.metadata.row_group(g).num_rows for g in unit.groups])
    rows = pa.array(np.arange(unit.first_row, unit.first_row + n, dtype=np.int64))
    label = pc.fill_null(pc.cast(small.column(config.label_column), pa.string()), "")
    if config.split_column in names:
        split = pc.utf8_lower(pc.cast(small.column(config.split_column), pa.string()))
        split = pc.fill_null(pc.if_else(pc.equal(split, ""), UNSPLIT, split), UNSPLIT)
    else:
        split = pa.repeat(pa.scalar(UNSPLIT), n)
    key = pc.cast(small.column(config.id_column), pa.string()) \
        if config.id_column in names else pc.cast(rows, pa.string())
    prefixed = pc.binary_join_element_wise(unit.path, key, "#")
    record_id = key if packed else prefixed
    sizes = pc.cast(small.column("size"), pa.int64()) if packed and "size" in names \
        else pa.nulls(n, pa.int64())
    return pa.Table.from_arrays(
        [record_id, prefixed, sizes, label, split, pa.repeat(pa.scalar(unit.path), n),
         pa.array(np.full(n, unit.size, np.int64)), pa.array(groups), rows,
         pa.nulls(n, pa.int64())], schema=MANIFEST_SCHEMA)


def _ordered_map(fn, items, workers: int = 16) -> Iterator[Any]:
    """``fn(item)`` of every item (any iterable, consumed as results are), in order, at
    most ``workers`` running or waiting to be consumed (``ThreadPoolExecutor.map`` would
    keep every finished listing until the last)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            if len(pending) >= workers:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


def _parquet_parts(fs, files: list[tuple[str, int]], config: ReadConfig, packed: bool,
                   footers: dict[str, bytes] | None = None) -> Iterator[pa.Table]:
    """Manifest parts of Parquet files, a unit of row groups each: the footers are read
    16 at a time, the units listed 4 at a time (each a few MB of ids and paths)."""
    def units() -> Iterator[_ParquetUnit]:
        for (path, size), metadata in zip(files, _ordered_map(
                lambda f: _footer(fs, f[0], f[1], config), files)):
            if footers is not None:
                footers[path] = footer_bytes(metadata)
            yield from _units(path, size, metadata)
    return _ordered_map(lambda unit: _unit_manifest(fs, unit, config, packed), units(),
                        workers=4)


def _read_shards_manifest(fs, root: str) -> dict[str, Any] | None:
    path = join(root, SHARDS_MANIFEST)
    try:
        content = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    return content if content.get("format") == SHARDS_FORMAT else None


# ---------------------------------------------------------------------------- tar
def _tar_manifest(fs, path: str, size: int, root: str) -> pa.Table:
    """Manifest rows of one tar: image members, labelled by ``<key>.cls`` or the folder."""
    images: list[tuple[str, int, int]] = []
    labels: dict[str, str] = {}
    image_ext = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.rpartition(".")
            ext = ext.lower()
            if ext in image_ext:
                images.append((info.name, info.offset_data, info.size))
            elif ext in LABEL_EXTENSIONS:
                labels[key] = tar.extractfile(info).read().decode("utf-8", "replace").strip()
    split, folder_label = split_and_label(path, root)
    n = len(images)
    names = [name for name, _, _ in images]
    ids = [f"{path}#{name}" for name in names]
    label = [labels.get(name.rpartition(".")[0], folder_label) for name in names]
    return pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(ids, pa.string()),
         pa.array([s for _, _, s in images], pa.int64()), pa.array(label, pa.string()),
         pa.repeat(pa.scalar(split), n), pa.repeat(pa.scalar(path), n),
         pa.array(np.full(n, size, np.int64)), pa.nulls(n, pa.int32()),
         pa.array(np.arange(n, dtype=np.int64)),
         pa.array([o for _, o, _ in images], pa.int64())], schema=MANIFEST_SCHEMA)


def _tar_parts(fs, files: list[tuple[str, int]], root: str) -> Iterator[pa.Table]:
    return _ordered_map(lambda f: _tar_manifest(fs, f[0], f[1], root), files)


# ---------------------------------------------------------------------------- entry point
def _files_with(listing: pa.Table, extensions: tuple[str, ...]) -> pa.Table:
    return listing.filter(_extension_mask(listing.column("path"), extensions))


def list_inputs(config: ReadConfig) -> pa.Table:
    """List ``config.url`` once into a manifest (see the module docstring for columns).

    Parameters
    ----------
    config : ReadConfig
        ``url``, ``format``, Parquet column names and the S3 endpoint.

    Returns
    -------
    pyarrow.Table
        Schema :data:`MANIFEST_SCHEMA`; rows sorted by path (files) or by shard and
        row/member (shards). Schema metadata: ``kernelbank.layout`` (``folder``,
        ``parquet``, ``shards`` or ``tar``), ``kernelbank.root``, ``kernelbank.url``,
        ``kernelbank.image_column``.

    Raises
    ------
    FileNotFoundError
        When ``config.url`` does not exist.
    ValueError
        When it holds nothing readable, or a Parquet file lacks the image/label column.

    Examples
    --------
    >>> manifest = list_inputs(ReadConfig("s3://bucket/textures"))     # doctest: +SKIP
    >>> manifest.num_rows, pc.sum(manifest["size"]).as_py()           # doctest: +SKIP
    (1000000, 4812000000)
    """
    meta, parts = listing_parts(config)
    parts = [p for p in parts if p.num_rows] or [_empty_manifest()]
    return _with_metadata(pa.concat_tables(parts), **meta)


#: File kinds an input may hold (besides the shards' ``_manifest.json``).
INPUT_EXTENSIONS = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS + ("parquet", "tar")


def check_input(config: ReadConfig) -> None:
    """Fail at once, before any output or Ray exists, when the input is missing or empty.

    Cheap whatever the input's size: a single file is checked to exist; a local folder is
    walked only until its first image, volume, Parquet or tar file; a remote folder only
    needs one entry (its full listing is the fit stage's, made once). A folder with files
    but no image is still reported by the listing itself.

    Raises
    ------
    FileNotFoundError
        When ``config.url`` does not exist.
    ValueError
        When it is a folder with no input file in it.
    """
    fs, root = resolve(config.url, s3_endpoint=config.s3_endpoint)
    if not fs.exists(root):
        raise FileNotFoundError(f"input {config.url!r} does not exist: pass an image folder "
                                "(root/<class>/<image>), Parquet or tar shards, or leave out "
                                "--input for the built-in textures")
    if not fs.isdir(root):
        return
    if is_local(fs):
        for _, _, names in os.walk(root):
            if any(n.rsplit(".", 1)[-1].lower() in INPUT_EXTENSIONS for n in names):
                return
        found = False
    else:
        found = bool(fs.ls(root, detail=False))
    if not found:
        raise ValueError(f"input {config.url!r} is empty: no PNG/JPEG/TIFF/.npy image, Parquet "
                         "or tar file in it (images go in root/<class>/<image> or "
                         "root/<split>/<class>/<image>)")


def listing_parts(config: ReadConfig, footers: dict[str, bytes] | None = None
                  ) -> tuple[dict[str, str], Iterator[pa.Table]]:
    """The manifest as a stream: its metadata and its rows, part by part.

    One part per shard, Parquet or tar file (listed a few at a time, in order), or one
    part for a folder (sorting a folder's listing needs all of it). Concatenated, the
    parts are :func:`list_inputs`; :func:`save_listing` writes them as they come, so a
    listing of shards never holds more than a few shards' rows. Each Parquet file's
    footer is put in ``footers`` (when given) as its part is listed.
    """
    fs, root = resolve(config.url, s3_endpoint=config.s3_endpoint)
    if not fs.exists(root):
        raise FileNotFoundError(f"input {config.url!r} does not exist")
    meta = {"url": config.url, "root": root, "image_column": config.image_column}
    if not fs.isdir(root):                              # a single image, Parquet or tar file
        size = int(fs.size(root))
        parent = root.rsplit("/", 1)[0]
        if root.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS + VOLUME_EXTENSIONS:
            one = pa.table({"path": pa.array([root]), "size": pa.array([size], pa.int64())})
            return dict(meta, layout="folder", root=parent), iter([_folder_manifest(one, parent)])
        if root.lower().endswith(".tar") or config.format is InputFormat.TAR:
            return dict(meta, layout="tar"), _tar_parts(fs, [(root, size)], parent)
        return dict(meta, layout="parquet"), _parquet_parts(fs, [(root, size)], config,
                                                            packed=False, footers=footers)
    shards = _read_shards_manifest(fs, root) if config.format in (
        InputFormat.AUTO, InputFormat.PARQUET) else None
    if shards is not None:
        files = [(join(root, s["path"]), int(s["file_bytes"])) for s in shards["shards"]]
        packed = replace(config, image_column="image", label_column="label",
                         split_column="split", id_column="id")
        return (dict(meta, layout="shards", image_column="image"),
                _parquet_parts(fs, files, packed, packed=True, footers=footers))
    listing = _listing(fs, root)
    images = _files_with(listing, IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    images = images.filter(pc.invert(pc.ends_with(images.column("path"), "/")))
    kind = config.format
    if kind is InputFormat.AUTO:
        if images.num_rows:
            kind = InputFormat.FOLDER
        elif _files_with(listing, ("parquet",)).num_rows:
            kind = InputFormat.PARQUET
        elif _files_with(listing, ("tar",)).num_rows:
            kind = InputFormat.TAR
        else:
            raise ValueError(f"input {config.url!r} holds no PNG/JPEG/TIFF/.npy image, Parquet "
                             f"or tar file ({listing.num_rows} other files)")
    if kind is InputFormat.FOLDER:
        return dict(meta, layout="folder"), iter([_folder_manifest(images, root)])
    if kind is InputFormat.PARQUET:
        files = _files_with(listing, ("parquet",))
        return dict(meta, layout="parquet"), _parquet_parts(
            fs, list(zip(files["path"].to_pylist(), files["size"].to_pylist())), config,
            packed=False, footers=footers)
    files = _files_with(listing, ("tar",))
    return dict(meta, layout="tar"), _tar_parts(
        fs, list(zip(files["path"].to_pylist(), files["size"].to_pylist())), root)


# ---------------------------------------------------------------------------- blocks
def plan_blocks(manifest: pa.Table, *, target_bytes: int, max_rows: int, min_blocks: int = 1
                ) -> list[tuple[int, int]]:
    """Cut the manifest into read blocks: ``[(start, stop), …]`` row ranges.

    A block ends where its encoded bytes reach ``target_bytes`` or its rows reach
    ``max_rows`` (fewer when ``min_blocks`` asks for more parallelism), and never inside
    a Parquet row group, so that no row group is fetched by two tasks. Rows of unknown
    size count as the mean known size.
    """
    n = manifest.num_rows
    if n == 0:
        return []
    sizes = manifest.column("size").to_numpy(zero_copy_only=False)
    sizes = np.asarray(sizes, dtype=np.float64)
    known = np.isfinite(sizes)
    sizes[~known] = sizes[known].mean() if known.any() else 1.0
    total = float(sizes.sum())
    target = max(1.0, min(float(target_bytes), total / max(1, min_blocks)))
    rows = max(1, min(int(max_rows), -(-n // max(1, min_blocks))))
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    by_bytes = np.floor(before / target).astype(np.int64)
    by_rows = np.arange(n, dtype=np.int64) // rows
    starts = np.flatnonzero((np.diff(by_bytes) != 0) | (np.diff(by_rows) != 0)) + 1
    # row groups are indivisible: move each cut to the start of the group it falls in
    group = manifest.column("group")
    if group.null_count < n:
        shard = manifest.column("shard")
        if not pa.types.is_integer(shard.type):         # the planning table has codes
            shard = pc.dictionary_encode(shard).combine_chunks().indices
        # a row group is a run of equal (shard, group) pairs: compare them as integers
        shard_code = np.asarray(pc.fill_null(shard, -1).to_numpy(zero_copy_only=False), np.int64)
        group_code = np.asarray(pc.fill_null(group, -1).to_numpy(zero_copy_only=False), np.int64)
        changed = (np.diff(shard_code) != 0) | (np.diff(group_code) != 0)
        group_starts = np.concatenate([[0], np.flatnonzero(changed) + 1])
        starts = group_starts[np.searchsorted(group_starts, starts, side="right") - 1]
    starts = np.unique(np.concatenate([[0], starts[(starts > 0) & (starts < n)]]))
    stops = np.concatenate([starts[1:], [n]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


# ---------------------------------------------------------------------------- persistence
def save_manifest(manifest: pa.Table, fs, path: str) -> None:
    """Write the manifest as one Parquet file (its metadata kept) with ``fs``."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(manifest, handle, compression="zstd")


def load_manifest(fs, path: str) -> pa.Table:
    """A manifest written by :func:`save_manifest`."""
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


# ---------------------------------------------------------------------------- saved, streamed
#: Rows per row group of a saved listing: a read task reads its block's one or two groups.
SAVED_GROUP_ROWS = 4096


@dataclass(frozen=True)
class SavedManifest:
    """A manifest kept in a Parquet file and read a block at a time, never whole.

    What the driver of a million-image run holds instead of the listing itself: the file,
    its row count, the input's bytes and the layout metadata. Read tasks take their rows
    with :meth:`read`; block planning reads three small columns (:meth:`planning_table`).

    Attributes
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
        Protocol-free path of the Parquet file (:func:`save_listing`).
    rows : int
    input_bytes : int
        Sum of the listed sizes (unknown sizes count 0).
    info : dict
        :func:`manifest_info` of the listing (layout, root, url, image column).
    footers_path : str, optional
        The Parquet shards' footers, saved with the listing (:func:`footers_path_of`).
    """

    fs: Any
    path: str
    rows: int
    input_bytes: int
    info: dict
    footers_path: str | None = None

    def footers(self) -> dict[str, bytes]:
        """Each Parquet file's footer (:func:`~kernelbank.io.records.footer_bytes`), by
        the ``shard`` of its rows; empty for other layouts or an older listing."""
        if self.footers_path is None:
            return {}
        with self.fs.open(self.footers_path, "rb") as handle:
            table = pq.read_table(handle)
        return dict(zip(table.column("shard").to_pylist(), table.column("footer").to_pylist()))

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` (with the listing's metadata), reading only their groups."""
        with self.fs.open(self.path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            counts = [parquet.metadata.row_group(g).num_rows
                      for g in range(parquet.num_row_groups)]
            firsts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            groups = [g for g in range(len(counts)) if firsts[g] < stop and firsts[g + 1] > start]
            if not groups:
                return MANIFEST_SCHEMA.empty_table()
            table = parquet.read_row_groups(groups)
        return table.slice(start - int(firsts[groups[0]]), stop - start)

    def planning_table(self) -> pa.Table:
        """``size``, ``shard`` (as an integer code) and ``group`` of every row: what
        :func:`plan_blocks` needs, a few bytes per row."""
        with self.fs.open(self.path, "rb") as handle:
            table = pq.read_table(handle, columns=["size", "shard", "group"],
                                  read_dictionary=["shard"]).unify_dictionaries()
        codes = pa.chunked_array([chunk.indices for chunk in table.column("shard").chunks],
                                 pa.int32())
        return table.set_column(1, "shard", codes)


def save_listing(config: ReadConfig, fs, path: str,
                 group_rows: int = SAVED_GROUP_ROWS) -> SavedManifest:
    """List ``config.url`` straight into a Parquet file at ``path``; its handle.

    The listing is written part by part (:func:`listing_parts`), so memory holds a few
    shards' rows whatever the input's size (a folder's listing is held whole: it is
    sorted). The file appears complete or not at all (written under a temporary name,
    then moved), so a run that stops while listing lists again when resumed.
    """
    footers: dict[str, bytes] = {}
    meta, parts = listing_parts(config, footers)
    schema = _with_metadata(_empty_manifest(), **meta).schema
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    partial = path + ".partial"
    rows = input_bytes = 0
    with fs.open(partial, "wb") as handle:
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            for part in parts:
                if part.num_rows:
                    writer.write_table(part.cast(schema), row_group_size=group_rows)
                    rows += part.num_rows
                    input_bytes += int(pc.sum(part.column("size")).as_py() or 0)
    saved_footers = None
    if footers:                 # before the listing appears: a listing implies its footers
        saved_footers = footers_path_of(path)
        with fs.open(saved_footers, "wb") as handle:
            pq.write_table(pa.table({"shard": list(footers), "footer": list(footers.values())},
                                    schema=_FOOTERS_SCHEMA), handle)
    fs.mv(partial, path)
    return SavedManifest(fs, path, rows, input_bytes, meta, saved_footers)


_FOOTERS_SCHEMA = pa.schema([("shard", pa.string()), ("footer", pa.large_binary())])


def footers_path_of(listing_path: str) -> str:
    """Where :func:`save_listing` keeps the shards' footers of the listing at ``path``
    (``<name>.footers.parquet`` beside it)."""
    stem = listing_path[:-len(".parquet")] if listing_path.endswith(".parquet") else listing_path
    return stem + ".footers.parquet"


def open_manifest(fs, path: str) -> SavedManifest:
    """The handle of a listing saved by :func:`save_listing` (or :func:`save_manifest`)."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        rows = parquet.metadata.num_rows
        info = manifest_info(parquet.schema_arrow.empty_table())
        sizes = parquet.read(columns=["size"]).column(0)
    footers = footers_path_of(path)
    return SavedManifest(fs, path, rows, int(pc.sum(sizes).as_py() or 0), info,
                         footers if fs.exists(footers) else None)
