"""Credentials never reach logs; the default output is refused inside a Ray job; the fault
switch is inert without the test flag. No Ray, no network."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernelbank import faults
from kernelbank.commands.pipeline_args import add_pipeline_options, pipeline_config
from kernelbank.io.output_safety import RAY_JOB_ENV
from kernelbank.io.storage import redact, safe_url
from kernelbank.stages.common import log


@pytest.mark.parametrize("url, shown", [
    ("s3://AKIAXYZ:s3cr3t@bucket/run", "s3://***@bucket/run"),
    ("https://h.example/o?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&part=2",
     "https://h.example/o?X-Amz-Credential=***&X-Amz-Signature=***&part=2"),
    ("https://h.example/o?X-Amz-Security-Token=tok&sig=zz", "https://h.example/o?"
     "X-Amz-Security-Token=***&sig=***"),
    ("/data/images/train", "/data/images/train"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
])
def test_safe_url_removes_credentials(url, shown):
    assert safe_url(url) == shown


def test_every_logged_url_is_safe(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    log("reading s3://KEY:pw@bucket/in?X-Amz-Signature=deadbeef with very-secret-value")
    err = capsys.readouterr().err
    assert "pw@" not in err and "deadbeef" not in err and "very-secret-value" not in err
    assert "s3://***@bucket/in?X-Amz-Signature=***" in err
    assert redact("no url here") == "no url here"


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pipeline_options(parser)
    return parser.parse_args(list(argv))


def _image_folder(root: Path) -> Path:
    """An input that passes the fail-fast check: one real PNG under root/<class>/."""
    from PIL import Image
    (root / "a").mkdir(parents=True)
    Image.new("L", (16, 16)).save(root / "a" / "x.png")
    return root


def test_default_output_is_named_and_refused_inside_a_ray_job(monkeypatch, capsys, tmp_path):
    tmp_path = _image_folder(tmp_path / "images")
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    config = pipeline_config(_parsed("--input", str(tmp_path)))
    assert config.output == "runs/latest" and config.overwrite
    assert "no --output given: writing to runs/latest" in capsys.readouterr().err
    monkeypatch.setenv(RAY_JOB_ENV, '{"runtime_env": {}}')      # what the job supervisor sets
    with pytest.raises(ValueError, match="--output is required under `ray job submit`"):
        pipeline_config(_parsed("--input", str(tmp_path)))
    assert pipeline_config(_parsed("--input", str(tmp_path), "--output",
                                   "s3://b/run1")).output == "s3://b/run1"


def test_fault_switch_needs_the_explicit_test_flag(monkeypatch, tmp_path):
    _image_folder(tmp_path)
    monkeypatch.setenv(faults.FAULT_KILL_FIT_AFTER_ENV, "3")
    monkeypatch.delenv(faults.TEST_FLAG_ENV, raising=False)
    assert faults.fit_fault_from_env() == {}
    assert pipeline_config(_parsed("--input", str(tmp_path), "--output",
                                   str(tmp_path / "o"))).fit.fault_kill_after is None
    monkeypatch.setenv(faults.TEST_FLAG_ENV, "1")
    assert faults.fit_fault_from_env()["fault_kill_after"] == 3
    # a kill point is inert without the flag: this process survives it
    code = ("import os; os.environ.pop('KERNELBANK_TESTING', None); "
            "os.environ['KERNELBANK_FAULT_KILL_AT'] = 'x'; "
            "from kernelbank import faults; faults.fault_point('x'); print('alive')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.stdout.strip() == "alive"


def test_an_output_another_driver_claims_during_the_check_is_shared_not_refused(tmp_path):
    """Two runs start on one empty output: the other driver creates the ownership marker
    (and its run folder) between this driver's marker check and its listing."""
    import fsspec.implementations.local as local

    from kernelbank.io.layout import MARKER
    from kernelbank.io.output_safety import check_output

    root = tmp_path / "out"
    root.mkdir()

    class OtherDriverWinsTheRace(local.LocalFileSystem):
        def exists(self, path, **kwargs):
            answer = super().exists(path, **kwargs)
            if path.endswith(MARKER) and not answer:
                (root / MARKER).write_text("{}")
                (root / "runs").mkdir()
            return answer

    assert check_output(OtherDriverWinsTheRace(skip_instance_cache=True), str(root), str(root))
    (root / "stranger.txt").write_text("x")
    (root / MARKER).unlink()
    with pytest.raises(FileExistsError, match="is not a kernelbank output"):
        check_output(local.LocalFileSystem(), str(root), str(root))
