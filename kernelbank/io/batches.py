"""Turn a batch of decoded rows into arrays: one per row, or one stack per shape.

Decoded rows (:data:`kernelbank.io.readers.DECODED_SCHEMA`) carry each image as raw bytes
of its native dtype plus its ``shape`` and ``dtype``. A consumer fitting images in
batches wants one ``(n, *shape)`` array per shape: :func:`shape_groups` builds those with
one copy per group out of the batch's contiguous Arrow buffer, and with no
copy at all when a group's rows are adjacent (the reader sorts each block by shape, so
they usually are). Pinned, non-blocking host→device copies are the consumer's business;
a group's ``images`` is what to pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["ShapeGroup", "images_from_batch", "shape_groups"]

#: What a row without a ``dtype`` value holds (rows written before the column existed).
_DEFAULT_DTYPE = "float32"


@dataclass
class ShapeGroup:
    """Rows of a batch that share shape and dtype.

    Attributes
    ----------
    indices : ndarray of shape (n,), int64
        Their rows in the batch, ascending.
    images : ndarray of shape (n, *shape)
        Their pixels in the native dtype; a read-only view of the batch's buffer when
        the rows were adjacent, else a fresh array.
    """

    indices: np.ndarray
    images: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape each image of the group has."""
        return tuple(self.images.shape[1:])


def _columns(batch: pa.Table | dict[str, Any]) -> tuple[list, list, list]:
    if isinstance(batch, pa.Table):
        dtypes = batch.column("dtype").to_pylist() if "dtype" in batch.column_names \
            else [None] * batch.num_rows
        return batch.column("shape").to_pylist(), batch.column("pixels").to_pylist(), dtypes
    dtypes = list(batch["dtype"]) if "dtype" in batch else [None] * len(batch["pixels"])
    return list(batch["shape"]), list(batch["pixels"]), dtypes


def images_from_batch(batch: pa.Table | dict[str, Any]) -> list[np.ndarray | None]:
    """The images of a batch of decoded rows, in their native dtype (``None`` for error rows).

    Parameters
    ----------
    batch : pyarrow.Table or dict of columns
        Rows with ``shape``, ``pixels`` and (optionally) ``dtype``; a row without a
        dtype holds float32.

    Returns
    -------
    list of ndarray of shape ``shape`` (read-only views of the batch's bytes)
    """
    shapes, pixels, dtypes = _columns(batch)
    return [None if data is None else
            np.frombuffer(data, dtype=np.dtype(dtype or _DEFAULT_DTYPE)).reshape(
                tuple(int(s) for s in shape))
            for shape, data, dtype in zip(shapes, pixels, dtypes)]


def _group_keys(batch: pa.Table) -> tuple[np.ndarray, list[tuple[tuple[int, ...], str]]]:
    """Per row a group number (-1 for error rows) and each group's (shape, dtype)."""
    pixels = batch.column("pixels")
    valid = np.asarray(pixels.is_valid())
    shapes = batch.column("shape").to_pylist()
    dtypes = batch.column("dtype").to_pylist() if "dtype" in batch.column_names \
        else [None] * batch.num_rows
    keys: dict[tuple[tuple[int, ...], str], int] = {}
    codes = np.full(batch.num_rows, -1, np.int64)
    for i in np.flatnonzero(valid):
        key = (tuple(shapes[i]), dtypes[i] or _DEFAULT_DTYPE)
        codes[i] = keys.setdefault(key, len(keys))
    return codes, list(keys)


def shape_groups(batch: pa.Table) -> list[ShapeGroup]:
    """Stack the images of a batch by (shape, dtype); error rows are left out.

    Parameters
    ----------
    batch : pyarrow.Table
        Decoded rows (``shape``, ``dtype``, ``pixels``), e.g. from
        ``iter_batches(batch_format="pyarrow")`` or a ``map_batches`` call.

    Returns
    -------
    list of ShapeGroup
        In order of first appearance. Cost: one Python step per row to read the shapes
        and one copy per group (none when the group's rows are adjacent).

    Examples
    --------
    >>> for group in shape_groups(batch):                                 # doctest: +SKIP
    ...     result = kb.fit(torch.from_numpy(group.images), basis)        # one call per shape
    """
    if not isinstance(batch, pa.Table):
        raise TypeError(f"shape_groups needs a pyarrow.Table batch, got {type(batch).__name__}"
                        " (use batch_format='pyarrow')")
    codes, keys = _group_keys(batch)
    if not keys:
        return []
    pixels = batch.column("pixels").combine_chunks()
    if pixels.type != pa.large_binary():
        pixels = pixels.cast(pa.large_binary())
    _, offset_buffer, data_buffer = pixels.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64)[pixels.offset:pixels.offset + len(pixels) + 1]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None \
        else np.zeros(0, np.uint8)
    groups = []
    for code, (shape, dtype) in enumerate(keys):
        rows = np.flatnonzero(codes == code)
        dtype = np.dtype(dtype)
        width = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        starts = offsets[rows]
        if len(rows) == 1 or (np.all(np.diff(rows) == 1) and
                              np.all(np.diff(starts) == width)):
            flat = data[starts[0]:starts[0] + width * len(rows)]            # no copy
            flat.flags.writeable = False            # it is the batch's Arrow buffer
        else:
            flat = np.concatenate([data[s:s + width] for s in starts])      # one copy
        groups.append(ShapeGroup(rows, flat.view(dtype).reshape((len(rows),) + shape)))
    return groups
