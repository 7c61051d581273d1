"""Reliability on a real local Ray: a killed fit actor, stage reruns, validation messages.

Crashes of the whole driver (SIGKILL, SIGTERM) are in test_crash_resume.py; S3 in and
out, bad records and credentials in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelbank.cli import main
from kernelbank.config import FitConfig, ReadConfig
from kernelbank.io.runs import open_published
from kernelbank.stages.fit import run_fit

from .pipeline_data import png_bytes, write_dataset

pytestmark = [pytest.mark.ray]


def _ids(files: list[str]) -> list[str]:
    return [i for f in files for i in pq.read_table(f).column("id").to_pylist()]


def test_killed_fit_actor_still_writes_every_row_once(ray_local, tmp_path):
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=5, size=24)
    marker = tmp_path / "killed"
    config = FitConfig(radius=2, batch_size=3, max_actors=1, fault_kill_after=6,
                       fault_marker=str(marker))
    summary = run_fit(ReadConfig(str(data), override_num_blocks=4), config, str(tmp_path / "out"))
    assert marker.exists(), "the fault was not injected"
    view = open_published(str(tmp_path / "out"))
    fit, errors = _ids(view.stage_files("fit", ".parquet")), _ids(view.error_files("fit"))
    every = {str(p) for p in data.rglob("*") if p.suffix in (".png", ".npy")}
    assert len(fit) == len(set(fit)) == 20 and len(errors) == len(set(errors)) == 3
    assert set(fit) | set(errors) == every
    assert summary["images"] == 20 and summary["errors"] == {"decode": 3}


def test_rerun_refuses_then_publishes_a_new_run_without_mixing(ray_local, tmp_path, capsys):
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=3, size=24, bad=False)
    out = str(tmp_path / "out")
    first = run_fit(ReadConfig(str(data)), FitConfig(radius=2), out)
    assert first["images"] == 12
    old = open_published(out)
    # same output again: refused before any work, the published run untouched
    code = main(["fit", "--input", str(data), "--output", out, "--radius", "1"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert open_published(out).run_id == old.run_id
    # a smaller second run replaces the first completely (no appended or stale rows)
    (data / "test").rename(tmp_path / "held_out")
    second = run_fit(ReadConfig(str(data)), FitConfig(radius=1), out, overwrite=True)
    assert second["images"] == 6
    view = open_published(out)
    assert view.run_id != old.run_id
    table = pa.concat_tables([pq.read_table(f) for f in view.stage_files("fit", ".parquet")])
    assert table.num_rows == 6 and set(table.column("split").to_pylist()) == {"train"}
    assert table.schema.field("coef").type.list_size == 3 * 8  # full radius 1 at dilations 1-3
    meta = json.loads((Path(view.stage_path("fit")) / "_kernelbank.json").read_text())
    assert meta["radius"] == 1 and view.error_files() == []
    # the old run is still there, whole, for readers that held it
    old_files = old.stage_files("fit", ".parquet")
    assert old_files and all(Path(f).exists() for f in old_files)
    # the next stage alone, through its subcommand: a new run reusing the fit in place
    assert main(["reduce", "--output", out, "--bank-method", "kmeans", "--n-components", "2"]) == 0
    reduced = open_published(out)
    assert reduced.stage_path("fit") == view.stage_path("fit")
    bank = json.loads((Path(reduced.stage_path("reduce")) / "bank.json").read_text())
    assert bank["method"] == "kmeans" and bank["train_counts"] == {"c0": 3, "c1": 3}
    assert bank["n_kernels"] == 2 * 2 * 3                   # 2 centres x 2 classes x 3 dilations
    summary = reduced.summary
    assert set(summary["stages"]) == {"fit", "reduce"} and summary["stages"]["fit"]["images"] == 6
    assert summary["images"] == 6
    # refitting drops the banks built on the old fit instead of mixing them
    assert main(["fit", "--input", str(data), "--output", out, "--radius", "2",
                 "--overwrite"]) == 0
    assert open_published(out).stages == ("fit",)
    assert main(["features", "--input", str(data), "--output", out]) == 2
    assert "the features stage reads the reduce output" in capsys.readouterr().err


def test_one_training_class_is_an_error(ray_local, tmp_path, capsys):
    data = tmp_path / "images"
    write_dataset(data, classes=1, per_class=3, size=24, bad=False)
    out = tmp_path / "out"
    code = main(["run", "--input", str(data), "--output", str(out), "--radius", "1",
                 "--no-report"])
    assert code == 2
    assert "a classifier needs at least 2" in capsys.readouterr().err
    assert not (out / "LATEST.json").exists()                 # nothing published


def test_class_only_in_test_and_unlabeled_files_are_reported(ray_local, tmp_path):
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=3, size=24, bad=False)
    (data / "test" / "c9").mkdir()
    png = next((data / "test" / "c0").glob("*.png"))
    (data / "test" / "c9" / "lonely.png").write_bytes(png.read_bytes())
    (data / "stray.png").write_bytes(png.read_bytes())          # no class folder
    out = str(tmp_path / "out")
    assert main(["fit", "--input", str(data), "--output", out, "--radius", "1"]) == 0
    view = open_published(out)
    warnings = view.summary["warnings"]
    assert any("'c9' has 1 test image(s) but no training image" in w for w in warnings)
    assert any("1 record(s) have no label" in w for w in warnings)
    counts = view.summary["stages"]["fit"]["counts"]
    assert "" not in counts.get("unsplit", {}) and "" not in counts["test"]
    rows = [r for f in view.error_files() for r in pq.read_table(f).to_pylist()]
    assert [(Path(r["path"]).name, r["stage"]) for r in rows] == [("stray.png", "label")]
    assert "no label" in rows[0]["reason"]


def test_parquet_rows_without_label_are_error_rows(ray_local, tmp_path):
    from kernelbank.io import read_dataset
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in range(4)]
    pq.write_table(pa.table({"image": images, "label": ["a", "b", "", None],
                             "split": ["train", "test", None, "train"],
                             "id": ["r0", "r1", "r2", "r3"]}), tmp_path / "x.parquet")
    import ray
    rows = pa.concat_tables(ray.get(read_dataset(
        config=ReadConfig(str(tmp_path / "x.parquet"))).to_arrow_refs())).to_pylist()
    by_id = {r["id"].split("#")[1]: r for r in rows}
    assert by_id["r0"]["reason"] is None and by_id["r1"]["split"] == "test"
    for rid in ("r2", "r3"):                               # empty and null label cells
        assert by_id[rid]["stage"] == "label" and "no label" in by_id[rid]["reason"]
        assert by_id[rid]["pixels"] is None
    assert "none" not in {r["split"] for r in rows}        # a null split is never "none"
