"""``kernelbank pack`` and tar shards on real files and moto S3 (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from kernelbank.cli import main as cli_main
from kernelbank.config import ReadConfig
from kernelbank.io.manifest import list_inputs, manifest_info, split_and_label
from kernelbank.io.pack import pack_images, plan_shards
from kernelbank.io.readers import read_block
from kernelbank.io.storage import read_filesystem

from ..stages.pipeline_data import png_bytes


def _images(root, n: int = 40, seed: int = 0) -> dict[str, bytes]:
    """``root/{train,test}/c<k>/<i>.png`` of varied sizes; returns path -> file bytes."""
    rng = np.random.default_rng(seed)
    files = {}
    for i in range(n):
        split = "test" if i % 5 == 0 else "train"
        path = root / split / f"c{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = png_bytes(rng.integers(0, 256, (8 + i % 4, 9), np.uint8))
        path.write_bytes(data)
        files[str(path)] = data
    return files


def _shard_rows(folder) -> list[dict]:
    return [row for shard in sorted(folder.glob("shard-*.parquet"))
            for row in pq.read_table(shard).to_pylist()]


def test_pack_round_trip_keeps_every_image_once_byte_for_byte(tmp_path):
    files = _images(tmp_path / "in")
    (tmp_path / "in" / "README.txt").write_text("not an image")
    result = cli_main(["pack", str(tmp_path / "in"), str(tmp_path / "out"),
                       "--shard-mb", "0.001", "--group-rows", "3", "-q"])
    assert result == 0
    rows = _shard_rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == sorted(files)              # every image, once
    for row in rows:
        assert row["image"] == files[row["id"]] and row["size"] == len(files[row["id"]])
        assert (row["split"], row["label"]) == split_and_label(row["id"], str(tmp_path / "in"))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["format"] == "kernelbank-shards" and manifest["errors"] == 0
    assert manifest["rows"] == len(files) and manifest["bytes"] == sum(map(len, files.values()))
    assert len(manifest["shards"]) > 2
    for shard in manifest["shards"]:
        meta = pq.read_metadata(tmp_path / "out" / shard["path"])
        assert meta.num_rows == shard["rows"]
        assert all(meta.row_group(g).num_rows <= 3 for g in range(meta.num_row_groups))
        assert shard["file_bytes"] == (tmp_path / "out" / shard["path"]).stat().st_size
    # the shard folder lists as shards, from the small columns, with the folder's ids
    listed = list_inputs(ReadConfig(str(tmp_path / "out")))
    assert manifest_info(listed)["layout"] == "shards"
    assert sorted(listed.column("id").to_pylist()) == sorted(files)


def test_pack_refuses_to_clobber(tmp_path):
    _images(tmp_path / "in", n=6)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a kernelbank pack output"):
        pack_images(str(tmp_path / "in"), str(tmp_path / "other"), overwrite=True)
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="overlap"):
        pack_images(str(tmp_path / "in"), str(tmp_path / "in" / "shards"))
    pack_images(str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        pack_images(str(tmp_path / "in"), str(tmp_path / "out"))
    again = pack_images(str(tmp_path / "in"), str(tmp_path / "out"), overwrite=True)
    assert again["rows"] == 6 and len(list((tmp_path / "out").glob("shard-*"))) == 1


def test_plan_shards_cuts_by_bytes():
    sizes = np.random.default_rng(5).integers(1, 50, 1000)
    shard_of = plan_shards(sizes, 400)
    assert shard_of[0] == 0 and set(np.diff(shard_of)) <= {0, 1}     # consecutive records
    totals = np.bincount(shard_of, weights=sizes)
    assert np.all(totals[:-1] > 400 - 50) and np.all(totals <= 400 + 50)
    # a shard overshoots by less than one record (here two 500-byte records)
    assert plan_shards(np.array([500, 1, 1, 500, 1]), 100).tolist() == [0, 1, 1, 1, 2]


@pytest.mark.s3
def test_pack_from_and_to_s3(s3_endpoint, s3_bucket, tmp_path):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    files = _images(tmp_path / "in", n=20)
    for path, data in files.items():
        fs.pipe_file(f"{s3_bucket}/in/" + path[len(str(tmp_path / "in")) + 1:], data)
    config = ReadConfig(f"s3://{s3_bucket}/in", s3_endpoint=s3_endpoint)
    result = pack_images(config.url, f"s3://{s3_bucket}/shards", shard_mb=0.001, config=config)
    assert result["rows"] == 20 and len(result["shards"]) >= 2
    listed = list_inputs(ReadConfig(f"s3://{s3_bucket}/shards", s3_endpoint=s3_endpoint))
    read_fs, _ = read_filesystem(f"s3://{s3_bucket}/shards", s3_endpoint=s3_endpoint)
    rows = read_block(listed, fs=read_fs, config=config).to_pylist()
    by_name = {r["id"].rsplit("/", 1)[-1]: r for r in rows}
    for path, data in files.items():
        row = by_name[path.rsplit("/", 1)[-1]]
        assert row["reason"] is None
        with np.testing.assert_no_warnings():
            from PIL import Image
            np.testing.assert_array_equal(
                np.frombuffer(row["pixels"], row["dtype"]).reshape(row["shape"]),
                np.asarray(Image.open(io.BytesIO(data))))


def test_tar_shards_with_cls_members_and_folder_labels(tmp_path):
    rng = np.random.default_rng(4)
    images = {}
    (tmp_path / "train" / "grass").mkdir(parents=True)

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp_path / "train" / "part-0.tar", "w") as tar:   # labels in .cls
        for i in range(5):
            image = rng.integers(0, 256, (7, 8), np.uint8)
            images[f"s{i}.png"] = (image, f"class{i % 2}", "train")
            add(tar, f"s{i}.png", png_bytes(image))
            add(tar, f"s{i}.cls", f"class{i % 2}\n".encode())
    with tarfile.open(tmp_path / "train" / "grass" / "part-1.tar", "w") as tar:  # folder label
        for i in range(3):
            image = rng.integers(0, 256, (6, 6), np.uint8)
            images[f"g{i}.png"] = (image, "grass", "train")
            add(tar, f"g{i}.png", png_bytes(image))
    config = ReadConfig(str(tmp_path))
    manifest = list_inputs(config)
    assert manifest_info(manifest)["layout"] == "tar" and manifest.num_rows == 8
    fs, _ = read_filesystem(str(tmp_path))
    rows = read_block(manifest, fs=fs, config=config).to_pylist()
    for row in rows:
        image, label, split = images[row["id"].rsplit("#", 1)[1]]
        assert (row["label"], row["split"], row["reason"]) == (label, split, None)
        np.testing.assert_array_equal(
            np.frombuffer(row["pixels"], row["dtype"]).reshape(row["shape"]), image)
    # one ranged GET per tar, from its first image's data to its last image's end
    spans = 0
    for path in tmp_path.rglob("*.tar"):
        with tarfile.open(path) as tar:
            members = [m for m in tar if m.name.endswith(".png")]
        spans += max(m.offset_data + m.size for m in members) - members[0].offset_data
    assert sum(r["bytes_read"] for r in rows) == spans
