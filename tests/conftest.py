"""Shared fixtures: a real local Ray and a real S3 endpoint (moto's server on 127.0.0.1).

Both are session-scoped: starting Ray costs seconds on a 2-core machine, so every test
that marks itself ``ray`` shares one embedded instance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local(request):
    """A real embedded Ray with 2 CPUs, shut down at the end of the session.

    The S3 endpoint starts first: Ray workers copy the driver's environment at
    ``ray.init``, so they find the endpoint's AWS variables the way cluster workers would.
    """
    request.getfixturevalue("s3_endpoint")
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a real S3 API (moto's server) on 127.0.0.1, with test credentials set.

    Sets the standard AWS variables (endpoint, keys, region) for the session so that
    code under test finds the endpoint the way it would on a cluster.
    """
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start within 30 s")
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing-secret-do-not-log",
                      AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    yield url
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh, empty bucket on the moto server; returns its name."""
    s3fs = pytest.importorskip("s3fs")
    import re
    name = "kb-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    if fs.exists(name):
        fs.rm(name, recursive=True)
    fs.mkdir(name)
    return name


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """One ``kernelbank run --train`` in a subprocess, traced by strace where it may trace.

    Every stage (fit, reduce, features, classify, report, one training epoch) on three
    GMRF classes of 32x32 PNGs plus the bad records of ``pipeline_data.BAD_RECORDS``,
    with a PCA bank of one direction per class and dilation. The run and its trace are
    shared by the one-pass test (opens per image) and the report tests (the page), which
    both need a whole run with training: one run instead of two saves minutes. Treat the
    output as read-only (copy it to rerun stages on it).

    Returns ``root``, ``images``, ``out``, ``stdout``, and ``trace`` (the strace log, or
    ``None`` where strace is missing or may not trace).
    """
    from .stages.pipeline_data import write_dataset
    from .stages.traced_run import STRACE, kernelbank
    root = tmp_path_factory.mktemp("trained_run")
    images, out = root / "images", root / "out"
    write_dataset(images, classes=3, per_class=5, size=32)
    trace = root / "run.strace" if STRACE else None
    done = kernelbank(["run", "--input", str(images), "--output", str(out), "--radius", "2",
                       "--dilations", "1", "2", "--bank-method", "pca", "--n-components", "1",
                       "--batch-size", "8", "--max-actors", "1",
                       "--train", "--train-epochs", "1"], root, trace)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"root": root, "images": images, "out": out, "stdout": done.stdout,
            "trace": trace}
