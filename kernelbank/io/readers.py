"""Read image datasets into Ray Data as decoded, validated rows.

:func:`read_dataset` is the one entry point. It lists and reads raw bytes on Ray (the
driver never opens an image), then decodes in Ray tasks fused with the read:

* image folders ``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` (split one of
  ``train``, ``test``, ``val``, ``validation``) with PNG, JPEG, TIFF or ``.npy`` files;
  ``read_binary_files`` with ``file_extensions`` (which also skips the zero-byte
  "directory marker" keys some S3 tools create);
* Parquet with an image column (encoded bytes, a struct with a ``bytes`` field, or a
  nested list / tensor array) and a label column (optional split and id columns).

Each output row is one record, decoded or not (:data:`DECODED_SCHEMA`):

``id``      unique record id (the file path, or ``<parquet file>#<id or content hash>``)
``path``    where the record came from
``label``   class name (directory or label column); a record without one (a file
            directly under the root, a null or empty label cell) is an error row
``split``   ``train``/``test``/``val``… from the path or column, ``"unsplit"`` otherwise;
            a null split cell makes an error row (it is not guessed)
``shape``   ``list<int32>`` image shape, ``(H, W)`` or ``(D, H, W)``
``pixels``  the image as C-order float32 bytes (null for an error row)
``stage``   ``"decode"`` for an error row (``"label"`` for a missing label or split), null
            otherwise
``reason``  why the record was rejected, null otherwise

Why decoded float32 bytes plus a shape rather than tensor columns or the encoded bytes:
rows of any size share one Arrow schema (variable-shaped tensor columns break block
concatenation in Ray), decoding and validation run on cheap CPU tasks that overlap the
fitting actors (a GPU actor then only does math), and a rejected record is already an
error row before any actor sees it. The cost is 4 bytes per pixel in the object store
while a batch is in flight; nothing is kept beyond that.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import InputFormat, ReadConfig
from .decode import IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, decode_record
from .storage import ray_filesystem, resolve

__all__ = ["DECODED_SCHEMA", "SPLIT_NAMES", "UNSPLIT", "read_dataset", "images_from_batch",
           "split_and_label"]

SPLIT_NAMES = ("train", "test", "val", "validation")
UNSPLIT = "unsplit"

DECODED_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("label", pa.string()),
    ("split", pa.string()), ("shape", pa.list_(pa.int32())), ("pixels", pa.large_binary()),
    ("stage", pa.string()), ("reason", pa.string()),
])


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


def _row(rid: str, path: str, label: str, split: str, image: np.ndarray | None,
         reason: str | None, stage: str = "decode") -> dict[str, Any]:
    shape = () if image is None else image.shape
    return {"id": rid, "path": path, "label": label, "split": split,
            "shape": [int(s) for s in shape],
            "pixels": None if image is None or reason else image.tobytes(),
            "stage": None if reason is None else stage, "reason": reason}


#: Error-row stage of a record whose class or split is missing (no guess is made).
LABEL_STAGE = "label"
NO_LABEL = ("no label: the file lies directly under the input root, not in a class folder "
            "(root/<class>/<image> or root/<split>/<class>/<image>)")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def _decode_files(batch: pa.Table, *, root: str, ndim: int, min_side: int) -> pa.Table:
    rows = []
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        split, label = split_and_label(path, root)
        if not label:
            rows.append(_row(path, path, label, split, None, NO_LABEL, LABEL_STAGE))
            continue
        image, reason = decode_record(data, path, ndim, min_side)
        rows.append(_row(path, path, label, split, image, reason))
    return _table(rows)


def _cell_value(value: Any) -> Any:
    """Bytes, or an ndarray, from one Parquet image cell."""
    if isinstance(value, dict):              # {"bytes": ..., "path": ...} (Hugging Face style)
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    array = np.asarray(value)
    if array.dtype == object:                # nested lists arrive as arrays of arrays
        array = np.stack([np.asarray(v) for v in array])
    return array


def _decode_parquet(batch: dict[str, np.ndarray], *, config: ReadConfig, has_split: bool,
                    has_id: bool) -> pa.Table:
    rows = []
    images = batch[config.image_column]
    for i in range(len(images)):
        path = str(batch["path"][i])
        label = "" if batch[config.label_column][i] is None else str(batch[config.label_column][i])
        split_cell = batch[config.split_column][i] if has_split else UNSPLIT
        split = "" if split_cell is None else str(split_cell).lower()
        try:
            value = _cell_value(images[i])
        except Exception as error:
            value, early = None, f"cannot read image cell: {type(error).__name__}: {error}"
        else:
            early = None if value is not None else "image cell is empty"
        if has_id:
            rid = f"{path}#{batch[config.id_column][i]}"
        else:
            content = value if isinstance(value, bytes) else \
                (b"" if value is None else np.ascontiguousarray(value).tobytes())
            rid = f"{path}#{hashlib.sha1(content).hexdigest()[:16]}"
        if early:
            rows.append(_row(rid, rid, label, split, None, early))
            continue
        if not label or not split:
            why = (f"no label: column {config.label_column!r} is empty" if not label else
                   f"no split: column {config.split_column!r} is null (not guessed)")
            rows.append(_row(rid, rid, label, split, None, why, LABEL_STAGE))
            continue
        image, reason = decode_record(value, "", config.ndim, config.min_side)
        rows.append(_row(rid, rid, label, split, image, reason))
    return _table(rows)


def _is_parquet(fs, path: str, config: ReadConfig) -> bool:
    if config.format is not InputFormat.AUTO:
        return config.format is InputFormat.PARQUET
    if path.endswith(".parquet"):
        return True
    if not fs.isdir(path):
        return False
    for _, _, files in fs.walk(path, maxdepth=3):
        if any(f.endswith(".parquet") for f in files):
            return True
        if any(f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS + VOLUME_EXTENSIONS
               for f in files):
            return False
    return False


def read_dataset(url: str | None = None, *, config: ReadConfig):
    """Read an image dataset from ``url`` as a lazy Ray Dataset of decoded rows.

    Parameters
    ----------
    url : str, optional
        Overrides ``config.url``: an image folder, a ``.npy`` volume folder, or Parquet,
        on any fsspec URL (local path, ``s3://bucket/prefix``, ``gs://…``).
    config : ReadConfig
        Format, column names, ``ndim``, ``min_side`` and the S3 endpoint.

    Returns
    -------
    ray.data.Dataset
        One row per record with the columns of :data:`DECODED_SCHEMA`; records that
        cannot be decoded, are smaller than ``config.min_side`` or contain NaN/inf have
        ``pixels`` null and ``stage``/``reason`` set. Nothing is read until the
        dataset is consumed; decoding happens in Ray tasks.

    Raises
    ------
    FileNotFoundError
        When ``url`` does not exist.
    ValueError
        When a Parquet input lacks the image or label column.

    Examples
    --------
    >>> ds = read_dataset(config=ReadConfig("s3://bucket/textures", min_side=9))  # doctest: +SKIP
    >>> for batch in ds.iter_batches(batch_format="pyarrow"):               # doctest: +SKIP
    ...     images = images_from_batch(batch)                               # list of ndarrays
    """
    import ray.data

    url = url or config.url
    fs, path = resolve(url, s3_endpoint=config.s3_endpoint)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {url!r} does not exist")
    filesystem = ray_filesystem(fs)
    if _is_parquet(fs, path, config):
        ds = ray.data.read_parquet(path, filesystem=filesystem, include_paths=True,
                                   override_num_blocks=config.override_num_blocks)
        names = ds.schema().names
        missing = [c for c in (config.image_column, config.label_column) if c not in names]
        if missing:
            raise ValueError(f"Parquet input {url!r} has no column {missing} (columns: {names});"
                             " set image_column/label_column (--image-column/--label-column)")
        has_split, has_id = config.split_column in names, config.id_column in names
        keep = [config.image_column, config.label_column, "path"] + \
            ([config.split_column] if has_split else []) + ([config.id_column] if has_id else [])
        return ds.select_columns(keep).map_batches(
            _decode_parquet, batch_format="numpy", zero_copy_batch=True,
            fn_kwargs={"config": config, "has_split": has_split, "has_id": has_id})
    extensions = list(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    extensions += [e.upper() for e in extensions]
    ds = ray.data.read_binary_files(path, filesystem=filesystem, include_paths=True,
                                    file_extensions=extensions,
                                    override_num_blocks=config.override_num_blocks)
    return ds.map_batches(_decode_files, batch_format="pyarrow",
                          fn_kwargs={"root": path, "ndim": config.ndim,
                                     "min_side": config.min_side})


def images_from_batch(batch: pa.Table | dict[str, Any]) -> list[np.ndarray | None]:
    """The float32 images of a batch of decoded rows (``None`` for error rows).

    Parameters
    ----------
    batch : pyarrow.Table or dict of columns
        Rows with ``shape`` and ``pixels`` (see :data:`DECODED_SCHEMA`).

    Returns
    -------
    list of ndarray of shape ``shape``, float32 (read-only views of the batch's bytes)
    """
    if isinstance(batch, pa.Table):
        shapes, pixels = batch.column("shape").to_pylist(), batch.column("pixels").to_pylist()
    else:
        shapes, pixels = batch["shape"], batch["pixels"]
    return [None if data is None else
            np.frombuffer(data, dtype=np.float32).reshape(tuple(int(s) for s in shape))
            for shape, data in zip(shapes, pixels)]
