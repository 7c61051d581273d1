"""Nothing in an output or a checkpoint is ever unpickled: planted payloads never run.

Each payload creates a sentinel file when unpickled (its ``__reduce__`` calls ``open``),
so "never loaded" is observable. No Ray: the output is written with the run writer, the
way the reduce and train stages write it.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.io.bank_file import save_bank
from kernelbank.io.runs import RunWriter, open_published
from kernelbank.io.stats_file import load_stats, save_stats
from kernelbank.nn import EndToEndClassifier, ModelConfig, load_model, save_model
from kernelbank.report import collect_run
from kernelbank.stages.features import load_bank_and_stats
from kernelbank.stages.train_worker import STATE_FILE, STATE_JSON, load_checkpoint, save_checkpoint


class Payload:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def output(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(20, 20)).cumsum(i % 2) for i in range(6)]
    labels = ["a", "b"] * 3
    stats = kb.ClassStats.from_fit(kb.fit(images, kb.Basis.isotropic(1)), labels)
    bank = kb.KernelBank.from_stats(stats, "pca", n_components=1)
    model = EndToEndClassifier(ModelConfig(class_names=("a", "b"), radius=1, dilations=(1,),
                                           n_kernels=2)).init_random()
    out = str(tmp_path / "out")

    def reduce(stage):
        Path(stage.path).mkdir(parents=True)
        save_bank(bank, str(Path(stage.path) / "bank.npz"))
        save_stats(stats, str(Path(stage.path) / "stats_s1_d1.npz"))
        return {}

    def train(stage):
        Path(stage.path).mkdir(parents=True)
        save_model(model, str(Path(stage.path) / "model.pt"))
        (Path(stage.path) / "summary.json").write_text(json.dumps({"epochs": []}))
        return {}

    run = RunWriter.open(out, {"fit": {}, "reduce": {}, "train": {}})
    with run:
        run.stage("fit").run_once(lambda stage: {})
        run.stage("reduce").run_once(reduce)
        run.stage("train").run_once(train)
        view = run.publish({"stages": {}})
    return {"url": out, "view": view, "stats": stats, "bank": bank, "sentinel": tmp_path / "pwned"}


def test_planted_stats_pickle_is_never_read(output):
    view, sentinel = output["view"], output["sentinel"]
    banks = Path(view.stage_path("reduce"))
    (banks / "stats_d1.pkl").write_bytes(pickle.dumps(Payload(sentinel)))
    bank, stats = load_bank_and_stats(view.stage_url("reduce"))
    assert stats[(1, 1)].classes == ["a", "b"]
    np.testing.assert_array_equal(stats[(1, 1)]["a"].sum_gram, output["stats"]["a"].sum_gram)
    collect_run(output["url"])
    assert not sentinel.exists()


def test_stats_archive_with_objects_is_refused(output):
    view, sentinel = output["view"], output["sentinel"]
    path = Path(view.stage_path("reduce")) / "stats_s1_d1.npz"
    buffer = io.BytesIO()
    np.savez(buffer, header_json=np.array([Payload(sentinel)], dtype=object))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError):
        load_stats(str(path))
    with pytest.raises(ValueError):
        load_bank_and_stats(view.stage_url("reduce"))
    data = collect_run(output["url"])                   # the report carries on, with a note
    assert data.bank is not None and any("explained-variance" in n for n in data.notes)
    assert not sentinel.exists()


def test_planted_model_is_never_unpickled(output):
    view, sentinel = output["view"], output["sentinel"]
    model = Path(view.stage_path("train")) / "model.pt"
    torch.save({"format": "kernelbank.end_to_end", "payload": Payload(sentinel)}, model)
    with pytest.raises(pickle.UnpicklingError):
        load_model(str(model))
    data = collect_run(output["url"])                   # the report shows the rest
    assert data.learned is None and any("model" in n for n in data.notes)
    assert not sentinel.exists()


def test_malicious_training_checkpoint_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    good = tmp_path / "good"
    good.mkdir()
    weights = {"w": torch.arange(3.0)}
    save_checkpoint(str(good), model_state=weights, optimizer_state={"state": {},
                    "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]},
                    epoch=2, history=[{"epoch": 0}], best={"test_accuracy": 0.5, "epoch": 1,
                                                           "state": weights},
                    model_config={"class_names": ["a"]})
    back = load_checkpoint(str(good))                   # the real format loads
    assert back["epoch"] == 2 and torch.equal(back["best"]["state"]["w"], weights["w"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"model": Payload(sentinel)}, bad / STATE_FILE)
    (bad / STATE_JSON).write_text((good / STATE_JSON).read_text())
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(bad))
    assert not sentinel.exists()


def test_published_view_reads_only_manifest_files(output):
    """A file planted in a stage folder after publication is not part of the run."""
    view = output["view"]
    (Path(view.stage_path("reduce")) / "extra.parquet").write_bytes(b"planted")
    assert all("extra" not in f for f in open_published(output["url"]).stage_files("reduce"))
