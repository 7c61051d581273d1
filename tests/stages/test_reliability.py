"""Reliability on a real local Ray: a killed fit actor, reruns into an existing output.

S3 in and out, bad records and credentials are checked in test_pipeline.py."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kernelbank.cli import main
from kernelbank.config import FitConfig, ReadConfig
from kernelbank.stages.fit import run_fit

from .pipeline_data import write_dataset

pytestmark = [pytest.mark.ray]


def _records(fs_or_path, fit_dir, errors_dir):
    fit = pq.read_table(fit_dir, filesystem=fs_or_path).column("id").to_pylist()
    errors = pq.read_table(errors_dir, filesystem=fs_or_path).column("id").to_pylist()
    return fit, errors


def test_killed_fit_actor_still_writes_every_row_once(ray_local, tmp_path):
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=5, size=24)
    marker = tmp_path / "killed"
    config = FitConfig(radius=2, batch_size=3, max_actors=1, fault_kill_after=6,
                       fault_marker=str(marker))
    summary = run_fit(ReadConfig(str(data), override_num_blocks=4), config, str(tmp_path / "out"))
    assert marker.exists(), "the fault was not injected"
    fit, errors = _records(None, str(tmp_path / "out/fit"), str(tmp_path / "out/errors"))
    every = {str(p) for p in data.rglob("*") if p.suffix in (".png", ".npy")}
    assert len(fit) == len(set(fit)) == 20 and len(errors) == len(set(errors)) == 3
    assert set(fit) | set(errors) == every
    assert summary["images"] == 20 and summary["errors"] == {"decode": 3}


def test_rerun_refuses_then_replaces_without_mixing(ray_local, tmp_path, capsys):
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=3, size=24, bad=False)
    out = str(tmp_path / "out")
    first = run_fit(ReadConfig(str(data)), FitConfig(radius=2), out)
    assert first["images"] == 12
    # same output again: refused before any work, the first run untouched
    code = main(["fit", "--input", str(data), "--output", out, "--radius", "1"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / "out/fit/_kernelbank.json").read_text())["radius"] == 2
    # a smaller second run replaces the first completely (no appended or stale rows)
    (data / "test").rename(tmp_path / "held_out")
    second = run_fit(ReadConfig(str(data)), FitConfig(radius=1), out, overwrite=True)
    assert second["images"] == 6
    table = pq.read_table(tmp_path / "out/fit")
    assert table.num_rows == 6 and set(table.column("split").to_pylist()) == {"train"}
    assert table.schema.field("coef").type.list_size == 2      # isotropic radius 1: 2 rings
    assert json.loads((tmp_path / "out/fit/_kernelbank.json").read_text())["radius"] == 1
    assert not (tmp_path / "out/errors").exists() or not list((tmp_path / "out/errors").iterdir())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".partial")]
    # the next stage alone, through its subcommand, on the replaced fit table
    assert main(["reduce", "--output", out, "--bank-method", "kmeans", "--n-components", "2"]) == 0
    bank = json.loads((tmp_path / "out/banks/bank.json").read_text())
    assert bank["method"] == "kmeans" and bank["train_counts"] == {"c0": 3, "c1": 3}
    assert bank["n_kernels"] == 4                           # 2 centres x 2 classes
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert set(summary["stages"]) == {"fit", "reduce"} and summary["stages"]["fit"]["images"] == 6
