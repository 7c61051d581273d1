"""The pipeline on a cluster that changes under it: a lost node, a node that joins, one CPU,
and a stage waiting for resources the cluster does not have.

The multi-node tests run on ``ray.cluster_utils.Cluster`` (Ray's own multi-node test
utility: several one-CPU raylets on this machine). The driver is its own process
(``tests/stages/cluster_driver.py``, which runs ``kernelbank run``); this process kills
or adds raylets while a stage runs, at the moment the stage's first part file appears
(so some of its batches are done and others in flight). Results are compared with a
one-CPU run of the same data (nothing killed).
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

from .cluster_driver import SUMMARY
from .pipeline_data import write_dataset

ROOT = Path(__file__).resolve().parents[2]
#: Node failure noticed in about 3 s instead of Ray's default (about 30 s): the tests
#: wait for it, a production cluster does too (see README, Reliability).
FAST_FAILURE = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                "health_check_initial_delay_ms": 1000}
DRIVER_TIMEOUT = 480


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_cpu_cluster(nodes: int):
    """A Cluster of ``nodes`` one-CPU raylets (the head is the driver's node).

    Its workers get this process's environment (raylets start them), the driver its own.
    """
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


def drive(address: str, data: Path, out: Path, events=(), *, block_rows: int = 8
          ) -> tuple[dict, str]:
    """Run the pipeline driver against ``address``; ``events`` are ``(when, action)``
    pairs, each action called once, in order, as soon as ``when(out, log)`` is true.
    Returns the run's summary and the driver's log."""
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
    pending = list(events)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if pending and pending[0][0](out, "".join(lines)):
                pending.pop(0)[1]()
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)
    log = "".join(lines)
    assert proc.returncode == 0, f"driver failed (exit {proc.returncode}):\n{log[-6000:]}"
    assert not pending, f"{len(pending)} event(s) never came: the run ended first\n{log[-3000:]}"
    summary = [x for x in log.splitlines() if x.startswith(SUMMARY)]
    return json.loads(summary[-1][len(SUMMARY):]), log


def first_part(stage: str):
    """``when``: the stage wrote its first part file (some batches done, others in flight)."""
    return lambda out, log: bool(_parts(out, stage))


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
def one_cpu_run(data, tmp_path_factory):
    """The whole pipeline (``kernelbank run``'s options and stages) on a one-CPU cluster;
    nothing is killed, so it is also the clean reference of the lost-node test (the same
    read blocks, so the same arithmetic per record)."""
    out = tmp_path_factory.mktemp("one_cpu") / "out"
    with one_cpu_cluster(1) as (cluster, _):
        drive(cluster.address, data, out)
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
    # the same blocks computed again on other nodes: equal up to the last bit of float32
    # values (descriptors are float32; differences of 1.2e-7 seen), far below what a
    # dropped or doubled record would change (the ids are compared exactly above)
    np.testing.assert_allclose(values, clean_values, rtol=1e-6, atol=1e-6)
    clean_summary = json.loads((_run_dir(clean) / "summary.json").read_text())
    assert summary["test_accuracy"] == clean_summary["test_accuracy"]
    assert summary["images"] == clean_summary["images"]


@pytest.mark.slow
@pytest.mark.ray
def test_one_cpu_cluster_runs_the_whole_pipeline(one_cpu_run, data):
    summary = json.loads((_run_dir(one_cpu_run) / "summary.json").read_text())
    assert set(summary["stages"]) == {"fit", "reduce", "features", "classify"}
    fit, errors = _ids(one_cpu_run, "fit"), _error_ids(one_cpu_run)
    every = {str(p) for p in data.rglob("*") if p.suffix in (".png", ".npy")}
    assert len(fit) + len(errors) == len(every) == summary["records"]
    assert sorted(_features(one_cpu_run)[0]) == sorted(fit)
    assert summary["test_accuracy"] is not None


@pytest.fixture
def slow_fit(monkeypatch):
    """Every fit batch lasts at least half a second (:mod:`kernelbank.faults`), as large
    images would: batches are in flight when a node dies or joins."""
    monkeypatch.setenv("KERNELBANK_TESTING", "1")
    monkeypatch.setenv("KERNELBANK_FAULT_GROUP_DELAY", "0.5")


@pytest.mark.slow
@pytest.mark.ray
def test_lost_nodes_cost_only_their_work_in_flight(data, one_cpu_run, tmp_path, slow_fit):
    """Three one-CPU nodes; one worker is killed (not drained) during fit, the other during
    features: the run completes on the head alone, every record once, same result."""
    out = tmp_path / "out"
    with one_cpu_cluster(3) as (cluster, workers):
        def kill(node):
            return lambda: cluster.remove_node(node, allow_graceful=False)
        summary, log = drive(cluster.address, data, out,
                             [(first_part("fit"), kill(workers[0])),
                              (first_part("features"), kill(workers[1]))])
    assert "progress counter lost" not in log       # bookkeeping lives with the driver
    _assert_same_as_clean(out, one_cpu_run, summary)


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_that_joins_during_fit_gets_work(data, tmp_path, slow_fit):
    """The fit starts on one CPU; a node joins as the stage starts and the tasks waiting
    for room run on it."""
    out = tmp_path / "out"
    with one_cpu_cluster(1) as (cluster, _):
        drive(cluster.address, data, out,
              [(lambda out, log: "[kernelbank] fit:" in log, lambda: cluster.add_node(num_cpus=1))],
              block_rows=4)
    summary = json.loads(next(out.glob("runs/*/summary.json")).read_text())
    assert summary["stages"]["fit"]["nodes"] == 2, summary["stages"]["fit"]


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
    clock.now = 161                          # stalled: the demands must last 10 s more
    assert dog.check() is None
    clock.now = 170
    assert dog.check() is None
    clock.now = 171.4
    message = dog.check()
    assert message.startswith("fit: no progress for 71 s")
    assert "2 tasks or actors need {CPU: 1, GPU: 1}" in message
    assert "1 node (CPU 1 of which 0 free, GPU 0 of which 0 free)" in message
    assert dog.check() is None               # said once
    # no demand (slow, not stuck), nodes being launched, or Ray cannot tell: no failure
    for waits in (_waits([]), _waits(wait, launching=1), lambda: None):
        quiet = StallWatchdog("fit", 60, waits=waits, clock=clock)
        for _ in range(3):
            clock.now += 1000
            assert quiet.check() is None
    # demands that change (tasks waiting a moment for a worker) are not a stall
    changing = iter([[({"CPU": 1.0}, 5)], [({"CPU": 1.0}, 4)], [({"CPU": 1.0}, 3)]])
    moving = StallWatchdog("fit", 60, waits=lambda: _waits(next(changing))(), clock=clock)
    for _ in range(3):
        clock.now += 100
        assert moving.check() is None
    assert StallWatchdog("fit", 0, waits=_waits(wait), clock=clock).check() is None
    # a demand the cluster can never hold stalls even while its count moves
    counts = iter([[({"CPU": 1.0, "GPU": 1.0}, n)] for n in (2, 3, 2, 3)])
    lacking = StallWatchdog("fit", 60, waits=lambda: _waits(next(counts))(), clock=clock)
    found = []
    for _ in range(2):
        clock.now += 100
        found.append(lacking.check())
    assert found[0] is None and "GPU: 1" in found[1]       # first seen, then confirmed


def test_stall_timeout_comes_from_the_environment(monkeypatch):
    from kernelbank.stages.watchdog import DEFAULT_STALL_SECONDS, stall_seconds
    monkeypatch.delenv("KERNELBANK_STALL_SECONDS", raising=False)
    assert stall_seconds() == DEFAULT_STALL_SECONDS
    monkeypatch.setenv("KERNELBANK_STALL_SECONDS", "0")
    assert stall_seconds() == 0
    monkeypatch.setenv("KERNELBANK_STALL_SECONDS", "soon")
    with pytest.raises(ValueError, match="KERNELBANK_STALL_SECONDS"):
        stall_seconds()


@pytest.mark.slow
@pytest.mark.ray
def test_a_stage_waiting_for_a_gpu_the_cluster_lacks_fails_with_a_message(data, tmp_path):
    # the command a user runs, with its own embedded Ray, started with SIGINT ignored as
    # a shell starts a background job (`kernelbank fit ... &`) and as some supervisors
    # start their children: the watchdog's interrupt once relied on SIGINT and the stage
    # then waited for ever (it hung the test suite whenever the suite ran in the background)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(KERNELBANK_STALL_SECONDS="3", KERNELBANK_STALL_DEBUG="1", PYTHONPATH=str(ROOT))
    command = ["fit", "--input", str(data), "--output", str(tmp_path / "out"), "--radius", "2",
               "--num-gpus", "1"]
    ignoring_sigint = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                       f"sys.argv = ['kernelbank'] + {command!r}; "
                       "runpy.run_module('kernelbank.cli', run_name='__main__')")
    try:
        done = subprocess.run([sys.executable, "-c", ignoring_sigint], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as hung:      # what the driver said while it waited
        said = hung.stderr.decode(errors="replace") if isinstance(hung.stderr, bytes) \
            else hung.stderr or ""
        pytest.fail(f"the stalled fit did not fail in 120 s:\n{said[-3000:]}")
    message = done.stderr.split("kernelbank fit: error: ", 1)[-1]
    assert done.returncode == 3, done.stderr[-3000:]
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
            # a cheap actor: its worker imports neither kernelbank nor torch
            imported = ray_local.get(counter.__ray_call__.remote(
                lambda _: sorted({"torch", "kernelbank"} & set(sys.modules))))
            assert imported == []
            time.sleep(0.5)
            ray_local.kill(counter)
            time.sleep(1.5)
            counter.add.remote(2, 0)             # a write task's call: not an error either
    text = stream.getvalue()
    assert "fit: progress counter lost (ActorDiedError)" in text
    assert "fit: 3/10 images" in text
