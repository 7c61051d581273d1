"""The train stage on a real local Ray (2 CPU workers) and a real S3 endpoint (moto).

One interrupted run and its resumption cover: reading a PNG folder with the shared
reader (with an undecodable file and two images of another size in the train split, so
the workers get uneven batches), learning well above chance on the built-in textures,
checkpoints and outputs on ``s3://``, resuming the epoch counter and the optimizer state,
the CLI, and an exported model that reproduces the reported test accuracy.
"""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pytest

from kernelbank import cli
from kernelbank.datasets import load_textures, write_textures
from kernelbank.io.runs import open_published
from kernelbank.nn import load_model
from kernelbank.stages.train import STATE_JSON, TrainConfig, run_train

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

CLASSES = ("brick", "grass", "gravel")
SETTINGS = {"epochs": 3, "batch_size": 32, "workers": 2}


def _saved_states(fs, runs: str) -> dict[int, dict]:
    """Checkpointed epoch counters and histories by epoch (num_to_keep=2 keeps two)."""
    folders = [p for p in fs.ls(runs) if os.path.basename(p).startswith("checkpoint_")
               and fs.isdir(p)]                              # not checkpoint_manager_snapshot.json
    states = {}
    for folder in folders:
        with fs.open(f"{folder}/{STATE_JSON}") as f:
            state = json.load(f)
        states[state["epoch"]] = state
    return states


# ray_local starts the S3 endpoint first, so the Train workers inherit its AWS variables
def test_interrupt_resume_export_on_s3(s3_endpoint, ray_local, s3_bucket, tmp_path, capsys):
    import ray.train
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    write_textures(tmp_path / "textures", patch_size=32, classes=CLASSES)
    (tmp_path / "textures/train/brick/broken.png").write_bytes(b"not a png")
    from PIL import Image
    big = load_textures(patch_size=40, classes=("grass",))[0]
    for i in (0, 1):
        Image.fromarray(big[i]).save(tmp_path / f"textures/train/grass/big{i}.png")
    data, output = str(tmp_path / "textures"), f"s3://{s3_bucket}/out"
    interrupted = TrainConfig(input=data, output=output, classes=CLASSES, fail_after_epoch=1,
                              **SETTINGS)
    with pytest.raises(ray.train.TrainingFailedError, match="fault drill"):
        run_train(interrupted)
    # nothing published; the unpublished run holds the checkpoints
    (run_dir,) = fs.ls(f"{s3_bucket}/out/runs")
    saved = _saved_states(fs, f"{run_dir}/train/checkpoints/end_to_end")
    assert sorted(saved) == [0, 1] and [h["epoch"] for h in saved[1]["history"]] == [0, 1]

    code = cli.main(["train", "--input", data, "--output", output,
                     "--classes", ",".join(CLASSES), "--epochs", "3", "--batch-size", "32",
                     "--workers", "2"])
    assert code == 0
    view = open_published(output)
    assert view.path == run_dir                              # the same run, resumed
    with fs.open(f"{view.stage_path('train')}/summary.json") as f:
        summary = json.load(f)

    history = summary["epochs"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["skipped_rows"] == 1
    assert "broken.png" in history[0]["skipped_examples"][0]["path"]
    # Ray resumes from the latest checkpoint its controller registered: epoch 1's report
    # can lose the race against the failure raised right after it, then epoch 0's is used
    resumed = summary["resumed_from_epoch"]
    assert resumed in (1, 2)
    assert history[:resumed] == saved[resumed - 1]["history"]   # carried over, not retrained
    steps = [h["optimizer_steps"] for h in history]
    # 160 train patches per class, 32 of them (20 %) carved out for validation → 128 → ~192
    # per worker → ~12 steps of 32 / 2 per epoch (the odd images shift a step or two); a
    # fresh optimizer after the restart would report ~12 again at the first resumed epoch
    assert 11 <= steps[0] <= 14 and steps[1] - steps[0] >= 11 and steps[2] - steps[1] >= 11
    validation = summary["validation"]
    assert validation["source"] == "carved from train"
    assert validation["per_class"] == {c: 32 for c in CLASSES}
    assert all(h["validation_images"] == 96 for h in history)
    # the epoch is chosen on validation (the earliest best), the test split scored once
    scores = [h["validation_accuracy"] for h in history]
    assert summary["best_epoch"] == scores.index(max(scores))
    assert summary["validation_accuracy"] == max(scores)
    assert all("test_accuracy" not in h for h in history)
    assert summary["test_accuracy"] > 0.6                    # chance is 1/3

    model = load_model(summary["checkpoint"])                # the s3:// URL
    images, labels, splits = load_textures(patch_size=32, classes=CLASSES)
    test_images, test_labels = images[splits == "test"], labels[splits == "test"]
    assert len(test_labels) == summary["test_images"]
    predicted = np.array(model.predict(test_images.astype(np.float32)))
    assert np.mean(predicted == test_labels) == pytest.approx(summary["test_accuracy"], abs=1e-12)

    local_model = tmp_path / "model.pt"
    fs.get(summary["checkpoint"], str(local_model))
    paths = []
    for i in (0, 100, 200):
        paths.append(str(tmp_path / f"patch{i}.png"))
        Image.fromarray(test_images[i]).save(paths[-1])
    capsys.readouterr()
    assert cli.main(["predict", str(local_model), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{p}\t{predicted[i]}" for p, i in zip(paths, (0, 100, 200))]
