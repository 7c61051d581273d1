"""The whole pipeline on a real local Ray, from and to a real S3 endpoint (moto server),
checked against the in-process computation.

One module-scoped run (3 GMRF classes, 32x32 PNGs, radius 2, dilations 1 and 2, plus a
corrupt file, a too-small image and a NaN volume, uploaded to a bucket) feeds every test
here; its outputs are written to the bucket and downloaded for the checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import kernelbank as kb
from kernelbank.cli import main
from kernelbank.io.bank_file import load_bank
from kernelbank.io.runs import open_published
from kernelbank.io.stats_file import load_stats
from kernelbank.stages.table import unpack_columns

from .pipeline_data import BAD_RECORDS, write_dataset

pytestmark = [pytest.mark.ray, pytest.mark.s3]
DILATIONS = (1, 2)
SECRET = "testing-secret-do-not-log"        # the s3_endpoint fixture's secret key


@pytest.fixture(scope="module")
def run(ray_local, s3_endpoint, tmp_path_factory):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = "kb-pipeline"
    if fs.exists(bucket):
        fs.rm(bucket, recursive=True)
    fs.mkdir(bucket)
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "images"
    write_dataset(data, classes=3, per_class=6, size=32)
    fs.put(str(data), f"{bucket}/images", recursive=True)
    fs.touch(f"{bucket}/images/train/c0/")          # a zero-byte "directory marker" key
    log = root / "log.txt"
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["run", "--input", f"s3://{bucket}/images", "--output", f"s3://{bucket}/out",
                     "--radius", "2", "--dilations", *map(str, DILATIONS),
                     "--batch-size", "4", "--max-actors", "2", "--bank-method", "pooled",
                     # the bank features and the linear head (not the defaults): equal to
                     # their pixel paths and scikit-learn below
                     "--feature-groups", "own", "residual", "image", "bank", "--head", "ridge"])
    log.write_text(printed.getvalue())
    assert code == 0, printed.getvalue()[-3000:]
    fs.invalidate_cache()
    objects = {p: fs.cat(p) for p in fs.find(f"{bucket}/out")}
    leftovers = [p for p in fs.find(bucket) if p.endswith("_lease.json") or ".tmp-" in p]
    fs.get(f"{bucket}/out", str(root / "out"), recursive=True)
    # the downloaded copy is an output like any other: read it through its pointer
    view = open_published(str(root / "out"))
    # downloaded output paths say s3 bucket/images/...; map ids back to the local copy
    return {"data": data, "out": Path(view.path), "view": view, "prefix": f"{bucket}/images",
            "summary": view.summary, "objects": objects, "leftovers": leftovers,
            "printed": printed.getvalue()}


def _local(run, record_id: str) -> str:
    return str(run["data"]) + record_id[len(run["prefix"]):]


def _good_files(data: Path) -> list[Path]:
    bad = {data / p for p in BAD_RECORDS}
    return sorted(p for p in data.rglob("*") if p.suffix in (".png", ".npy") and p not in bad)


def _reference_images(files: list[Path]) -> list[np.ndarray]:
    # independent decode: Pillow's uint8 greyscale as float32
    return [np.asarray(Image.open(p), dtype=np.float32) for p in files]


def test_every_record_lands_exactly_once(run):
    data, out = run["data"], run["out"]
    fit = pq.read_table(out / "fit")
    errors = pq.read_table(out / "errors")
    fit_ids = [_local(run, i) for i in fit.column("id").to_pylist()]
    error_ids = [_local(run, i) for i in errors.column("id").to_pylist()]
    assert len(fit_ids) == len(set(fit_ids)) and len(error_ids) == len(set(error_ids))
    every = {str(p) for p in data.rglob("*") if p.suffix in (".png", ".npy")}
    assert set(fit_ids) | set(error_ids) == every
    assert not set(fit_ids) & set(error_ids)
    reasons = dict(zip(error_ids, errors.column("reason").to_pylist()))
    for rel, text in BAD_RECORDS.items():
        assert text in reasons[str(data / rel)], reasons
    assert set(errors.column("stage").to_pylist()) == {"decode"}


def test_summary_counts_and_layout(run):
    summary = run["summary"]
    assert summary["records"] == 3 * 6 * 2 + 3 and summary["images"] == 36
    assert summary["errors"] == 3 and summary["stages"]["fit"]["errors"] == {"decode": 3}
    assert summary["stages"]["fit"]["counts"] == {
        "test": {"c0": 6, "c1": 6, "c2": 6}, "train": {"c0": 6, "c1": 6, "c2": 6}}
    assert summary["stages"]["reduce"]["classes"] == {"c0": 6, "c1": 6, "c2": 6}
    assert summary["stages"]["features"]["images"] == 36
    for stage in ("fit", "reduce", "features", "classify"):
        assert summary["stages"][stage]["seconds"] > 0
        assert summary["stages"][stage]["images_per_second"] > 0
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["recipe"].startswith(f"{summary['settings']['basis']} radius ")
    assert sorted(p.name for p in run["out"].iterdir()) == \
        ["_run.json", "banks", "classify", "errors", "features", "fit", "manifest.json",
         "report", "summary.json"]                                # report: `run` adds it
    assert not run["leftovers"]                 # no lease, no temporary object
    # the manifest lists every file of every stage with its rows, as written
    stages = run["view"].manifest["stages"]
    parts = lambda stage: [f for f in stages[stage]["files"]  # noqa: E731
                           if f["path"].rsplit("/", 1)[-1].startswith(f"{stage}-")]
    assert sum(f["rows"] for f in parts("fit")) == 36
    assert sum(f["rows"] for f in stages["fit"]["errors"]) == 3
    assert sum(f["rows"] for f in parts("features")) == 36
    # the fit stage listed the input once and kept the listing (good and bad records)
    listing = pq.read_table(run["out"] / "fit" / "_inputs.parquet")
    assert listing.num_rows == 39
    fit = summary["stages"]["fit"]
    assert fit["bytes_read"] == fit["input_bytes"] == sum(listing.column("size").to_pylist())
    # where the fit tasks' time went, as they measured it
    assert fit["task_seconds"]["compute"] > 0 and fit["task_seconds"]["read"] > 0
    assert fit["nodes"] == 1
    # the feature stage's tasks, one per fit file, say where theirs went
    features = summary["stages"]["features"]
    assert features["files"] == len(parts("fit")) and features["task_seconds"]["compute"] > 0
    assert "[kernelbank] fit:" in run["printed"] and "wrote s3://kb-pipeline/out" in run["printed"]


def test_no_credentials_in_outputs_or_logs(run):
    assert run["objects"]
    for path, content in run["objects"].items():
        assert SECRET.encode() not in content, path
    assert SECRET not in run["printed"]


def test_fit_rows_equal_in_process_fit(run):
    files = _good_files(run["data"])
    fit = unpack_columns(pq.read_table(run["out"] / "fit")).to_pylist()
    by_id = {_local(run, row["id"]): row for row in fit}
    images = _reference_images(files)
    result = kb.fit(images, kb.Basis.full(2), dilations=list(DILATIONS), return_sums=True)
    coef = np.array([by_id[str(p)]["coef"] for p in files]).reshape(result.coef.shape)
    # float32 pixels: both paths sum float32 products over ≤ 2^17 terms, then float64
    np.testing.assert_allclose(coef, result.coef.double().numpy(), rtol=0, atol=1e-5)
    mse = np.array([by_id[str(p)]["mse"] for p in files])
    np.testing.assert_allclose(mse, result.mse.double().numpy(), rtol=1e-5)
    # the window sums: the statistics every later stage is algebra on
    rows = np.array([by_id[str(p)]["sums"] for p in files])
    expected = np.concatenate([kb.sums_to_rows(ws) for ws in result.sums], 1)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-3)
    # the residual descriptors, against the core's own pixel path
    from kernelbank.core.fit import default_descriptors       # with the image patterns
    descriptors, _ = kb.residual_features(images, kb.Basis.full(2), dilations=list(DILATIONS),
                                          descriptors=default_descriptors(2, True))
    got = np.array([by_id[str(p)]["descriptors"] for p in files])
    np.testing.assert_allclose(got, descriptors.numpy(), rtol=1e-4, atol=1e-4)
    assert by_id[str(files[0])]["shape"] == [32, 32]
    assert by_id[str(files[0])]["split"] in ("train", "test")


def test_reduce_equals_in_process_statistics_and_bank(run):
    out = run["out"]
    fit_files = sorted((out / "fit").glob("*.parquet"))
    # the classes must be spread over several files (blocks), or a broken merge would pass
    per_file = [set(pq.read_table(f, columns=["label"]).column("label").to_pylist())
                for f in fit_files]
    spread = [c for c in ("c0", "c1", "c2") if sum(c in s for s in per_file) >= 2]
    assert len(fit_files) >= 2 and spread
    assert run["summary"]["stages"]["reduce"]["partial_stats_merged"] >= 2
    train = [p for p in _good_files(run["data"]) if p.parts[-3] == "train"]
    labels = [p.parts[-2] for p in train]
    basis, half = kb.Basis.full(2), len(train) // 2
    whole_fit = kb.fit(_reference_images(train), basis, dilations=list(DILATIONS))
    # reference: fitted in two halves and merged, as the stats docs promise sums merge
    first = kb.fit(_reference_images(train[:half]), basis, dilations=list(DILATIONS))
    second = kb.fit(_reference_images(train[half:]), basis, dilations=list(DILATIONS))
    banks = []
    for index, dilation in enumerate(DILATIONS):
        expected = kb.ClassStats.from_fit(first, labels[:half], scale=index) + \
            kb.ClassStats.from_fit(second, labels[half:], scale=index)
        whole = kb.ClassStats.from_fit(whole_fit, labels, scale=index)
        got = load_stats(str(out / f"banks/stats_s1_d{dilation}.npz"))
        assert got.classes == expected.classes == ["c0", "c1", "c2"]
        for name in got.classes:
            for field in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs"):
                value = getattr(got[name], field)
                # float32 images: the stage's and kb.fit's float32 partial sums differ
                # in order; float64 merges add ~1e-15 relative on top
                np.testing.assert_allclose(value, getattr(expected[name], field),
                                           rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(value, getattr(whole[name], field),
                                           rtol=1e-5, atol=1e-4)
            assert got[name].n == 6 and got[name].n_pixels == whole[name].n_pixels
        banks.append(kb.KernelBank.from_stats(expected, "pooled"))
    bank = load_bank(str(out / "banks/bank.npz"))
    reference = kb.KernelBank.concat(banks)
    np.testing.assert_allclose(bank.kernels.numpy(), reference.kernels.numpy(), atol=1e-6)
    assert bank.dilations.tolist() == [1, 1, 1, 2, 2, 2]


def test_features_from_the_table_equal_the_pixel_paths(run):
    out = run["out"]
    table = pq.read_table(out / "features")
    names = json.loads((out / "features/_kernelbank.json").read_text())["feature_names"]
    assert table.column_names[:4] == ["id", "path", "label", "split"]
    assert table.column_names[4:-1] == names and table.column_names[-1] == "likelihood_prediction"
    assert not run["summary"]["stages"]["features"]["reads_images"]
    assert run["summary"]["stages"]["features"]["own_kernel"] == "spectrum"
    bank = load_bank(str(out / "banks/bank.npz"))
    files = _good_files(run["data"])
    images = _reference_images(files)
    rows = {_local(run, r["id"]): r for r in table.to_pylist()}
    got = lambda columns: np.array([[rows[str(p)][c] for c in columns]  # noqa: E731
                                    for p in files])
    # bank kernels: the pixel path convolves every kernel over every image
    pixel, pixel_names = kb.bank_features(images, bank, grid=1)
    for stat in ("mse", "var"):
        columns = [n for n in pixel_names if n.endswith(f"_{stat}")]
        expected = np.log(pixel[:, [pixel_names.index(c) for c in columns]].numpy())
        np.testing.assert_allclose(got([c.replace(f"_{stat}", f"_log_{stat}") for c in columns]),
                                   expected, rtol=1e-5, atol=1e-5)
    gains = [n for n in pixel_names if n.endswith("_gain")]
    np.testing.assert_allclose(got(gains), pixel[:, [pixel_names.index(c) for c in gains]],
                               rtol=1e-5, atol=1e-5)
    # own kernels (their spectral descriptors, by default) and log MSE: kb.fit on the pixels
    from kernelbank.core.spectrum import spectral_invariants, spectrum_operator
    own = kb.fit(images, kb.Basis.full(2), dilations=list(DILATIONS))
    operator = spectrum_operator(kb.Basis.full(2).kernels.numpy())
    for e, dilation in enumerate(DILATIONS):
        spectra = [n for n in names if n.startswith(f"ar_s1_d{dilation}_spec_")]
        np.testing.assert_allclose(got(spectra),
                                   spectral_invariants(own.coef[:, e].numpy(), operator),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got([f"ar_s1_d{dilation}_log_mse"])[:, 0],
                                   np.log(own.mse[:, e].numpy()), rtol=1e-5)
    # residual descriptors: the rotation-invariant ones; the image's ri patterns beside
    kept = [n for n in kb.residual_descriptor_names() if "nri" not in n and "cooc" not in n]
    assert sum(n.startswith("res_") for n in names) == 2 * len(kept)
    assert sum(n.startswith("img_") for n in names) == 2 * 10
    assert sum(n.startswith("joint_") for n in names) == len(bank)


def test_classify_equals_scikit_learn(run):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    out = run["out"]
    table = pq.read_table(out / "features").to_pandas()
    names = json.loads((out / "features/_kernelbank.json").read_text())["feature_names"]
    train, test = table[table.split == "train"], table[table.split == "test"]
    summary = run["summary"]["stages"]["classify"]
    assert summary["alpha_chosen_by"].startswith("5-fold CV")
    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=summary["alpha"]))
    model.fit(train[names].to_numpy(), train.label.to_numpy())
    predicted = model.predict(test[names].to_numpy())
    written = pq.read_table(out / "classify" / "predictions").to_pandas().set_index("id")
    assert list(written.loc[test.id, "predicted"]) == list(predicted)
    assert summary["test_accuracy"] == pytest.approx(float((predicted == test.label).mean()))
    from sklearn.metrics import confusion_matrix
    expected = confusion_matrix(test.label, predicted, labels=["c0", "c1", "c2"])
    assert summary["splits"]["test"]["confusion"] == expected.tolist()
    likelihood = float((test.likelihood_prediction == test.label).mean())
    assert summary["likelihood_test_accuracy"] == pytest.approx(likelihood)
