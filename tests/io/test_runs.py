"""Runs, publication and resume on a local disk and a real S3 endpoint (moto), no Ray.

Crashes are real: a process running the real run writer (tests/io/fake_command.py) is
SIGKILLed at named points, then the same command is rerun. Concurrency is real: two such
processes race to publish one output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kernelbank.io.atomic import create_exclusive, read_versioned, replace_if
from kernelbank.io.layout import LEASE, MANIFEST, MARKER, POINTER, RUNS, write_json
from kernelbank.io.lease import Lease, LeaseBusy, holder_alive
from kernelbank.io.runs import (KEEP_PUBLISHED, NothingPublished, RunWriter, StageMismatch,
                                open_published)
from kernelbank.io.storage import join, resolve

from . import fake_command

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def output(request, tmp_path):
    """An output URL on a local disk or in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out"


def _fake(output: str, *args: str, kill_at: str | None = None, wait: bool = True,
          **popen) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERNELBANK_TESTING": "1"}
    if kill_at:
        env["KERNELBANK_FAULT_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "tests.io.fake_command", output, *args]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **popen)
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, **popen)


def _result(done) -> dict:
    assert done.returncode in (0, 3), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_process(capsys, *args: str) -> dict:
    """The fake command in this process (no crash needed: saves an interpreter start)."""
    capsys.readouterr()
    assert fake_command.main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _published_ids(view) -> list[str]:
    ids = []
    for path in view.stage_files("fit", ".parquet"):
        with view.fs.open(path, "rb") as handle:
            ids += pq.read_table(handle).column("id").to_pylist()
    return ids


def _listing(output: str) -> list[str]:
    fs, root = resolve(output)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def test_publish_then_refuse_then_replace(output, capsys):
    first = _in_process(capsys, output, "--value", "1", "--no-overwrite")
    view = open_published(output)
    assert view.run_id == first["run_id"] and view.stages == ("fit", "reduce")
    assert sorted(_published_ids(view)) == [f"1-{i}" for i in range(6)]
    with pytest.raises(FileExistsError, match="already holds fit, reduce"):
        fake_command.main([output, "--value", "2", "--no-overwrite"])
    assert open_published(output).run_id == first["run_id"]           # untouched
    second = _in_process(capsys, output, "--value", "2")
    view = open_published(output)
    assert view.run_id == second["run_id"] != first["run_id"]
    with view.fs.open(join(view.stage_path("reduce"), "total.json")) as handle:
        assert json.load(handle)["total"] == 2 * 6                     # only run 2's rows
    entry = view.manifest["stages"]["fit"]
    assert [f["rows"] for f in entry["files"]] == [2, 2, 2]


def test_crashes_anywhere_resume_to_the_clean_result(output, capsys):
    clean_url = output.rstrip("/") + "-clean"
    _in_process(capsys, clean_url)
    # killed after the second part file of fit, at the end of reduce, and between the
    # manifest and the pointer; each rerun of the same command resumes the same run
    crashes = [_fake(output, kill_at=point) for point in ("fake.part1", "reduce.finish",
                                                          "publish")]
    assert [c.returncode for c in crashes] == [-signal.SIGKILL] * 3
    with pytest.raises(NothingPublished):
        open_published(output)
    final = _result(_fake(output))
    assert final["resumed"] and final["written"] == []                # nothing redone twice
    # the second attempt wrote only the part the first did not finish
    fit = open_published(output).manifest["stages"]["fit"]
    assert len({f["path"].split("-")[1] for f in fit["files"]}) == 2   # two attempts' files
    view, reference = open_published(output), open_published(clean_url)
    ids = _published_ids(view)
    assert sorted(ids) == sorted(_published_ids(reference)) and len(ids) == len(set(ids)) == 6
    for v in (view, reference):
        with v.fs.open(join(v.stage_path("reduce"), "total.json")) as handle:
            assert json.load(handle)["total"] == 6
    assert view.fingerprint("fit") == reference.fingerprint("fit")
    # one run, no lease, no temporary file left behind
    left = _listing(output)
    assert {p.split("/")[1] for p in left if p.startswith(RUNS + "/")} == {view.run_id}
    assert not [p for p in left if p.endswith(LEASE) or ".tmp-" in p], left


