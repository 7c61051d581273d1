"""One pass over the pixels, counted by the kernel: every image is opened once per run.

``kernelbank run --train`` (the session's ``trained_run``: fit, reduce, features,
classify, one training epoch, report) runs in a subprocess under
``strace -f -e trace=openat``; every process it starts is traced and every successful
open of a file under the input folder is counted (see :mod:`.traced_run`). One epoch
proves the point: training that read images instead of the fit stage's pixel cache
would open each of them at least once more.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .traced_run import STRACE, kernelbank, opens

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(not STRACE,
                                 reason="strace is missing or may not trace here "
                                        "(.ci/run installs it as root)")]


def _images(images: Path) -> list[str]:
    return sorted(str(p) for p in images.rglob("*") if p.suffix in (".png", ".npy"))


def test_run_with_training_opens_every_image_once(trained_run):
    opened = opens(trained_run["trace"], trained_run["images"])
    images = _images(trained_run["images"])
    assert set(opened) == set(images)                 # every image was read ...
    twice = {path: n for path, n in opened.items() if n > 1}
    # ... once, except the report's samples (two test images per class, opened again)
    assert len(twice) <= 2 * 3 and all(n == 2 for n in twice.values()), twice
    assert all("/test/" in path for path in twice), twice


def test_rerun_of_features_with_another_bank_reads_no_image(trained_run, tmp_path):
    output = tmp_path / "out"                        # a copy: the shared run stays as it is
    shutil.copytree(trained_run["out"], output)
    for stage, extra in (("reduce", ["--bank-method", "pca"]), ("features", [])):
        log = tmp_path / f"{stage}.strace"
        done = kernelbank([stage, "--output", str(output), "--overwrite", "--max-actors", "1",
                           *extra], tmp_path, log)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not opens(log, trained_run["images"]), stage
