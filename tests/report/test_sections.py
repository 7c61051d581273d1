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
