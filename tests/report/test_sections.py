"""Values the report derives itself, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from kernelbank.report.sections import precision_recall


def test_precision_recall_equal_scikit_learn_on_expanded_predictions():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    matrix = rng.integers(0, 7, size=(4, 4))
    matrix[:, 3] = 0                       # "d" never predicted: precision 0 by convention
    matrix[2] = 0                          # no true "c": recall 0 by convention
    y_true = np.repeat(np.repeat(labels, 4), matrix.ravel())
    y_pred = np.repeat(np.tile(labels, 4), matrix.ravel())
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    ours = precision_recall(matrix, labels)
    np.testing.assert_allclose(ours["precision"], p, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], r, atol=1e-12)
    np.testing.assert_allclose(ours["f1"], f, atol=1e-12)
    np.testing.assert_array_equal(ours["support"], s)
    assert not np.allclose(p, r)           # the data tell precision and recall apart


def _png(array: np.ndarray) -> bytes:
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("with_id", [True, False])
def test_sample_images_are_read_back_from_parquet_rows(tmp_path, with_id):
    """Parquet records are named ``<file>#<id or row>``, as the reader names them (content
    hashes, the older naming, still resolve)."""
    import hashlib
    import pyarrow as pa
    import pyarrow.parquet as pq
    from kernelbank.report.collect import _load_sample
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 255, size=(12, 9), dtype=np.uint8) for _ in range(3)]
    blobs = [_png(a) for a in arrays]
    columns = {"image": blobs, "label": ["a", "b", "a"]}
    if with_id:
        columns["id"] = ["r0", "r1", "r2"]
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table(columns), path)
    row_ids = ["r1"] if with_id else ["1", hashlib.sha1(blobs[1]).hexdigest()[:16]]
    for row_id in row_ids:
        sample = {"path": f"{path}#{row_id}", "label": "b", "split": "test"}
        _load_sample(sample, str(tmp_path), 2, None)
        np.testing.assert_array_equal(sample["image"], arrays[1])
    missing = {"path": f"{path}#nope", "label": "b", "split": "test"}
    _load_sample(missing, str(tmp_path), 2, None)
    assert "image" not in missing and "no row 'nope'" in missing["problem"]


def test_sample_image_from_a_shard_reads_one_row_group(tmp_path):
    """A report sample inside a large shard costs one row group of reads, not the shard
    (a million-image run's report would otherwise read whole 256 MB shards per sample)."""
    import io
    from kernelbank.io.pack import ShardWriter
    from kernelbank.report.collect import _parquet_image
    import fsspec
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 255, size=(24, 24), dtype=np.uint8) for _ in range(1600)]
    ids = [f"train/a/{i:05d}.png" for i in range(1600)]
    with ShardWriter(fsspec.filesystem("file"), str(tmp_path / "shard.parquet")) as shard:
        for start in range(0, 1600, 100):                      # 16 row groups
            part = slice(start, start + 100)
            shard.write(ids[part], ids[part], ["a"] * 100, ["train"] * 100,
                        [_png(a) for a in arrays[part]])

    class CountingFS:
        """Local files whose reads are counted (the bytes a store would return)."""

        def __init__(self):
            self.bytes = 0

        def open(self, path, mode="rb"):
            owner = self

            class Counted(io.FileIO):
                def read(self, size=-1):
                    data = super().read(size)
                    owner.bytes += len(data)
                    return data

                def readinto(self, buffer):
                    n = super().readinto(buffer)
                    owner.bytes += n or 0
                    return n
            return Counted(path, "rb")

    fs = CountingFS()
    image = _parquet_image(fs, str(tmp_path / "shard.parquet"), ids[1333], 2)
    np.testing.assert_array_equal(image, arrays[1333])
    size = (tmp_path / "shard.parquet").stat().st_size
    assert fs.bytes < size / 4, (fs.bytes, size)
    with pytest.raises(ValueError, match="no row"):
        _parquet_image(fs, str(tmp_path / "shard.parquet"), "train/a/99999.png", 2)
