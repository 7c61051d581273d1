"""The pipeline on a cluster that changes under it: a lost node, a node that joins, one CPU,
and a stage waiting for resources the cluster does not have.

The multi-node tests run on ``ray.cluster_utils.Cluster`` (Ray's own multi-node test
utility: several one-CPU raylets on this machine). The driver is its own process
(``tests/stages/cluster_driver.py``, which runs ``kernelbank run``); this process kills
or adds raylets while a stage runs, at the moment the stage's first part file appears
(so some of its batches are done and others in flight). Results are compared with a
clean run of the same data on the session's local Ray.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .pipeline_data import write_dataset

ROOT = Path(__file__).resolve().parents[2]
#: Node failure noticed in about 3 s instead of Ray's default (about 30 s): the tests
#: wait for it, a production cluster does too (see README, Reliability).
FAST_FAILURE = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                "health_check_initial_delay_ms": 1000}
DRIVER_TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_cpu_cluster(nodes: int):
    """A Cluster of ``nodes`` one-CPU raylets (the head is the driver's node)."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": _free_port(), "include_dashboard": False,
        "_system_config": FAST_FAILURE})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(nodes - 1)]
        yield cluster, workers
    finally:
        cluster.shutdown()


def _parts(out: Path, stage: str) -> list[Path]:
    return [p for p in out.glob(f"runs/*/{stage}/*.parquet") if not p.name.startswith("_")]


def drive(address: str, data: Path, out: Path, *, stage: str | None = None, action=None,
          block_rows: int = 8) -> tuple[dict, str]:
    """Run the pipeline driver against ``address``; call ``action()`` once, as soon as
    ``stage`` has written its first part file. Returns the summary and the driver's log."""
    # the driver inherits this process's Ray auth settings, as the cluster did
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS=address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.stages.cluster_driver", "--block-rows", str(block_rows),
         "--", "--ray-address", address, "--input", str(data), "--output", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + DRIVER_TIMEOUT
    acted = action is None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if not acted and _parts(out, stage):
                action()
                acted = True
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)
    log = "".join(lines)
    assert proc.returncode == 0, f"driver failed (exit {proc.returncode}):\n{log[-6000:]}"
    assert acted, f"the {stage} stage wrote no part file before the run ended"
    return json.loads(log.strip().splitlines()[-1]), log


def _run_dir(out: Path) -> Path:
    return out / "runs" / json.loads((out / "LATEST.json").read_text())["run_id"]


def _table(out: Path, stage: str) -> pa.Table:
    files = [f for f in sorted((_run_dir(out) / stage).glob("*.parquet"))
             if not f.name.startswith("_")]
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _ids(out: Path, stage: str) -> list[str]:
    return _table(out, stage).column("id").to_pylist()


def _error_ids(out: Path) -> list[str]:
    files = sorted((_run_dir(out) / "errors").glob("**/*.parquet"))
    return [i for f in files for i in pq.read_table(f).column("id").to_pylist()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster") / "images"
    write_dataset(root, classes=3, per_class=16, size=32)
    return root


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory, ray_local):
    """The same run on the session's local Ray, nothing killed: the reference."""
    from .cluster_driver import main
    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(["--block-rows", "8", "--", "--input", str(data), "--output", str(out)]) == 0
    return out


def _features(out: Path) -> tuple[list[str], np.ndarray]:
    table = _table(out, "features").sort_by("id")
    names = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    assert len(names) > 100
    return table.column("id").to_pylist(), np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False) for c in names])


