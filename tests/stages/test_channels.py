"""``--channels``: the pipeline on colour images, on a real local Ray.

One folder holds RGB vector-GMRF textures (two classes), a greyscale PNG and an RGBA PNG.
``--channels rgb`` runs end to end from the folder and from ``kernelbank pack`` shards,
checked against the core computed in-process on images decoded here with Pillow alone;
``--channels luminance`` against the one-channel core; ``--channels all`` turns the
records of another channel count into error rows.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import kernelbank as kb
from kernelbank.cli import main
from kernelbank import image_statistics as channel_image_statistics
from kernelbank.core.fit import default_descriptors
from kernelbank.core.fit import image_statistics
from kernelbank.io.bank_file import load_bank
from kernelbank.io.runs import open_published
from kernelbank.io.stats_file import load_stats
from kernelbank.stages.table import unpack_columns

from .colour_data import write_colour_dataset

pytestmark = [pytest.mark.ray]
RADIUS, DILATIONS = 1, (1, 2)
COMMON = ["--radius", str(RADIUS), "--dilations", *map(str, DILATIONS), "--batch-size", "4",
          "--max-actors", "1"]


def _cli(*args: str) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(list(args))
    assert code == 0, printed.getvalue()[-3000:]
    return printed.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("channels")
    info = write_colour_dataset(root / "images", classes=2, per_class=3, size=24)
    return {"root": root, "images": root / "images", **info}


@pytest.fixture(scope="module")
def rgb_run(ray_local, data) -> Path:
    out = data["root"] / "rgb"
    _cli("run", "--input", str(data["images"]), "--output", str(out), "--channels", "rgb",
         *COMMON, "--feature-groups", "own", "residual", "image", "bank")   # bank: tested below
    return Path(open_published(str(out)).path)


def _files(images: Path) -> list[Path]:
    return sorted(images.rglob("*.png"))


def _bands(path: Path) -> np.ndarray:
    """Independent decode for --channels rgb: Pillow's array, grey repeated, alpha cut."""
    array = np.asarray(Image.open(path))
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    return np.ascontiguousarray(array[..., :3].transpose(2, 0, 1))


def _rows(run: Path, images: Path) -> dict[str, dict]:
    """Fit-table rows by path relative to the image folder."""
    rows = unpack_columns(pq.read_table(run / "fit")).to_pylist()
    return {row["path"].split("images/", 1)[-1].split("#")[0]: row for row in rows}


def _by_file(rows: dict, files: list[Path], images: Path, column: str) -> np.ndarray:
    return np.array([rows[str(f.relative_to(images))][column] for f in files])


def test_rgb_fit_rows_equal_the_core_on_the_bands(rgb_run, data):
    files = _files(data["images"])
    rows = _rows(rgb_run, data["images"])
    assert len(rows) == len(files)                       # no error row: grey and RGBA fit
    assert not list((rgb_run / "errors").glob("*.parquet")) or \
        pq.read_table(rgb_run / "errors").num_rows == 0
    basis = kb.Basis.full(RADIUS, channels=3)
    reference = channel_image_statistics([_bands(f) for f in files], basis,
                                         dilations=DILATIONS,      # the stage's descriptors
                                         descriptors=default_descriptors(2, True))
    n = len(files)
    # the same uint8 pixels, z-scored in float32: the actor normalises other groups of
    # images than this call, and float32 reductions of other shapes round differently
    # (~1e-7 relative), which the solve carries into the coefficients
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "coef"),
                               reference.coef.reshape(n, -1).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "mse"),
                               reference.mse.reshape(n, -1).numpy(), rtol=1e-5)
    upper = np.triu_indices(3)
    covariance = reference.covariance.numpy()[..., upper[0], upper[1]].reshape(n, -1)
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "covariance"), covariance,
                               rtol=1e-5, atol=1e-7)
    sums = np.concatenate([kb.sums_to_rows(ws) for ws in reference.sums], 1)
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "sums"), sums,
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "descriptors"),
                               reference.descriptors.reshape(n, -1).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert rows["train/c1/rgba.png"]["shape"] == [3, 24, 24]


def test_rgba_alpha_is_ignored(rgb_run, data):
    rows = _rows(rgb_run, data["images"])
    rgba = data["rgba_pixels"]
    basis = kb.Basis.full(RADIUS, channels=3)
    without = channel_image_statistics(rgba[None, ..., :3].transpose(0, 3, 1, 2), basis,
                                       dilations=DILATIONS, descriptors=False)
    row = rows["train/c1/rgba.png"]
    # float32 z-scoring of another group of images: see the test above
    np.testing.assert_allclose(row["coef"], without.coef.reshape(-1).numpy(), rtol=0, atol=1e-5)
    # the alpha is noise: kept as a band, the image would have other sums
    assert len(row["sums"]) == sum(kb.sums_to_rows(ws).shape[1] for ws in without.sums)


