"""Kill the real `kernelbank run` driver (a subprocess with its own embedded Ray) anywhere,
rerun the same command, and get exactly what a clean run gives.

Each driver runs with a private Ray temp dir holding a *stale* ``ray_current_cluster``
file that points at a dead head: a bare ``ray.init()`` would wait on it forever, so every
start here also checks that the embedded Ray ignores it. Points of death:

* SIGKILL while the fit stage writes its part files (watched from outside),
* SIGTERM while the feature stage runs (``ray job stop``): a clean stop, exit 143,
* SIGKILL between the manifest and the pointer (fault point ``publish``),

then a final rerun must publish the same rows, banks and accuracy as a clean in-process
run, with one run folder and no lease or temporary file left. On S3: SIGKILL at the end of the feature stage, before its marker, then the resume
(SIGKILL at the pointer on S3 is in tests/io/test_runs.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelbank.cli import main
from kernelbank.io.bank_file import load_bank
from kernelbank.io.runs import NothingPublished, open_published
from kernelbank.io.storage import resolve

from .pipeline_data import write_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--radius", "1", "--batch-size", "2", "--max-actors", "1", "--no-report"]
TIMEOUT = 420


@pytest.fixture(scope="module")
def ray_tmp():
    """A short private RAY_TMPDIR (socket paths must stay short) with a stale cluster file."""
    folder = tempfile.mkdtemp(prefix="kbr", dir="/tmp")
    os.makedirs(os.path.join(folder, "ray"))
    with open(os.path.join(folder, "ray", "ray_current_cluster"), "w") as handle:
        handle.write("127.0.0.1:1")                       # nothing listens there
    yield folder
    _stop_leftovers(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _stop_leftovers(ray_tmp: str) -> None:
    """SIGKILL the Ray processes of drivers this test started (found by their temp dir)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if ray_tmp.encode() in command:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def _driver(data: str, output: str, ray_tmp: str, kill_at: str | None = None,
            log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp,
           "KERNELBANK_TESTING": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    if kill_at:
        env["KERNELBANK_FAULT_KILL_AT"] = kill_at
    handle = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "kernelbank.cli", "run", "--input", data,
                             "--output", output, *ARGS], env=env, cwd=REPO,
                            stdout=handle, stderr=subprocess.STDOUT)


def _wait_until(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, ray_tmp: str, log: Path) -> int:
    try:
        code = proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the driver did not finish: {log.read_text()[-3000:]}")
    time.sleep(1)                        # Ray's own processes follow their driver ...
    _stop_leftovers(ray_tmp)             # ... and whatever did not is stopped here
    return code


def _parts(output: str, folder: str) -> list[str]:
    fs, root = resolve(output)
    fs.invalidate_cache()
    found = fs.glob(f"{root}/runs/*/{folder}/*.parquet") if fs.exists(root) else []
    return found


def _read(view, files) -> pa.Table:
    tables = []
    for path in files:
        if path.endswith(".parquet"):
            with view.fs.open(path, "rb") as handle:
                tables.append(pq.read_table(handle))
    return pa.concat_tables(tables)


def _bank(view):
    fs = view.fs
    with fs.open(f"{view.stage_path('reduce')}/bank.npz", "rb") as handle:
        local = Path(tempfile.mkdtemp()) / "bank.npz"
        local.write_bytes(handle.read())
    return load_bank(str(local))


def _assert_same_as_clean(view, clean) -> None:
    fit = _read(view, view.stage_files("fit", ".parquet"))
    ref = _read(clean, clean.stage_files("fit", ".parquet"))
    ids = fit.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(ref.column("id").to_pylist())
    coef = dict(zip(ids, fit.column("coef").to_pylist()))
    for rid, want in zip(ref.column("id").to_pylist(), ref.column("coef").to_pylist()):
        np.testing.assert_allclose(coef[rid], want, rtol=1e-9, atol=1e-12)
    errors = _read(view, view.error_files()).column("id").to_pylist()
    assert sorted(errors) == sorted(_read(clean, clean.error_files()).column("id").to_pylist())
    features = _read(view, view.stage_files("features", ".parquet")).column("id").to_pylist()
    assert len(features) == len(set(features)) == len(ids)
    np.testing.assert_allclose(_bank(view).kernels.numpy(), _bank(clean).kernels.numpy(),
                               atol=1e-10)
    assert view.summary["test_accuracy"] == clean.summary["test_accuracy"]
    assert view.summary["images"] == clean.summary["images"]


