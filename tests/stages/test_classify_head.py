"""The classify stage's Nyström kernel head on a real local Ray: the streaming stage
(a bounded per-class sample gathered across files, then every row scored) equals the
in-memory scikit-learn pipeline fitted on that sample."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernelbank.config import ClassifyConfig
from kernelbank.stages.classify import classify_table

pytestmark = [pytest.mark.ray]
NAMES = [f"f{j}" for j in range(5)]


def _sample(ids, labels, per_class):
    """An independent statement of the sample: per class, the rows of least
    (CRC-32 of "sample:" + id, id)."""
    out = []
    for label in sorted(set(labels)):
        rows = [i for i in range(len(ids)) if labels[i] == label]
        rows.sort(key=lambda i: (zlib.crc32(b"sample:" + ids[i].encode()), ids[i]))
        out += rows[:per_class]
    return np.array(sorted(out, key=lambda i: ids[i]))        # landmarks drawn in id order


def test_kernel_head_stage_equals_sklearn_on_its_sample(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    n = 150
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    # a class boundary no linear model draws: class by the radius of two columns
    x = rng.normal(size=(n, len(NAMES)))
    radius = np.hypot(x[:, 0], x[:, 1])
    labels = np.where(radius < 0.8, "a", np.where(radius < 1.5, "b", "c"))
    ids = [f"img/{i:03d}" for i in rng.permutation(n)]
    split = np.where(rng.random(n) < 0.7, "train", "test")
    features = tmp_path / "features"
    features.mkdir()
    (features / "_kernelbank.json").write_text(json.dumps({"feature_names": NAMES}))
    for part, start in enumerate(range(0, n, 40)):       # 4 files: the sample spans them
        rows = slice(start, start + 40)
        pq.write_table(pa.table({"id": ids[rows], "path": ids[rows], "label": labels[rows],
                                 "split": split[rows],
                                 **{f: x[rows, j].astype(np.float32)
                                    for j, f in enumerate(NAMES)}}),
                       features / f"part-{part}.parquet")
    config = ClassifyConfig(head="nystroem", sample_per_class=20, n_components=40)
    summary = classify_table(str(features), config, predictions_dir=str(tmp_path / "pred"))

    train = np.flatnonzero(split == "train")
    chosen = train[_sample([ids[i] for i in train], list(labels[train]), 20)]
    assert summary["sample_rows"] == len(chosen) == 60
    assert summary["alpha_chosen_by"].startswith("5-fold CV")
    values = x.astype(np.float32).astype(np.float64)       # what the files hold
    reference = make_pipeline(StandardScaler(),
                              Nystroem(gamma=1 / len(NAMES), n_components=40, random_state=0),
                              StandardScaler(), RidgeClassifier(alpha=summary["alpha"]))
    reference.fit(values[chosen], labels[chosen])
    written = pq.read_table(tmp_path / "pred").to_pandas().set_index("id")
    expected = reference.predict(values)
    assert list(written.loc[ids, "predicted"]) == list(expected)
    test = split == "test"
    assert summary["test_accuracy"] == pytest.approx(float((expected[test] ==
                                                            labels[test]).mean()))
    # the kernel head sees the radial boundary the linear head cannot
    linear = classify_table(str(features), ClassifyConfig(head="ridge"),
                            predictions_dir=str(tmp_path / "pred_ridge"))
    assert summary["test_accuracy"] > linear["test_accuracy"] + 0.2


@pytest.mark.slow
def test_run_with_the_kernel_head_names_it(ray_local, tmp_path):
    """`kernelbank run --head nystroem`: the summary's recipe and settings name the head,
    and the predictions are the scikit-learn pipeline's on the run's own features."""
    from kernelbank.cli import main
    from kernelbank.io.runs import open_published

    from .pipeline_data import write_dataset
    write_dataset(tmp_path / "images", classes=3, per_class=6, size=32, bad=False)
    code = main(["run", "--input", str(tmp_path / "images"), "--output", str(tmp_path / "out"),
                 "--radius", "1", "--dilations", "1", "--max-actors", "1", "--head",
                 "nystroem", "--head-sample", "5", "--head-components", "8"])
    assert code == 0
    view = open_published(str(tmp_path / "out"))
    summary = view.summary
    assert "Nystroem RBF kernel head (8 landmarks, <= 5 train rows per class)" in \
        summary["recipe"]
    assert summary["settings"]["head"] == "nystroem"
    classify = summary["stages"]["classify"]
    assert classify["head"] == "nystroem" and classify["sample_rows"] == 15
    out = view.path
    table = pq.read_table(f"{out}/features").to_pandas()
    names = json.loads(open(f"{out}/features/_kernelbank.json").read())["feature_names"]
    train = table[table.split == "train"].reset_index(drop=True)
    chosen = _sample(list(train.id), list(train.label), 5)
    reference = make_pipeline(StandardScaler(),
                              Nystroem(gamma=1 / len(names), n_components=8, random_state=0),
                              StandardScaler(), RidgeClassifier(alpha=classify["alpha"]))
    reference.fit(train[names].to_numpy(np.float64)[chosen], train.label.to_numpy()[chosen])
    written = pq.read_table(f"{out}/classify/predictions").to_pandas().set_index("id")
    assert list(written.loc[table.id, "predicted"]) == \
        list(reference.predict(table[names].to_numpy(np.float64)))


def test_the_sample_the_feature_writes_gather_is_the_whole_tables_in_any_order():
    """The feature tasks each return their file's part of the sample
    (:func:`sample_of_table`) and the driver merges them as they come: the same rows as
    the independent statement of the sample on the whole table, in any order."""
    from kernelbank.stages.classify import merge_samples, sample_of_table
    rng = np.random.default_rng(3)
    n = 200
    ids = [f"img/{i:03d}" for i in rng.permutation(n)]
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    split = np.where(rng.random(n) < 0.7, "train", "test")
    x = rng.normal(size=(n, len(NAMES))).astype(np.float32)
    x[7, 2] = np.nan                                          # a non-finite row is never drawn
    table = pa.table({"id": ids, "label": labels, "split": split,
                      **{f: x[:, j] for j, f in enumerate(NAMES)}})
    parts = [sample_of_table(table.slice(start, 50), NAMES, 6) for start in range(0, n, 50)]
    merged = {}
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        got = None
        for k in order:
            got = merge_samples(got, parts[k], 6)
        merged[tuple(order)] = got
    train = [i for i in np.flatnonzero(split == "train") if i != 7]
    expected = sorted(ids[train[i]] for i in _sample([ids[i] for i in train],
                                                     list(labels[train]), 6))
    for keys, got_ids, got_labels, got_x in merged.values():
        assert sorted(got_ids) == expected and len(got_ids) == 18
        rows = [ids.index(i) for i in got_ids]
        np.testing.assert_array_equal(got_x, x[rows].astype(np.float64))
        assert list(got_labels) == list(labels[rows])
