"""``ray job submit`` of jobs/pipeline.py against a real ``ray start --head`` cluster.

The cluster gets its own temp dir and free ports, and is stopped by terminating the
``ray start --block`` process (never ``ray stop``, which would stop every Ray on the
machine, including the test session's). Token auth is disabled on both sides, as the
README advises for a throw-away local cluster.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .stages.pipeline_data import write_dataset

REPO = Path(__file__).resolve().parent.parent
JOBS = ("pipeline", "fit", "reduce", "features", "classify")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", JOBS)
def test_job_scripts_share_the_cli_options(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"jobs/{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "jobs" / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    command = "run" if name == "pipeline" else name
    printed = capsys.readouterr().out
    assert f"usage: kernelbank {command}" in printed and "--output" in printed


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_pipeline(tmp_path):
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists() or shutil.which("ray", path=str(ray_bin.parent)) is None:
        pytest.skip("the ray CLI is not installed next to this Python")
    data = tmp_path / "images"
    write_dataset(data, classes=2, per_class=3, size=24)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    temp = Path("/tmp") / f"kbjob{port}"      # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}",
         # every port of its own: another Ray on this machine (the test session's) holds
         # the defaults, and a dashboard agent that cannot bind leaves jobs unsubmittable
         f"--ray-client-server-port={_free_port()}", f"--node-manager-port={_free_port()}",
         f"--object-manager-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}",
         f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("ray start --head did not bring up its dashboard in 120 s")
                time.sleep(1)
        out = tmp_path / "out"
        submit = [str(ray_bin), "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps({"excludes": ["runs/", "bench/", "tests/"]}),
                  "--", "python", "jobs/pipeline.py", "--input", str(data), "--output", str(out),
                  "--radius", "2", "--batch-size", "8", "--no-report"]
        for _ in range(15):      # the dashboard answers before its job agent is ready
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300,
                                 cwd=REPO)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        assert "[kernelbank] fit:" in job.stdout + job.stderr      # progress lines reach the client
        from kernelbank.io.runs import open_published
        summary = open_published(str(out)).summary
        assert summary["ray"]["mode"] == "cluster"
        assert summary["images"] == 12 and summary["errors"] == 3
        assert summary["test_accuracy"] is not None
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
