"""Reliability on real components: S3 (moto server) in and out, a killed fit actor, reruns."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from kernelbank.cli import main
from kernelbank.config import FitConfig, ReadConfig
from kernelbank.stages.fit import run_fit

from .pipeline_data import BAD_RECORDS, write_dataset

pytestmark = [pytest.mark.ray]
SECRET = "testing-secret-do-not-log"        # the s3_endpoint fixture's secret key


def _records(fs_or_path, fit_dir, errors_dir):
    fit = pq.read_table(fit_dir, filesystem=fs_or_path).column("id").to_pylist()
    errors = pq.read_table(errors_dir, filesystem=fs_or_path).column("id").to_pylist()
    return fit, errors


@pytest.mark.s3
def test_pipeline_from_and_to_s3(ray_local, s3_endpoint, s3_bucket, tmp_path, capfd):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    write_dataset(tmp_path / "images", classes=2, per_class=4, size=24)
    fs.put(str(tmp_path / "images"), f"{s3_bucket}/images", recursive=True)
    fs.touch(f"{s3_bucket}/images/train/c0/")          # a zero-byte "directory marker" key
    code = main(["run", "--input", f"s3://{s3_bucket}/images",
                 "--output", f"s3://{s3_bucket}/run", "--radius", "2",
                 "--bank-method", "pca", "--n-components", "1", "--batch-size", "8"])
    assert code == 0
    fs.invalidate_cache()
    summary = json.loads(fs.cat(f"{s3_bucket}/run/summary.json"))
    assert summary["images"] == 16 and summary["errors"] == 3
    assert summary["stages"]["fit"]["counts"] == {"test": {"c0": 4, "c1": 4},
                                                  "train": {"c0": 4, "c1": 4}}
    fit, errors = _records(fs, f"{s3_bucket}/run/fit", f"{s3_bucket}/run/errors")
    assert len(fit) == len(set(fit)) == 16 and len(errors) == 3
    assert {e.split("/images/", 1)[1] for e in errors} == set(BAD_RECORDS)
    features = pq.read_table(f"{s3_bucket}/run/features", filesystem=fs)
    assert features.num_rows == 16 and "k00_c0_d1_mse" not in features.column_names[:4]
    assert fs.exists(f"{s3_bucket}/run/banks/bank.npz")
    assert not [p for p in fs.ls(s3_bucket) if ".partial-" in p]
    # no credentials in any output object or in what the run printed
    for path in fs.find(f"{s3_bucket}/run"):
        assert SECRET.encode() not in fs.cat(path), path
    printed = capfd.readouterr()
    assert SECRET not in printed.out + printed.err
    assert "wrote s3://" in printed.out


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
