"""read_dataset on a real local Ray: Parquet inputs (encoded bytes, arrays) and volumes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelbank.config import ReadConfig
from kernelbank.io import images_from_batch, read_dataset

from ..stages.pipeline_data import png_bytes

pytestmark = [pytest.mark.ray]


def _rows(ds) -> list[dict]:
    import ray
    tables = ray.get(ds.to_arrow_refs())
    return sorted(pa.concat_tables(tables).to_pylist(), key=lambda r: r["id"])


def test_parquet_with_encoded_bytes_and_arrays(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 10 + i), dtype=np.uint8) for i in range(4)]
    encoded = pa.table({"image": [png_bytes(i) for i in images[:3]] + [b"garbage"],
                        "label": ["a", "b", "a", "b"], "split": ["train", "TEST", "train", "test"],
                        "id": ["r0", "r1", "r2", "r3"]})
    pq.write_table(encoded, tmp_path / "encoded.parquet")
    rows = _rows(read_dataset(config=ReadConfig(str(tmp_path / "encoded.parquet"), min_side=5)))
    assert [r["id"].split("#")[1] for r in rows] == ["r0", "r1", "r2", "r3"]
    assert [r["split"] for r in rows] == ["train", "test", "train", "test"]
    decoded = images_from_batch({"shape": [r["shape"] for r in rows],
                                 "pixels": [r["pixels"] for r in rows]})
    for got, want in zip(decoded[:3], images[:3]):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    assert decoded[3] is None and rows[3]["stage"] == "decode"

    # arrays as nested lists, no split/id columns: content-hash ids, split "unsplit"
    arrays = pa.table({"pixels_in": [i.astype(np.float64).tolist() for i in images[:2]],
                       "cls": [1, 2]})
    (tmp_path / "arrays").mkdir()
    pq.write_table(arrays, tmp_path / "arrays" / "part-0.parquet")
    config = ReadConfig(str(tmp_path / "arrays"), image_column="pixels_in", label_column="cls")
    rows = _rows(read_dataset(config=config))
    assert sorted(r["label"] for r in rows) == ["1", "2"]
    assert {r["split"] for r in rows} == {"unsplit"} and len({r["id"] for r in rows}) == 2
    shapes = sorted(tuple(r["shape"]) for r in rows)
    assert shapes == [(12, 10), (12, 11)]


def test_parquet_without_label_column_is_a_clear_error(ray_local, tmp_path):
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no column .*label"):
        read_dataset(config=ReadConfig(str(tmp_path / "x.parquet")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset(config=ReadConfig(str(tmp_path / "missing")))


def test_npy_volumes_with_ndim_3(ray_local, tmp_path):
    rng = np.random.default_rng(1)
    for label in ("p", "q"):
        (tmp_path / label).mkdir()
        np.save(tmp_path / label / "v.npy", rng.normal(size=(6, 7, 8)).astype(np.float32))
    rows = _rows(read_dataset(config=ReadConfig(str(tmp_path), ndim=3, min_side=5)))
    assert [(r["label"], r["shape"], r["reason"]) for r in rows] == \
        [("p", [6, 7, 8], None), ("q", [6, 7, 8], None)]
    rows = _rows(read_dataset(config=ReadConfig(str(tmp_path), ndim=2)))
    assert all("--ndim 3" in r["reason"] for r in rows)
