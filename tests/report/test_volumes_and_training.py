"""Reports of 3-D volumes and of end-to-end training, on outputs built with the core.

No Ray here: the bank comes from :func:`kb.fit` + :class:`kb.ClassStats` exactly as the
reduce stage builds it, the model file from :func:`kernelbank.nn.save_model`, and the
tables are written with pyarrow into a run published with the pipeline's run writer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import kernelbank as kb
from kernelbank.io.bank_file import save_bank
from kernelbank.io.runs import RunWriter
from kernelbank.io.stats_file import save_stats
from kernelbank.nn import EndToEndClassifier, ModelConfig, save_model
from kernelbank.report import figures, write_report

from .test_report import _Page

SHAPE = (11, 12, 13)


def _volumes(root: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    rng = np.random.default_rng(0)
    images, labels, paths = [], [], []
    for label, axis in (("layers", 0), ("columns", 2)):
        for i in range(3):
            volume = rng.normal(size=SHAPE).cumsum(axis).astype(np.float32)
            path = root / "test" / label / f"v{i}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, volume)
            images.append(volume)
            labels.append(label)
            paths.append(str(path))
    return images, labels, paths


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    images, labels, paths = _volumes(root / "data")
    out = root / "out"
    basis = kb.Basis.isotropic(radius=1, ndim=3)
    stats = kb.ClassStats.from_fit(kb.fit(np.stack(images), basis), labels)
    bank = kb.KernelBank.from_stats(stats, "pca", n_components=1)
    model = EndToEndClassifier(ModelConfig(class_names=("columns", "layers"), radius=1,
                                           dilations=(1, 2), n_kernels=2, ndim=3)).init_random()
    epochs = [{"epoch": e, "loss": 1.0 / (e + 1), "train_accuracy": 0.5 + 0.1 * e,
               "validation_accuracy": 0.5 + 0.05 * e, "images_per_s": 100.0 + e}
              for e in range(3)]
    train = {"test_accuracy": 0.6, "validation_accuracy": 0.6, "best_epoch": 2,
             "images_per_s": 101.5, "epochs": epochs}

    def fit(stage):
        folder = Path(stage.path)
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": paths, "path": paths, "label": labels,
                                 "split": ["test"] * len(paths),
                                 "shape": [list(SHAPE)] * len(paths)}),
                       folder / "fit-000000.parquet")
        (folder / "_kernelbank.json").write_text(json.dumps({"ndim": 3, "radius": 1}))
        return {}

    def reduce(stage):
        Path(stage.path).mkdir(parents=True)
        save_bank(bank, str(Path(stage.path) / "bank.npz"))
        save_stats(stats, str(Path(stage.path) / "stats_s1_d1.npz"))
        return {}

    def trained(stage):
        Path(stage.path).mkdir(parents=True)
        save_model(model, str(Path(stage.path) / "model.pt"))
        train["checkpoint"] = str(Path(stage.path) / "model.pt")
        (Path(stage.path) / "summary.json").write_text(json.dumps(train))
        return train

    run = RunWriter.open(str(out), {"fit": {}, "reduce": {}, "train": {}})
    with run:
        for name, write in (("fit", fit), ("reduce", reduce), ("train", trained)):
            run.stage(name).run_once(write)
        run.publish({"input": str(root / "data"), "images": len(paths), "errors": 0,
                     "test_accuracy": None, "stages": {}})
    index = Path(write_report(str(out), samples_per_class=1))
    page = _Page()
    page.feed(index.read_text())
    return {"out": out, "report": index.parent, "index": index, "page": page, "bank": bank,
            "stats": stats, "model": model, "train": train}


def test_middle_slices_are_the_centre_planes():
    volume = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    a, b, c = figures.middle_slices(volume)
    assert np.array_equal(a, volume[2]) and np.array_equal(b, volume[:, 3]) and \
        np.array_equal(c, volume[:, :, 3])


def test_volume_samples_show_one_row_per_axis(output):
    folder = output["report"]
    samples = sorted(p for p in output["page"].images if p.startswith("sample_"))
    assert len(samples) == 2                                       # one per class
    volume = np.load(next((output["out"].parent / "data" / "test" / "layers").glob("*.npy")))
    flat = figures.sample_panel(volume[5], volume[5], np.zeros(volume[5].shape, int), ["k"], "2-D")
    with Image.open(folder / samples[0]) as three, Image.open(io.BytesIO(flat)) as two:
        assert three.height > 2.5 * two.height                    # three rows of slices


def test_pca_variance_share_equals_eigenvalue_over_trace(output):
    bank, stats = output["bank"], output["stats"]
    derived = {i["data-key"]: json.loads(i["data-value"]) for i in output["page"].numbers
               if i["data-source"] == "derived"}
    for i, name in enumerate(bank.kernel_names):
        if not name.endswith("_d1") or i % 3 != 1:                 # mean, +pc1, -pc1 per class
            continue
        cov = stats[bank.class_names[int(bank.class_index[i])]].covariance
        top = np.linalg.eigvalsh(cov)[-1]
        assert derived[f"explained_variance.{name}"] == pytest.approx(top, rel=1e-9)
        assert derived[f"variance_share.{name}"] == pytest.approx(top / np.trace(cov), rel=1e-9)


def test_training_curves_kernels_and_numbers(output):
    page, train = output["page"], output["train"]
    assert {"learning_curves.png", "learned_kernels.png"} <= set(page.images)
    for item in page.numbers:
        if item["data-source"] == "train":
            key = item["data-key"].split(".")
            value = train
            for part in key:
                value = value[int(part)] if isinstance(value, list) else value[part]
            assert json.loads(item["data-value"]) == value
    keys = {i["data-key"] for i in page.numbers if i["data-source"] == "train"}
    assert {"test_accuracy", "validation_accuracy", "best_epoch", "epochs.2.loss",
            "epochs.0.validation_accuracy"} <= keys
    with Image.open(output["report"] / "learned_kernels.png") as image:
        image.load()                     # 2 dilations x 2 kernels, 3 slices each: taller than wide
        assert image.height > image.width
