"""An embedded Ray starts even when the machine's last `ray start` cluster is dead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]


def test_stale_cluster_file_does_not_hang_the_embedded_ray():
    folder = tempfile.mkdtemp(prefix="kbs", dir="/tmp")     # short: socket paths
    try:
        os.makedirs(os.path.join(folder, "ray"))
        Path(folder, "ray", "ray_current_cluster").write_text("127.0.0.1:1")   # dead head
        code = ("from kernelbank.stages.common import connect_ray; import ray; "
                "info = connect_ray(quiet=True); print(info['mode']); ray.shutdown()")
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": folder}
        env.pop("RAY_ADDRESS", None)
        try:
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=120, start_new_session=True)
        except subprocess.TimeoutExpired:
            pytest.fail("connect_ray hung on the stale ray_current_cluster file")
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "embedded"
    finally:
        for pid in os.listdir("/proc"):                    # Ray processes of this test only
            try:
                if pid.isdigit() and folder.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), 9)
            except OSError:
                pass
        shutil.rmtree(folder, ignore_errors=True)