def test_grey_image_is_replicated_into_equal_channels(rgb_run, data):
    row = _rows(rgb_run, data["images"])["train/c0/grey.png"]
    basis = kb.Basis.full(RADIUS, channels=3)
    t = (2 * RADIUS + 1) ** 2
    sums = kb.sums_from_rows(np.array([row["sums"]])[:, :len(row["sums"]) // 2],
                             radius=RADIUS, dilation=1, ndim=2, channels=3)
    cross = sums.cross[0].reshape(3, t, 3, t)
    # three copies of one image: every channel pair holds the same products, exactly
    for a in range(3):
        for b in range(3):
            assert torch.equal(cross[a, :, b], cross[0, :, 0])
    # so the own vector kernel is symmetric under any permutation of the channels: one
    # weight pattern on a channel's own input, one on each other channel
    kernels = basis.to_kernels(torch.tensor(row["coef"]).reshape(2, 3, -1))   # (S, 3, 3, k, k)
    scale = float(kernels.abs().max())
    for a in range(3):
        for b in range(3):
            same = kernels[:, a, b] - kernels[:, 0, 0] if a == b else \
                kernels[:, a, b] - kernels[:, 0, 1]
            # the ridge makes the singular (replicated) problem unique and symmetric; the
            # Cholesky of A + λnI rounds at ~cond·eps of that nearly singular matrix
            assert float(same.abs().max()) <= 1e-6 * scale, (a, b)
    mse = np.array(row["mse"]).reshape(2, 3)
    np.testing.assert_allclose(mse, mse[:, :1].repeat(3, 1), rtol=1e-6, atol=1e-12)


def test_channels_are_recorded_in_metadata_and_summary(rgb_run):
    meta = json.loads((rgb_run / "fit" / "_kernelbank.json").read_text())
    assert meta["channels"] == "rgb" and meta["n_channels"] == 3
    assert meta["descriptor_names"][0].startswith("c0_")
    summary = json.loads((rgb_run / "summary.json").read_text())
    assert summary["settings"]["channels"] == "rgb" and summary["settings"]["n_channels"] == 3
    assert summary["stages"]["fit"]["channels"] == "rgb"
    assert summary["stages"]["fit"]["bytes_per_image"] > 0


def _train_images(data) -> tuple[list[np.ndarray], list[str]]:
    files = [f for f in _files(data["images"]) if f.parts[-3] == "train"]
    return [_bands(f) for f in files], [f.parts[-2] for f in files]


def test_reduce_equals_the_class_statistics_of_the_pixel_fit(rgb_run, data):
    images, labels = _train_images(data)
    fitted = kb.fit(images, kb.Basis.full(RADIUS, channels=3), dilations=list(DILATIONS))
    for e, d in enumerate(DILATIONS):
        stats = load_stats(str(rgb_run / "banks" / f"stats_s1_d{d}.npz"))
        expected = kb.ClassStats.from_fit(fitted, labels, scale=e)
        assert stats.classes == expected.classes == ["c0", "c1"]
        for name in stats.classes:
            got, want = stats[name], expected[name]
            assert got.n == want.n
            # float32 z-scoring of other groups of images: see the first test
            np.testing.assert_allclose(got.sum_gram, want.sum_gram, rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(got.sum_coef, want.sum_coef, rtol=0, atol=1e-5)
    bank = load_bank(str(rgb_run / "banks" / "bank.npz"))
    assert bank.channels == 3 and bank.kernels.shape[1:3] == (3, 3)


def test_features_and_likelihood_equal_the_pixel_paths(rgb_run, data):
    files = _files(data["images"])
    images = [_bands(f) for f in files]
    table = pq.read_table(rgb_run / "features").to_pylist()
    by_path = {r["path"].split("images/", 1)[-1]: r for r in table}
    rows = [by_path[str(f.relative_to(data["images"]))] for f in files]
    bank = load_bank(str(rgb_run / "banks" / "bank.npz"))
    pixel, names = kb.bank_features(images, bank)
    for column in ("mse", "gain"):
        chosen = [i for i, n in enumerate(names) if n.endswith(f"_{column}")]
        assert chosen
        for i in chosen:
            name = names[i]
            key = name.rpartition("_")[0] + "_log_mse" if column == "mse" else name
            got = np.array([r[key] for r in rows])
            want = pixel[:, i].numpy()
            want = np.log(np.maximum(want, 1e-12)) if column == "mse" else want
            # float32 z-scoring of other groups of images: see the first test
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=key)
    stats = [load_stats(str(rgb_run / "banks" / f"stats_s1_d{d}.npz"))
             for d in DILATIONS]
    classifier = kb.LikelihoodClassifier.from_stats(stats, z=None)
    assert [r["likelihood_prediction"] for r in rows] == list(classifier.predict(images))
    # own-kernel features: per output channel, and the residual correlations
    first = rows[0]
    assert "ar_s1_d1_ch2_c25" in first and "ar_s1_d2_ch0_log_mse" in first
    cov = np.array(_rows(rgb_run, data["images"])[str(files[0].relative_to(data["images"]))]
                   ["covariance"])[:6]
    assert np.isclose(first["ar_s1_d1_corr_c0_c1"], cov[1] / np.sqrt(cov[0] * cov[3]))


def test_report_draws_each_class_bank_as_channel_grids(rgb_run):
    html = (rgb_run / "report" / "index.html").read_text()
    assert "3×3 grid" in html
    assert sorted(p.name for p in (rgb_run / "report").glob("bank_*.png")) == \
        ["bank_000.png", "bank_001.png"]


def test_rgb_from_packed_shards_equals_the_folder_run(ray_local, rgb_run, data):
    shards = data["root"] / "shards"
    _cli("pack", str(data["images"]), str(shards))
    out = data["root"] / "rgb_shards"
    _cli("run", "--input", str(shards), "--output", str(out), "--channels", "rgb", "--no-report",
         *COMMON)
    packed = Path(open_published(str(out)).path)
    folder = unpack_columns(pq.read_table(rgb_run / "fit")).to_pylist()
    shard = unpack_columns(pq.read_table(packed / "fit")).to_pylist()
    assert len(shard) == len(folder) == len(_files(data["images"]))
    key = lambda r: (r["split"], r["label"], tuple(r["sums"][:8]))  # noqa: E731
    for a, b in zip(sorted(folder, key=key), sorted(shard, key=key)):
        assert a["shape"] == b["shape"] == [3, 24, 24]
        # the same pixels, perhaps in other groups (float32 z-scoring: see the first test)
        np.testing.assert_allclose(a["sums"], b["sums"], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(a["coef"], b["coef"], rtol=0, atol=1e-5)
    meta = json.loads((packed / "fit" / "_kernelbank.json").read_text())
    assert meta["channels"] == "rgb" and meta["n_channels"] == 3
    result = json.loads((packed / "classify" / "result.json").read_text())
    expected = json.loads((rgb_run / "classify" / "result.json").read_text())
    assert result["test_accuracy"] == expected["test_accuracy"]


def test_luminance_equals_the_one_channel_core(ray_local, data):
    out = data["root"] / "luminance"
    _cli("fit", "--input", str(data["images"]), "--output", str(out), "--channels", "luminance",
         *COMMON)
    run = Path(open_published(str(out)).path)
    files = _files(data["images"])
    rows = _rows(run, data["images"])
    assert "covariance" not in pq.read_table(run / "fit").column_names
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    images = []
    for f in files:
        array = np.asarray(Image.open(f))
        rgb = array[..., :3] if array.ndim == 3 else None
        grey = rgb is None or (np.array_equal(rgb[..., 0], rgb[..., 1])
                               and np.array_equal(rgb[..., 0], rgb[..., 2]))
        images.append(array if rgb is None else rgb[..., 0] if grey else
                      rgb.astype(np.float32) @ luma)
    reference = image_statistics(images, kb.Basis.full(RADIUS), dilations=DILATIONS)
    n = len(files)
    # float32 z-scoring of other groups of images: see the first test
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "coef"),
                               reference.coef.reshape(n, -1).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_by_file(rows, files, data["images"], "sums"),
                               np.concatenate([kb.sums_to_rows(ws) for ws in reference.sums], 1),
                               rtol=1e-5, atol=1e-3)
    meta = json.loads((run / "fit" / "_kernelbank.json").read_text())
    assert meta["channels"] == "luminance" and meta["n_channels"] == 1
    # a luminance run's fingerprint is the one it had before channels existed: its input
    # spec has no channel fields; another mode changes the fingerprint
    from kernelbank.config import ReadConfig
    from kernelbank.stages.summary import input_spec
    plain = input_spec(ReadConfig(str(data["images"])))
    assert not {"channels", "n_channels"} & set(plain)
    assert input_spec(ReadConfig(str(data["images"]), channels="rgb")) == \
        {**plain, "channels": "rgb"}


def test_all_makes_other_channel_counts_error_rows(ray_local, data):
    out = data["root"] / "all"
    _cli("fit", "--input", str(data["images"]), "--output", str(out), "--channels", "all",
         *COMMON)
    run = Path(open_published(str(out)).path)
    errors = pq.read_table(run / "errors").to_pylist()
    reasons = {r["path"].split("images/", 1)[-1]: r["reason"] for r in errors}
    assert set(reasons) == {"train/c0/grey.png", "train/c1/rgba.png"}
    assert "grey.png has 1 channel(s)" in reasons["train/c0/grey.png"]
    assert "rgba.png has 4 channel(s)" in reasons["train/c1/rgba.png"]
    assert all("have 3" in r for r in reasons.values())
    assert {r["stage"] for r in errors} == {"decode"}
    fit = pq.read_table(run / "fit")
    assert fit.num_rows == len(_files(data["images"])) - 2
    assert json.loads((run / "fit" / "_kernelbank.json").read_text())["n_channels"] == 3