def test_crash_inside_fit_writes_each_id_exactly_once(tmp_path):
    output = str(tmp_path / "out")
    crashed = _fake(output, "--parts", "4", kill_at="fake.part2")
    assert crashed.returncode == -signal.SIGKILL
    resumed = _result(_fake(output, "--parts", "4"))
    assert resumed["resumed"] and resumed["written"] == ["1-6", "1-7"]   # only the last part
    ids = _published_ids(open_published(output))
    assert sorted(ids) == sorted(f"1-{i}" for i in range(8)) and len(ids) == 8


def test_concurrent_runs_one_publishes_the_other_is_refused(output, tmp_path):
    hold = tmp_path / "go"
    ready = [tmp_path / "a.ready", tmp_path / "b.ready"]
    procs = [_fake(output, "--value", str(v), "--ready", str(r), "--hold", str(hold), wait=False)
             for v, r in zip((1, 2), ready)]
    deadline = time.time() + 120
    while not all(r.exists() for r in ready):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    # the same command as a running one is refused at once (it holds a live lease)
    twin = _fake(output, "--value", "1")
    assert twin.returncode == 1 and "another kernelbank driver is writing this same run" \
        in twin.stderr
    hold.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    codes = sorted(r[0] for r in results)
    assert codes == [0, 3], results                                    # one wins, one refused
    refused = json.loads(next(r[1] for r in results if r[0] == 3).strip().splitlines()[-1])
    assert "published" in refused["refused"]
    view = open_published(output)
    winner = 1 if results[0][0] == 0 else 2
    ids = _published_ids(view)
    assert sorted(ids) == sorted(f"{winner}-{i}" for i in range(6))    # never a mix
    with view.fs.open(join(view.stage_path("reduce"), "total.json")) as handle:
        assert json.load(handle)["total"] == winner * 6


def test_stage_rerun_points_upstream_and_downstream_refuses_a_mismatch(output):
    def stage_file(stage, name, payload):
        write_json(stage.fs, join(stage.path, name), payload)
        return {"name": name}

    run = RunWriter.open(output, {"fit": {"a": 1}, "reduce": {"m": "pooled"},
                                  "features": {"g": 2}})
    with run:
        for name in run.stages:
            run.stage(name).run_once(lambda st, n=name: stage_file(st, "x.json", {"by": n}))
        first = run.publish({})
    rerun = RunWriter.open(output, {"reduce": {"m": "pca"}}, overwrite=True)
    with rerun:
        rerun.stage("reduce").run_once(lambda st: stage_file(st, "x.json", {"by": "pca"}))
        second = rerun.publish({})
    assert second.stages == ("fit", "reduce")                   # features dropped, not mixed
    assert second.stage_path("fit") == first.stage_path("fit")  # reused in place, not copied
    assert second.stage_path("reduce") != first.stage_path("reduce")
    assert second.manifest["stages"]["reduce"]["upstream"]["fit"]["run"] == first.run_id
    # a manifest whose features were built on other banks than its own is refused
    fs, root = resolve(output)
    mixed = dict(second.manifest)
    mixed["stages"] = {**second.manifest["stages"],
                       "features": first.manifest["stages"]["features"]}
    write_json(fs, join(second.path, MANIFEST), mixed)
    with pytest.raises(StageMismatch, match="features output was built on the reduce output"):
        open_published(output)


def test_old_runs_are_removed_only_under_markers(output, capsys):
    fs, root = resolve(output)
    foreign = join(root, RUNS, "not-a-run", "data.txt")
    for value in range(1, KEEP_PUBLISHED + 3):
        _in_process(capsys, output, "--value", str(value))
        if value == 1:
            fs.makedirs(join(root, RUNS, "not-a-run"), exist_ok=True)
            fs.pipe_file(foreign, b"keep me")                  # no run marker: not ours
    fs.invalidate_cache()
    runs = {p.rsplit("/", 1)[-1] for p in fs.ls(join(root, RUNS), detail=False)}
    pointer = json.loads(fs.cat_file(join(root, POINTER)))
    assert runs == set(pointer["history"][:KEEP_PUBLISHED]) | {"not-a-run"}
    assert fs.cat_file(foreign) == b"keep me"


