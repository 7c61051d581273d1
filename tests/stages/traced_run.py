"""``kernelbank`` in a subprocess, optionally under ``strace``, and the opens strace saw.

``kernelbank run`` runs under ``strace -f -e trace=openat`` (every process it starts — the
Ray head, raylet, workers — is traced), and every successful open of a file under a
folder can be counted. This counts what the operating system saw, independently of
kernelbank's own bookkeeping. Shared by tests/stages/test_one_pass.py and, through the
``trained_run`` fixture of tests/conftest.py, by tests/report/test_report.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_OPEN = re.compile(r'^(\d+)\s+openat\([^,]+, "([^"]+)", ([^)<]*)(?:\) += (-?\d+)|<unfinished)')
_RESUMED = re.compile(r'^(\d+)\s+<\.\.\. openat resumed>.*\) += (-?\d+)')


def strace_works(*options: str) -> bool:
    """strace is installed and may trace here (containers often forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", *options, "-qq", "-o", os.devnull, "true"],
                           capture_output=True)
    return probe.returncode == 0


STRACE = strace_works()
# With a seccomp filter only the traced call stops the process: Ray runs near full speed.
_FAST = ["--seccomp-bpf"] if STRACE and strace_works("--seccomp-bpf") else []


def kernelbank(args: list[str], cwd: Path, log: Path | None) -> subprocess.CompletedProcess:
    """``python -m kernelbank.cli ARGS`` with its own embedded Ray; traced into ``log``.

    With ``log=None`` the command runs untraced.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)            # a cluster's workers would not be traced
    trace = [] if log is None else ["strace", "-f", *_FAST, "-qq", "-e", "trace=openat",
                                    "-o", str(log)]
    return subprocess.run([*trace, sys.executable, "-m", "kernelbank.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def opens(log: Path, root: Path) -> Counter:
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
