"""Decoded rows -> arrays: per row, and stacked per (shape, dtype) (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kernelbank.io.batches import images_from_batch, shape_groups
from kernelbank.io.readers import DECODED_SCHEMA


def _rows(images: list[np.ndarray | None]) -> pa.Table:
    return pa.Table.from_pylist([
        {"id": str(i), "path": str(i), "label": "", "split": "unsplit",
         "shape": [] if im is None else list(im.shape),
         "dtype": None if im is None else im.dtype.name,
         "pixels": None if im is None else im.tobytes(),
         "stage": None if im is not None else "decode",
         "reason": None if im is not None else "bad", "bytes_read": 0, "read_retries": 0}
        for i, im in enumerate(images)], schema=DECODED_SCHEMA)


def test_interleaved_shapes_and_dtypes_are_stacked_per_group():
    rng = np.random.default_rng(0)
    images = []
    for i in range(30):                     # shapes and dtypes interleaved, some error rows
        shape = [(8, 9), (5, 5), (8, 9)][i % 3]
        dtype = np.uint16 if i % 5 == 0 else np.uint8
        images.append(None if i % 7 == 3 else rng.integers(0, 200, shape).astype(dtype))
    batch = _rows(images)
    groups = shape_groups(batch.slice(2))   # a slice: offsets do not start at 0
    expected: dict = {}
    for i, image in enumerate(images[2:]):  # independent: group row by row
        if image is not None:
            expected.setdefault((image.shape, image.dtype.name), []).append(i)
    assert [(g.shape, g.images.dtype.name) for g in groups] == list(expected)
    for group in groups:
        rows = expected[(group.shape, group.images.dtype.name)]
        assert group.indices.tolist() == rows
        np.testing.assert_array_equal(group.images, np.stack([images[2 + i] for i in rows]))


def test_adjacent_rows_are_a_view_not_a_copy():
    images = [np.full((4, 6), i, np.uint8) for i in range(5)]
    batch = _rows(images)
    (group,) = shape_groups(batch)
    np.testing.assert_array_equal(group.images, np.stack(images))
    assert not group.images.flags.owndata and not group.images.flags.writeable


def test_rows_without_dtype_hold_float32_and_numpy_batches_work():
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    batch = {"shape": [np.array([2, 3])], "pixels": [image.tobytes()]}
    (out,) = images_from_batch(batch)
    np.testing.assert_array_equal(out, image)
    with pytest.raises(TypeError, match="batch_format='pyarrow'"):
        shape_groups(batch)
    assert shape_groups(_rows([None, None])) == []