def test_unsafe_outputs_are_refused_and_left_intact(tmp_path, request):
    home = tmp_path / "home"
    (home / "notes.txt").parent.mkdir()
    (home / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a kernelbank output"):
        RunWriter.open(str(home), {"fit": {}}, overwrite=True)
    assert (home / "notes.txt").read_text() == "precious" and \
        sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValueError, match="lies inside the output"):
        RunWriter.open(str(tmp_path), {"fit": {}}, input_url=str(data))
    with pytest.raises(ValueError, match="lies inside the input"):
        RunWriter.open(str(data / "out"), {"fit": {}}, input_url=str(data))
    with pytest.raises(ValueError, match="filesystem root"):
        RunWriter.open("/", {"fit": {}}, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        RunWriter.open(str(tmp_path / "file"), {"fit": {}})
    assert not (data / "out").exists() and not (tmp_path / MARKER).exists()


@pytest.mark.s3
def test_bucket_root_and_foreign_prefix_are_refused(s3_endpoint, s3_bucket):
    fs, _ = resolve(f"s3://{s3_bucket}/x")
    fs.pipe_file(f"{s3_bucket}/theirs/object.bin", b"data")
    for url in (f"s3://{s3_bucket}", f"s3://{s3_bucket}/"):
        with pytest.raises(ValueError, match="bucket root"):
            RunWriter.open(url, {"fit": {}}, overwrite=True)
    with pytest.raises(FileExistsError, match="not a kernelbank output"):
        RunWriter.open(f"s3://{s3_bucket}/theirs", {"fit": {}}, overwrite=True)
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == [f"{s3_bucket}/theirs/object.bin"]
    with pytest.raises(ValueError, match="lies inside the output"):
        RunWriter.open(f"s3://{s3_bucket}/a", {"fit": {}}, input_url=f"s3://{s3_bucket}/a/img")


def test_compare_and_swap_and_exclusive_create(output):
    fs, root = resolve(output)
    path = join(root, "pointer.json")
    assert create_exclusive(fs, path, b"one") and not create_exclusive(fs, path, b"two")
    first = read_versioned(fs, path)
    assert first.data == b"one"
    token = replace_if(fs, path, b"mine", first.token)
    assert token and read_versioned(fs, path).data == b"mine"
    assert replace_if(fs, path, b"late", first.token) is None        # stale token: refused
    assert read_versioned(fs, path).data == b"mine"
    assert replace_if(fs, join(root, "new.json"), b"n", None)        # absent → created
    assert replace_if(fs, join(root, "new.json"), b"m", None) is None


def test_lease_of_a_dead_driver_is_taken_over_a_live_one_is_not(tmp_path):
    fs, root = resolve(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path = join(root, LEASE)
    live = Lease.acquire(fs, path, "live")
    with pytest.raises(LeaseBusy):
        Lease.acquire(fs, path, "other")
    live.release()
    info = {"attempt": "gone", "host": os.uname().nodename, "pid": int(dead),
            "heartbeat": time.time(), "timeout_s": 300}
    write_json(fs, path, info)
    assert not holder_alive(info)
    assert Lease.acquire(fs, path, "next").attempt == "next"
    elsewhere = {**info, "host": "another-host", "heartbeat": time.time() - 10}
    assert holder_alive(elsewhere) and not holder_alive({**elsewhere, "heartbeat": 0})


def test_stale_unpublished_run_of_another_command_is_cleaned_at_the_next_start(tmp_path, capsys):
    output = str(tmp_path / "out")
    crashed = _fake(output, "--value", "1", kill_at="fake.part1")
    assert crashed.returncode == -signal.SIGKILL
    stale = {p.name for p in (tmp_path / "out" / RUNS).iterdir()}
    other = _in_process(capsys, output, "--value", "2")               # another fingerprint
    assert {p.name for p in (tmp_path / "out" / RUNS).iterdir()} == {other["run_id"]}
    assert stale and other["run_id"] not in stale and not other["resumed"]
