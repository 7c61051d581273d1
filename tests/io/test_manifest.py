"""Listing inputs into a manifest (no Ray): real folders, Parquet files and moto S3."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelbank.config import ReadConfig
from kernelbank.io.manifest import (MANIFEST_SCHEMA, _splits_and_labels, list_inputs,
                                    load_manifest, manifest_info, plan_blocks, save_manifest,
                                    split_and_label)
from kernelbank.io.storage import resolve

from ..stages.pipeline_data import png_bytes


def _tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_folder_listing_has_sizes_labels_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    files = {f"{split}/{label}/{i}.png": png_bytes(rng.integers(0, 256, (8, 8 + i), np.uint8))
             for split in ("train", "TEST") for label in ("brick", "grass") for i in range(3)}
    files.update({"val/loose.png": png_bytes(np.zeros((4, 4), np.uint8)),
                  "root.PNG": png_bytes(np.zeros((4, 4), np.uint8)),
                  "notes.txt": b"not an image", "train/brick/empty.npy": b""})
    _tree(tmp_path, files)
    manifest = list_inputs(ReadConfig(str(tmp_path)))
    assert manifest.schema.remove_metadata() == MANIFEST_SCHEMA
    assert manifest_info(manifest)["layout"] == "folder"
    rows = manifest.to_pylist()
    expected = sorted(str(tmp_path / rel) for rel in files if not rel.endswith(".txt"))
    assert [r["path"] for r in rows] == expected and [r["id"] for r in rows] == expected
    for row in rows:
        assert row["size"] == os.path.getsize(row["path"])       # from the listing, no HEAD
        assert (row["split"], row["label"]) == split_and_label(row["path"], str(tmp_path))
        assert row["shard"] is None and row["member"] is None
    labels = {os.path.relpath(r["path"], tmp_path): (r["split"], r["label"]) for r in rows}
    assert labels["TEST/grass/0.png"] == ("test", "grass")
    assert labels["val/loose.png"] == ("val", "") and labels["root.PNG"] == ("unsplit", "")


def test_vectorised_split_and_label_equals_the_scalar_rule():
    paths = ["/r/train/a/x.png", "/r/Test/b/c/d.png", "/r/b.png", "/r/val/b.png",
             "/r/validation/q/z.tif", "/r/trainx/q.png", "/r/VALIDATION/x.png", "/r/a/b/c.png",
             "/r/train.png", "/r//weird.png"]
    split, label = _splits_and_labels(pa.array(paths), "/r")
    assert list(zip(split.to_pylist(), label.to_pylist())) == \
        [split_and_label(p, "/r") for p in paths]


def test_parquet_listing_reads_no_images_and_checks_columns(tmp_path):
    table = pa.table({"image": [b"a" * 10, b"b" * 20, b"c" * 30], "label": ["x", None, "y"],
                      "split": ["TRAIN", None, "test"]})
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=2)
    manifest = list_inputs(ReadConfig(str(tmp_path)))
    path = str(tmp_path / "part.parquet")
    assert manifest.column("id").to_pylist() == [f"{path}#{i}" for i in range(3)]
    assert manifest.column("label").to_pylist() == ["x", "", "y"]
    assert manifest.column("split").to_pylist() == ["train", "unsplit", "test"]
    assert manifest.column("group").to_pylist() == [0, 0, 1]
    assert manifest.column("member").to_pylist() == [0, 1, 2]
    assert set(manifest.column("shard_size").to_pylist()) == {os.path.getsize(path)}
    with pytest.raises(ValueError, match="no column .*label"):
        list_inputs(ReadConfig(str(tmp_path), label_column="cls"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(ReadConfig(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no PNG"):
        list_inputs(ReadConfig(str(tmp_path / "empty")))


def _shard_manifest(groups: list[int]) -> pa.Table:
    """A manifest of one Parquet shard whose row groups have the given row counts."""
    n = sum(groups)
    return pa.table({
        "id": [str(i) for i in range(n)], "path": [str(i) for i in range(n)],
        "size": pa.array(np.full(n, 100), pa.int64()), "label": [""] * n, "split": [""] * n,
        "shard": ["s.parquet"] * n, "shard_size": pa.array(np.full(n, 1), pa.int64()),
        "group": pa.array(np.repeat(np.arange(len(groups)), groups), pa.int32()),
        "member": pa.array(np.arange(n), pa.int64()), "offset": pa.nulls(n, pa.int64())},
        schema=MANIFEST_SCHEMA)


def _check_partition(blocks, n):
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a < b for a, b in blocks)
    assert all(b == c for (_, b), (c, _) in zip(blocks[:-1], blocks[1:]))   # no gap, no overlap


def test_plan_blocks_cuts_by_bytes_and_rows():
    sizes = np.random.default_rng(1).integers(1, 1000, 5000)
    manifest = pa.table({"size": pa.array(sizes, pa.int64()), "shard": pa.nulls(5000, pa.string()),
                         "group": pa.nulls(5000, pa.int32())})
    blocks = plan_blocks(manifest, target_bytes=50_000, max_rows=300)
    _check_partition(blocks, 5000)
    for a, b in blocks:
        assert b - a <= 300
        # a block closes at the first record that crosses the byte target
        assert sizes[a:b - 1].sum() < 50_000 + 1000
    assert len(blocks) >= sizes.sum() / 50_000
    # min_blocks asks for parallelism on a small input
    assert len(plan_blocks(manifest.slice(0, 40), target_bytes=1 << 30, max_rows=4096,
                           min_blocks=4)) >= 4


def test_plan_blocks_never_splits_a_row_group():
    manifest = _shard_manifest([7, 7, 7, 3, 10])
    blocks = plan_blocks(manifest, target_bytes=1 << 30, max_rows=5)
    _check_partition(blocks, 34)
    group_starts = {0, 7, 14, 21, 24}
    assert {a for a, _ in blocks} <= group_starts            # every block starts a group
    assert all(b - a <= 5 + 10 for a, b in blocks)            # max_rows + the largest group
    assert len(blocks) >= 4
    # two shards of one row group each: group 0 of the second shard is another group
    two = pa.concat_tables([_shard_manifest([10]), _shard_manifest([10]).set_column(
        5, "shard", pa.array(["t.parquet"] * 10))])
    assert plan_blocks(two, target_bytes=1 << 30, max_rows=5) == [(0, 10), (10, 20)]


def test_manifest_round_trips_through_parquet(tmp_path):
    _tree(tmp_path / "in", {"a/1.png": png_bytes(np.zeros((4, 4), np.uint8))})
    manifest = list_inputs(ReadConfig(str(tmp_path / "in")))
    fs, root = resolve(str(tmp_path))
    save_manifest(manifest, fs, f"{root}/run/manifest.parquet")
    back = load_manifest(fs, f"{root}/run/manifest.parquet")
    assert back.equals(manifest) and manifest_info(back) == manifest_info(manifest)


@pytest.mark.s3
def test_s3_listing_skips_directory_markers(s3_endpoint, s3_bucket):
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    payload = {f"{s3_bucket}/imgs/train/c{i % 2}/{i:03d}.png": png_bytes(
        np.full((6, 6), i, np.uint8)) for i in range(12)}
    for path, data in payload.items():
        fs.pipe_file(path, data)
    fs.call_s3("put_object", Bucket=s3_bucket, Key="imgs/train/c0/", Body=b"")  # a marker
    fs.call_s3("put_object", Bucket=s3_bucket, Key="imgs/train/", Body=b"")
    manifest = list_inputs(ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=s3_endpoint))
    assert manifest.column("path").to_pylist() == sorted(payload)
    assert manifest.column("size").to_pylist() == [len(payload[p]) for p in sorted(payload)]
    assert set(manifest.column("label").to_pylist()) == {"c0", "c1"}
    assert set(manifest.column("split").to_pylist()) == {"train"}


def _packed_shards(root, n_shards: int, rows: int, group_rows: int) -> None:
    """``n_shards`` shards of ``rows`` PNGs each (row groups of ``group_rows``) + manifest."""
    import fsspec
    from kernelbank.io.pack import ShardWriter, write_shards_manifest
    fs, entries, k = fsspec.filesystem("file"), [], 0
    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for s in range(n_shards):
        with ShardWriter(fs, str(root / f"shard-{s:06d}.parquet")) as shard:
            for start in range(0, rows, group_rows):
                count = min(group_rows, rows - start)
                ids = [f"{'test' if i % 4 == 0 else 'train'}/c{i % 3}/{i:05d}.png"
                       for i in range(k, k + count)]
                shard.write(ids, ids, [i.split("/")[1] for i in ids],
                            [i.split("/")[0] for i in ids],
                            [png_bytes(rng.integers(0, 256, (6, 5 + i % 3), np.uint8))
                             for i in range(count)])
                k += count
        entries.append({"path": f"shard-{s:06d}.parquet", **shard.entry})
    write_shards_manifest(fs, str(root), entries, source="test")


def test_saved_listing_equals_the_listing_and_reads_any_row_range(tmp_path):
    """A listing streamed to Parquet (what the fit stage keeps instead of a table on the
    driver) holds the same rows, metadata and block plan; any range reads back exactly."""
    from kernelbank.io.manifest import open_manifest, save_listing
    _packed_shards(tmp_path / "in", n_shards=3, rows=50, group_rows=7)
    config = ReadConfig(str(tmp_path / "in"))
    listed = list_inputs(config)
    fs, root = resolve(str(tmp_path))
    saved = save_listing(config, fs, f"{root}/fit/_inputs.parquet", group_rows=16)
    assert not fs.exists(f"{root}/fit/_inputs.parquet.partial")
    for handle in (saved, open_manifest(fs, f"{root}/fit/_inputs.parquet")):
        assert handle.rows == listed.num_rows == 150
        assert handle.input_bytes == sum(listed.column("size").to_pylist())
        assert handle.info == manifest_info(listed)
        assert handle.read(0, handle.rows).equals(listed)
        for start, stop in [(0, 1), (15, 17), (10, 49), (140, 150), (33, 33)]:
            assert handle.read(start, stop).to_pylist() == listed.slice(start, stop - start
                                                                        ).to_pylist()
        # block plans agree, row groups of the shards kept whole
        kwargs = {"target_bytes": 600, "max_rows": 20, "min_blocks": 3}
        assert plan_blocks(handle.planning_table(), **kwargs) == plan_blocks(listed, **kwargs)
    assert pq.read_metadata(tmp_path / "fit" / "_inputs.parquet").num_row_groups >= 150 // 16


def test_listing_parts_are_produced_a_few_at_a_time():
    """Per-file listings are consumed in order while at most ``workers`` are ahead: a
    listing of thousands of shards never holds them all."""
    from kernelbank.io.manifest import _ordered_map
    started = []

    def list_one(item):
        started.append(item)
        return item * 10
    out = []
    for value in _ordered_map(list_one, list(range(100)), workers=4):
        out.append((value, len(started)))
    assert [v for v, _ in out] == [i * 10 for i in range(100)]
    assert all(n <= k + 5 for k, (_, n) in enumerate(out))


def test_a_parquet_file_is_listed_a_few_row_groups_at_a_time(tmp_path, monkeypatch):
    """Listing units of a few row groups (bounded driver memory) give the same manifest as
    one unit per file: every row once, in file order, with its group and file row."""
    import kernelbank.io.manifest as manifest_module
    _packed_shards(tmp_path / "in", n_shards=2, rows=50, group_rows=7)
    config = ReadConfig(str(tmp_path / "in"))
    whole = list_inputs(config)
    monkeypatch.setattr(manifest_module, "LISTING_UNIT_ROWS", 10)
    units = list(manifest_module._units("x", 1, pq.read_metadata(
        tmp_path / "in" / "shard-000000.parquet")))
    # groups of 7 rows and a last one of 1: units of at most 10 rows
    assert [u.groups for u in units] == [[g] for g in range(6)] + [[6, 7]]
    assert [u.first_row for u in units] == [7 * g for g in range(7)]
    assert list_inputs(config).equals(whole)
    first = whole.filter(pa.compute.ends_with(whole.column("shard"), "shard-000000.parquet"))
    assert first.column("member").to_pylist() == list(range(50))
    assert first.column("group").to_pylist() == [r // 7 for r in range(50)]