def _assert_same_as_clean(out: Path, clean: Path, summary: dict) -> None:
    """Every record exactly once (fit rows + error rows = the input), features equal to
    the clean run's, the same test accuracy."""
    fit, errors = _ids(out, "fit"), _error_ids(out)
    assert len(fit) == len(set(fit)) and len(errors) == len(set(errors)), "a record twice"
    assert sorted(fit) == sorted(_ids(clean, "fit")), "fit rows differ from the clean run"
    assert sorted(errors) == sorted(_error_ids(clean))
    ids, values = _features(out)
    clean_ids, clean_values = _features(clean)
    assert ids == clean_ids and len(ids) == len(set(ids))
    # the same rows computed in other blocks: batched float64 algebra may differ in the
    # last bits with the block's composition, never more
    np.testing.assert_allclose(values, clean_values, rtol=1e-9, atol=1e-12)
    clean_summary = json.loads((_run_dir(clean) / "summary.json").read_text())
    assert summary["test_accuracy"] == clean_summary["test_accuracy"]
    assert summary["images"] == clean_summary["images"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("stage", ["fit", "features"])
def test_a_lost_node_costs_only_its_work_in_flight(stage, data, clean, tmp_path):
    out = tmp_path / "out"
    with one_cpu_cluster(2) as (cluster, (worker,)):
        summary, log = drive(cluster.address, data, out, stage=stage,
                             action=lambda: cluster.remove_node(worker, allow_graceful=False))
    assert "progress counter lost" not in log       # bookkeeping lives with the driver
    _assert_same_as_clean(out, clean, summary)


@pytest.mark.slow
@pytest.mark.ray
def test_one_cpu_cluster_runs_the_whole_pipeline(data, clean, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with one_cpu_cluster(1) as (cluster, _):
        # the real command, every stage (the built-in recipe) on one CPU
        done = subprocess.run(
            [sys.executable, "-m", "kernelbank.cli", "run", "--ray-address", cluster.address,
             "--input", str(data), "--output", str(out), "--no-report"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT)
    assert done.returncode == 0, done.stderr[-6000:]
    summary = json.loads((_run_dir(out) / "summary.json").read_text())
    assert set(summary["stages"]) == {"fit", "reduce", "features", "classify"}
    _assert_same_as_clean(out, clean, summary)


def _nodes_used(stats: str, operator: str) -> int:
    """Nodes that ran tasks of ``operator`` in a stage's Ray Data statistics."""
    block = stats.split(operator, 1)[1].split("Operator ", 1)[0]
    line = next(x for x in block.splitlines() if "nodes used" in x)
    return int(line.rsplit(";", 1)[1].split()[0])


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_that_joins_during_fit_gets_work(data, tmp_path):
    out = tmp_path / "out"
    with one_cpu_cluster(1) as (cluster, _):
        drive(cluster.address, data, out, stage="fit", block_rows=4,
              action=lambda: cluster.add_node(num_cpus=1))
    stats = next(out.glob("runs/*/fit/_ray_data_stats.txt")).read_text()
    assert _nodes_used(stats, "MapBatches(StatisticsFitter)") == 2, stats


# ---------------------------------------------------------------- the stall watchdog

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _waits(demands, launching=0):
    return lambda: {"demands": demands, "launching": launching, "nodes": 1,
                    "total": {"CPU": 1.0, "GPU": 0.0}, "free": {"CPU": 0.0}}


def test_watchdog_fails_only_a_stage_without_progress_that_ray_cannot_place():
    from kernelbank.stages.watchdog import StallWatchdog
    clock = Clock()
    wait = [({"CPU": 1.0, "GPU": 1.0}, 2)]
    dog = StallWatchdog("fit", 60, waits=_waits(wait), clock=clock)
    for t in (10, 50, 100):                  # progress every time: never stalled
        clock.now = t
        dog.observe(t)
        assert dog.check() is None
    clock.now = 159                          # 59 s without progress
    assert dog.check() is None
    clock.now = 161
    message = dog.check()
    assert message.startswith("fit: no progress for 61 s")
    assert "2 tasks or actors need {CPU: 1, GPU: 1}" in message
    assert "1 node (CPU 1 of which 0 free, GPU 0 of which 0 free)" in message
    assert dog.check() is None               # said once
    # no demand (slow, not stuck), nodes being launched, or Ray cannot tell: no failure
    for waits in (_waits([]), _waits(wait, launching=1), lambda: None):
        quiet = StallWatchdog("fit", 60, waits=waits, clock=clock)
        clock.now += 1000
        assert quiet.check() is None
    assert StallWatchdog("fit", 0, waits=_waits(wait), clock=clock).check() is None


def test_stall_timeout_comes_from_the_environment(monkeypatch):
    from kernelbank.stages.watchdog import DEFAULT_STALL_SECONDS, stall_seconds
    monkeypatch.delenv("KERNELBANK_STALL_SECONDS", raising=False)
    assert stall_seconds() == DEFAULT_STALL_SECONDS
    monkeypatch.setenv("KERNELBANK_STALL_SECONDS", "0")
    assert stall_seconds() == 0
    monkeypatch.setenv("KERNELBANK_STALL_SECONDS", "soon")
    with pytest.raises(ValueError, match="KERNELBANK_STALL_SECONDS"):
        stall_seconds()


@pytest.mark.ray
def test_a_stage_waiting_for_a_gpu_the_cluster_lacks_fails_with_a_message(
        ray_local, data, tmp_path, monkeypatch):
    from kernelbank.config import FitConfig, ReadConfig
    from kernelbank.stages.fit import run_fit
    from kernelbank.stages.watchdog import StageStalled
    monkeypatch.setenv("KERNELBANK_STALL_SECONDS", "3")
    with pytest.raises(StageStalled) as stalled:
        run_fit(ReadConfig(str(data)), FitConfig(radius=2, num_gpus=1), str(tmp_path / "out"))
    message = str(stalled.value)
    assert message.startswith("fit: no progress for")
    assert "GPU: 1" in message and "GPU 0 of which 0 free" in message


@pytest.mark.ray
def test_a_lost_progress_counter_degrades_the_lines_not_the_stage(ray_local):
    from kernelbank.stages.progress import Progress, driver_node_options, remote_progress
    # bookkeeping actors are pinned to the driver's node (a lost worker cannot take them)
    placement = driver_node_options()["scheduling_strategy"]
    assert placement.node_id == ray_local.get_runtime_context().get_node_id()
    stream = io.StringIO()
    original = Progress.__init__

    def to_stream(self, *args, **kwargs):
        original(self, *args, **kwargs, stream=stream, enabled=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Progress, "__init__", to_stream)
        with remote_progress("fit", 10, interval=0.2) as counter:
            ray_local.get(counter.add.remote(3, 0))
            time.sleep(0.5)
            ray_local.kill(counter)
            time.sleep(1.5)
            counter.add.remote(2, 0)             # a write task's call: not an error either
    text = stream.getvalue()
    assert "fit: progress counter lost (ActorDiedError)" in text
    assert "fit: 3/10 images" in text