def _assert_nothing_left(output: str, view) -> None:
    fs, root = resolve(output)
    fs.invalidate_cache()
    everything = fs.find(root)
    runs = {p[len(root) + 1:].split("/")[1] for p in everything
            if p[len(root) + 1:].startswith("runs/")}
    assert runs == {view.run_id}
    assert not [p for p in everything if p.endswith("_lease.json") or ".tmp-" in p]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    write_dataset(root / "images", classes=2, per_class=4, size=24)
    return root


@pytest.fixture(scope="module")
def clean(ray_local, data):
    out = str(data / "clean")
    assert main(["run", "--input", str(data / "images"), "--output", out, *ARGS]) == 0
    return open_published(out)


def test_killed_anywhere_locally_resumes_to_the_clean_result(clean, data, ray_tmp, tmp_path):
    images, out = str(data / "images"), str(tmp_path / "out")
    logs = [tmp_path / f"attempt{i}.log" for i in range(4)]

    first = _driver(images, out, ray_tmp, log=logs[0])
    _wait_until(first, lambda: _parts(out, "fit"), "the first fit part file")
    first.send_signal(signal.SIGKILL)
    assert _finish(first, ray_tmp, logs[0]) == -signal.SIGKILL
    assert not list(Path(out).glob("runs/*/fit/_SUCCESS.json")), "killed too late: fit done"

    second = _driver(images, out, ray_tmp, log=logs[1])
    _wait_until(second, lambda: "features:" in logs[1].read_text(), "the feature stage")
    second.send_signal(signal.SIGTERM)                     # what `ray job stop` sends
    assert _finish(second, ray_tmp, logs[1]) == 143, logs[1].read_text()[-3000:]
    assert "resuming run" in logs[1].read_text()
    assert "rerun the same command to resume" in logs[1].read_text()
    assert not list(Path(out).glob("runs/*/_lease.json"))  # a clean stop frees the run

    third = _driver(images, out, ray_tmp, kill_at="publish", log=logs[2])
    assert _finish(third, ray_tmp, logs[2]) == -signal.SIGKILL, logs[2].read_text()[-3000:]
    assert list(Path(out).glob("runs/*/manifest.json"))
    with pytest.raises(NothingPublished):
        open_published(out)

    last = _driver(images, out, ray_tmp, log=logs[3])
    assert _finish(last, ray_tmp, logs[3]) == 0, logs[3].read_text()[-3000:]
    text = logs[3].read_text()
    assert "fit: complete in run" in text and "features: complete in run" in text
    view = open_published(out)
    _assert_same_as_clean(view, clean)
    _assert_nothing_left(out, view)


@pytest.mark.s3
def test_killed_on_s3_resumes_to_the_clean_result(clean, data, ray_tmp, tmp_path, s3_bucket):
    images, out = str(data / "images"), f"s3://{s3_bucket}/out"
    logs = [tmp_path / f"attempt{i}.log" for i in range(2)]
    first = _driver(images, out, ray_tmp, kill_at="features.finish", log=logs[0])
    assert _finish(first, ray_tmp, logs[0]) == -signal.SIGKILL, logs[0].read_text()[-3000:]
    assert _parts(out, "features")                        # written, but no marker
    with pytest.raises(NothingPublished):
        open_published(out)

    last = _driver(images, out, ray_tmp, log=logs[1])
    assert _finish(last, ray_tmp, logs[1]) == 0, logs[1].read_text()[-3000:]
    assert "resuming run" in logs[1].read_text()
    view = open_published(out)
    _assert_same_as_clean(view, clean)
    _assert_nothing_left(out, view)
