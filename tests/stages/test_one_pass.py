"""One pass over the pixels, counted by the kernel: every image is opened once per run.

``kernelbank run`` runs in a subprocess under ``strace -f -e trace=openat`` (every
process it starts — the Ray head, raylet, workers — is traced), and every successful
open of a file under the input folder is counted. This counts what the operating system
saw, independently of kernelbank's own bookkeeping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .pipeline_data import write_dataset



def _strace_works(*options: str) -> bool:
    """strace is installed and may trace here (containers often forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", *options, "-qq", "-o", os.devnull, "true"],
                           capture_output=True)
    return probe.returncode == 0


# With a seccomp filter only the traced call stops the process: Ray runs near full speed.
_FAST = ["--seccomp-bpf"] if _strace_works("--seccomp-bpf") else []


pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not _strace_works(),
                                 reason="strace is missing or may not trace here "
                                        "(.ci/run installs it as root)")]

REPO = Path(__file__).resolve().parents[2]
_OPEN = re.compile(r'^(\d+)\s+openat\([^,]+, "([^"]+)", ([^)<]*)(?:\) += (-?\d+)|<unfinished)')
_RESUMED = re.compile(r'^(\d+)\s+<\.\.\. openat resumed>.*\) += (-?\d+)')


def _traced(args: list[str], log: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    command = ["strace", "-f", *_FAST, "-qq", "-e", "trace=openat", "-o", str(log),
               sys.executable, "-m", "kernelbank.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _opens(log: Path, root: Path) -> Counter:
    """Successful opens of regular files below ``root`` (directories are listings).

    A call that another thread interrupts is logged in two lines, ``<unfinished ...>``
    and ``<... openat resumed> = fd``, matched here by the thread id."""
    counts: Counter = Counter()
    prefix = str(root) + "/"
    pending: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        if match := _OPEN.search(line):
            tid, path, flags, result = match.groups()
            if not path.startswith(prefix) or "O_DIRECTORY" in flags:
                continue
            if result is None:
                pending[tid] = path
            elif int(result) >= 0:
                counts[path] += 1
        elif (match := _RESUMED.search(line)) and match.group(1) in pending:
            path = pending.pop(match.group(1))
            if int(match.group(2)) >= 0:
                counts[path] += 1
    return counts


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_pass")
    write_dataset(root / "images", classes=3, per_class=6, size=32)
    return root


def _images(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "images").rglob("*")
                  if p.suffix in (".png", ".npy"))


@pytest.fixture(scope="module")
def trained_run(dataset) -> Path:
    """One traced ``kernelbank run --train``: fit, reduce, features, classify, report, train."""
    out, log = dataset / "out", dataset / "run.strace"
    done = _traced(["run", "--input", str(dataset / "images"), "--output", str(out),
                    "--radius", "2", "--dilations", "1", "2", "--max-actors", "1",
                    "--train", "--train-epochs", "3"],
                   log, dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_run_with_training_opens_every_image_once(dataset, trained_run):
    opened = _opens(dataset / "run.strace", dataset / "images")
    images = _images(dataset)
    assert set(opened) == set(images)                 # every image was read ...
    twice = {path: n for path, n in opened.items() if n > 1}
    # ... once, except the report's samples (two test images per class, opened again)
    assert len(twice) <= 2 * 3 and all(n == 2 for n in twice.values()), twice
    assert all("/test/" in path for path in twice), twice


def test_rerun_of_features_with_another_bank_reads_no_image(dataset, trained_run):
    for stage, extra in (("reduce", ["--bank-method", "pca", "--n-components", "1"]),
                         ("features", [])):
        log = dataset / f"{stage}.strace"
        done = _traced([stage, "--output", str(trained_run), "--overwrite", "--max-actors", "1",
                        *extra], log, dataset)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not _opens(log, dataset / "images"), stage
