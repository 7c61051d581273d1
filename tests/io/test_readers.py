"""read_images / read_dataset on a real local Ray: folders, packed shards, Parquet, volumes,
moto S3 (with a throttling proxy), decoder limits, shape grouping and progress lines."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kernelbank.config import ReadConfig
from kernelbank.io import images_from_batch, read_dataset
from kernelbank.io.batches import shape_groups
from kernelbank.io.manifest import list_inputs
from kernelbank.io.pack import pack_images
from kernelbank.io.readers import read_images, read_totals
from kernelbank.stages.progress import Progress, track

from ..stages.pipeline_data import BAD_RECORDS, png_bytes, write_dataset
from .s3proxy import ThrottlingProxy
from .test_decode import EPS, _npy_header_only, _png_bomb

pytestmark = [pytest.mark.ray]


def _rows(ds) -> list[dict]:
    import ray
    tables = ray.get(ds.to_arrow_refs())
    return sorted(pa.concat_tables(tables).to_pylist(), key=lambda r: r["id"])


def _pixels(row: dict) -> np.ndarray:
    return np.frombuffer(row["pixels"], row["dtype"]).reshape(row["shape"])


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
                                 "pixels": [r["pixels"] for r in rows],
                                 "dtype": [r["dtype"] for r in rows]})
    for got, want in zip(decoded[:3], images[:3]):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert decoded[3] is None and rows[3]["stage"] == "decode"

    # arrays as nested lists, no split/id columns: row-number ids, split "unsplit"
    arrays = pa.table({"pixels_in": [i.astype(np.float64).tolist() for i in images[:2]],
                       "cls": [1, 2]})
    (tmp_path / "arrays").mkdir()
    pq.write_table(arrays, tmp_path / "arrays" / "part-0.parquet")
    config = ReadConfig(str(tmp_path / "arrays"), image_column="pixels_in", label_column="cls")
    rows = _rows(read_dataset(config=config))
    assert sorted(r["label"] for r in rows) == ["1", "2"]
    assert {r["split"] for r in rows} == {"unsplit"} and len({r["id"] for r in rows}) == 2
    for row, want in zip(rows, images[:2]):
        assert row["dtype"] == "float32"
        np.testing.assert_array_equal(_pixels(row), want.astype(np.float32))


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


def test_shards_and_folder_give_identical_rows(ray_local, tmp_path):
    write_dataset(tmp_path / "images", per_class=8, size=16)
    (tmp_path / "images/test/c2/eps.png").write_bytes(EPS)
    (tmp_path / "images/test/c2/bomb.png").write_bytes(_png_bomb(9000))
    (tmp_path / "images/train/c0/huge.npy").write_bytes(_npy_header_only((9000, 9000), "<f4"))
    packed = pack_images(str(tmp_path / "images"), str(tmp_path / "shards"), shard_mb=0.01,
                         group_rows=5)
    assert len(packed["shards"]) > 2
    config = ReadConfig(str(tmp_path / "images"), min_side=5)
    folder = _rows(read_dataset(config=config))
    shards = _rows(read_dataset(str(tmp_path / "shards"), config=config))
    keys = ("id", "label", "split", "shape", "dtype", "pixels", "stage", "reason")
    assert [{k: r[k] for k in keys} for r in shards] == [{k: r[k] for k in keys} for r in folder]
    assert len(folder) == 3 * 8 * 2 + len(BAD_RECORDS) + 3
    reasons = {r["id"].rsplit("/", 1)[-1]: r["reason"] for r in folder if r["reason"]}
    assert "not a readable PNG/JPEG/TIFF" in reasons["eps.png"]
    assert "larger than max_pixels" in reasons["bomb.png"]
    assert "more than max_pixels" in reasons["huge.npy"]
    good = [r for r in folder if r["reason"] is None]
    for row in good:                       # independent decode of the source file
        np.testing.assert_array_equal(_pixels(row), np.asarray(Image.open(row["id"])))
    # bytes read: the folder reads each file once; shards add footers and small columns
    input_bytes = sum(p.stat().st_size for p in (tmp_path / "images").rglob("*")
                      if p.suffix in (".png", ".npy"))
    assert sum(r["bytes_read"] for r in folder) == input_bytes
    assert sum(r["bytes_read"] for r in shards) >= packed["bytes"]
    # the same shards through a saved listing (each read task reads its own manifest rows),
    # with a resumed run's completed ids left out
    from kernelbank.io.manifest import save_listing
    from kernelbank.io.storage import resolve
    fs, root = resolve(str(tmp_path))
    saved = save_listing(ReadConfig(str(tmp_path / "shards")), fs, f"{root}/fit/_inputs.parquet",
                         group_rows=4)
    done = [r["id"] for r in shards[::3]]
    config = ReadConfig(str(tmp_path / "shards"), min_side=5, block_rows=7)
    streamed = _rows(read_images(saved, config, skip_ids=pa.array(done)))
    assert [{k: r[k] for k in keys} for r in streamed] == \
        [{k: r[k] for k in keys} for r in shards if r["id"] not in set(done)]
    # the listing kept each shard's footer: read tasks fetch exactly the image column
    # chunks of the row groups they need, nothing else
    assert saved.footers_path and len(saved.footers()) == len(packed["shards"])
    listing = saved.read(0, saved.rows).to_pylist()
    wanted = {(r["shard"], r["group"]) for r in listing if r["id"] not in set(done)}
    chunks = 0
    for shard, group in wanted:
        meta = pq.ParquetFile(shard).metadata.row_group(group)
        image = [meta.column(c) for c in range(meta.num_columns)
                 if meta.column(c).path_in_schema == "image"][0]
        chunks += image.total_compressed_size
    assert sum(r["bytes_read"] for r in streamed) == chunks


def _upload(s3_endpoint, bucket: str, n: int) -> tuple[object, dict[str, np.ndarray]]:
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    rng = np.random.default_rng(7)
    images = {f"{bucket}/imgs/{'train' if i % 4 else 'test'}/c{i % 3}/{i:04d}.png":
              rng.integers(0, 256, (9, 11), np.uint8) for i in range(n)}
    fs.pipe({path: png_bytes(image) for path, image in images.items()})
    return fs, images


@pytest.mark.s3
def test_s3_reader_returns_every_object_once_and_a_deleted_one_as_error(
        ray_local, s3_endpoint, s3_bucket):
    fs, images = _upload(s3_endpoint, s3_bucket, 150)
    config = ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=s3_endpoint, fetch_concurrency=16)
    manifest = list_inputs(config)
    gone = sorted(images)[17]
    fs.rm(gone)                                           # deleted between listing and read
    rows = _rows(read_images(manifest, config))
    assert [r["id"] for r in rows] == sorted(images)      # every object exactly once
    by_id = {r["id"]: r for r in rows}
    missing = by_id.pop(gone)
    assert missing["stage"] == "read" and missing["reason"].startswith("cannot read: not found")
    for path, row in by_id.items():
        assert row["reason"] is None and row["label"] == path.split("/")[3]
        assert row["split"] == path.split("/")[2]
        np.testing.assert_array_equal(_pixels(row), images[path])
    totals = read_totals(pa.Table.from_pylist(rows))
    assert totals["errors"] == 1 and totals["read_retries"] == 0
    assert totals["bytes_read"] == sum(manifest.column("size").to_pylist()) - \
        manifest.filter(pa.compute.equal(manifest["id"], gone))["size"][0].as_py()


@pytest.mark.s3
def test_throttling_on_ray_is_retried_and_counted(ray_local, s3_endpoint, s3_bucket):
    _, images = _upload(s3_endpoint, s3_bucket, 40)
    failures = lambda key: 1 if int(key[-8:-4]) % 2 else 0           # every odd key once
    with ThrottlingProxy(s3_endpoint, failures) as proxy:
        config = ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=proxy.url)
        rows = _rows(read_dataset(config=config))
    assert proxy.injected == 20 == sum(r["read_retries"] for r in rows)
    assert all(r["reason"] is None for r in rows) and len(rows) == 40
    assert [r["read_retries"] for r in rows] == [failures(r["id"]) for r in rows]


def test_mixed_sizes_come_grouped_for_few_fit_calls(ray_local, tmp_path):
    rng = np.random.default_rng(2)
    sides = (16, 24, 32)
    truth = {}
    for i in range(240):                  # path order interleaves the three sizes
        side = sides[i % 3]
        image = rng.integers(0, 256, (side, side + 1), np.uint8)
        path = tmp_path / "c0" / f"{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(image))
        truth[str(path)] = image
    config = ReadConfig(str(tmp_path), override_num_blocks=4)
    calls = rows = 0
    for batch in read_dataset(config=config).iter_batches(batch_size=None,
                                                          batch_format="pyarrow"):
        shapes = [tuple(s) for s in batch.column("shape").to_pylist()]
        runs = 1 + sum(a != b for a, b in zip(shapes[:-1], shapes[1:]))
        assert runs == len(set(shapes))            # each shape is one contiguous run
        groups = shape_groups(batch)
        assert len(groups) == len(set(shapes)) <= 3
        ids = batch.column("id").to_pylist()
        for group in groups:
            assert group.images.dtype == np.uint8
            for index, image in zip(group.indices, group.images):
                np.testing.assert_array_equal(image, truth[ids[index]])
        calls += len(groups)
        rows += batch.num_rows
    assert rows == 240 and calls <= 3 * 8            # one call per shape per block, not per image


def test_progress_lines_while_results_stream(ray_local, tmp_path):
    write_dataset(tmp_path, per_class=4, size=16)
    config = ReadConfig(str(tmp_path), min_side=5)
    manifest = list_inputs(config)
    stream = io.StringIO()                            # not a terminal: lines are printed
    with Progress("read", total=manifest.num_rows, interval=0.0, stream=stream) as progress:
        for _ in track(read_images(manifest, config).iter_batches(batch_format="pyarrow"),
                       progress):
            pass
    lines = stream.getvalue().splitlines()
    total = manifest.num_rows
    assert lines and all(line.startswith("[kernelbank] read: ") for line in lines)
    assert f"{total}/{total} images (100.0%)" in lines[-1]
    assert lines[-1].endswith(f", {len(BAD_RECORDS)} errors")
