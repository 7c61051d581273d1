"""Texture classification accuracy: kernelbank against classic texture descriptors.

Usage::

    python bench/accuracy.py [ROOT] [--json FILE] [--methods a,b,...] [--patch-size 64]

``ROOT`` is any ``root/{train,test}/<class>/<image>`` folder (PNG/JPEG/TIFF/.npy);
default: the built-in textures (``kernelbank.datasets.textures``), written once to
``--cache``. Every method is trained on ``train`` and scored on ``test``:

kernelbank
    ``ar_svm``         AR coefficients at dilations 1-5 (isotropic, radius 4) + SVM:
                       the original ConvAR recipe.
    ``bank_svm``       residual features of per-class pooled kernels at dilations 1-3
                       (isotropic, radius 4; log mae/mse/var/grid energy, gain, win rate) + SVM.
    ``bank_full_svm``  the same with the full (unconstrained 9x9) kernel basis.
    ``likelihood``     per-class pooled full kernels at dilations 1-3, Gaussian residual
                       likelihood; no classifier training at all.
peers
    ``lbp_svm``        uniform LBP histograms (skimage), radii 1, 2, 3 with 8r points.
    ``gabor_svm``      Gabor filter-bank energy (skimage.filters.gabor): mean and std of
                       the magnitude, 4 frequencies x 6 orientations.
    ``scattering_svm`` wavelet scattering (kymatio, J=3, L=8), spatial mean of each of
                       the 217 channels; skipped with a message if kymatio is missing.

Every "*_svm" method gets the same classifier and the same tuning: StandardScaler + SVC,
5-fold grid search on the training set over kernel {linear, rbf} x C {0.1, 1, 10, 100}.
Features are extracted once per image (the bank of ``bank_*`` is learned from the whole
training set before the grid search, so its CV scores are optimistic; the test set is
never seen). ``images/s`` is inference throughput on the test set: feature extraction
plus prediction, measured in this run, single process. The machine is shared, so read
the ratio column (against ``lbp_svm``), not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from kernelbank.sklearn import ARFeatures, ARLikelihoodClassifier, BankFeatures

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}
GRID = {"svc__kernel": ["linear", "rbf"], "svc__C": [0.1, 1.0, 10.0, 100.0]}


# ---------------------------------------------------------------------------- data
def load_split(root: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    from PIL import Image

    images, labels = [], []
    folder = root / split
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: ROOT must hold train/<class>/ and test/<class>/")
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in SUFFIXES:
                continue
            if path.suffix.lower() == ".npy":
                image = np.load(path).astype(np.float32)
            else:
                image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
            images.append(image)
            labels.append(class_dir.name)
    if not images:
        raise SystemExit(f"no images under {folder}")
    return images, np.array(labels)


def as_batch(images: list[np.ndarray]):
    """A 3-D array when all images share one shape (faster), else the list."""
    return np.stack(images) if len({i.shape for i in images}) == 1 else images


# ---------------------------------------------------------------------------- peers
def lbp_features(images, radii=(1, 2, 3)) -> np.ndarray:
    from skimage.feature import local_binary_pattern

    rows = []
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        parts = []
        for r in radii:
            p = 8 * r
            codes = local_binary_pattern(image, p, r, method="uniform")
            hist, _ = np.histogram(codes, bins=np.arange(p + 3), density=True)
            parts.append(hist)
        rows.append(np.concatenate(parts))
    return np.array(rows)


def gabor_features(images, frequencies=(0.05, 0.1, 0.2, 0.4), n_orientations=6) -> np.ndarray:
    from skimage.filters import gabor

    rows = []
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        image = (image - image.mean()) / max(image.std(), 1e-12)
        parts = []
        for f in frequencies:
            for i in range(n_orientations):
                real, imag = gabor(image, frequency=f, theta=np.pi * i / n_orientations)
                magnitude = np.hypot(real, imag)
                parts += [magnitude.mean(), magnitude.std()]
        rows.append(parts)
    return np.array(rows)


def scattering_extractor() -> Callable | None:
    try:   # the 2-D frontend only: kymatio 0.3's 3-D module breaks on scipy >= 1.15
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as error:
        print(f"# scattering_svm skipped: kymatio is not importable ({error})", file=sys.stderr)
        return None
    import torch

    cache: dict[tuple[int, int], object] = {}

    def extract(images) -> np.ndarray:
        rows = []
        for image in images:
            image = np.asarray(image, dtype=np.float32)
            image = (image - image.mean()) / max(float(image.std()), 1e-12)
            shape = image.shape
            if shape not in cache:
                cache[shape] = ScatteringTorch2D(J=3, shape=shape, L=8)
            out = cache[shape](torch.from_numpy(image)[None])
            rows.append(out.mean(dim=(-2, -1)).flatten().numpy())
        return np.array(rows)

    return extract


# ---------------------------------------------------------------------------- runs
def svm_search(seed: int) -> GridSearchCV:
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return GridSearchCV(make_pipeline(StandardScaler(), SVC()), GRID, cv=cv, n_jobs=1)


def run_features(transform_fit, transform, train, y_train, test, y_test, seed):
    features = transform_fit(train, y_train)
    search = svm_search(seed).fit(features, y_train)
    start = time.perf_counter()
    predicted = search.predict(transform(test))
    seconds = time.perf_counter() - start
    params = {k.split("__")[1]: v for k, v in search.best_params_.items()}
    return float(np.mean(predicted == y_test)), len(test) / seconds, params


def methods(seed: int) -> dict[str, tuple[str, Callable]]:
    def transformer(make):
        def run(train, y_train, test, y_test):
            est = make()
            return run_features(lambda x, y: est.fit(x, y).transform(x), est.transform,
                                train, y_train, test, y_test, seed)
        return run

    def plain(extract):
        return lambda train, y_train, test, y_test: run_features(
            lambda x, y: extract(x), extract, train, y_train, test, y_test, seed)

    def likelihood(train, y_train, test, y_test):
        clf = ARLikelihoodClassifier(radius=4, basis="full", dilations=(1, 2, 3)).fit(train, y_train)
        start = time.perf_counter()
        predicted = clf.predict(test)
        seconds = time.perf_counter() - start
        return float(np.mean(predicted == y_test)), len(test) / seconds, {}

    table = {
        "ar_svm": ("kernelbank", transformer(lambda: ARFeatures(radius=4, basis="isotropic",
                                                                dilations=(1, 2, 3, 4, 5)))),
        "bank_svm": ("kernelbank", transformer(lambda: BankFeatures(
            radius=4, basis="isotropic", method="pooled", dilations=(1, 2, 3)))),
        "bank_full_svm": ("kernelbank", transformer(lambda: BankFeatures(
            radius=4, basis="full", method="pooled", dilations=(1, 2, 3)))),
        "likelihood": ("kernelbank", likelihood),
        "lbp_svm": ("peer", plain(lbp_features)),
        "gabor_svm": ("peer", plain(gabor_features)),
    }
    scattering = scattering_extractor()
    if scattering is not None:
        table["scattering_svm"] = ("peer", plain(scattering))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="folder with train/<class>/ and test/<class>/")
    parser.add_argument("--json", help="write {method: {accuracy, images_per_s, family}} here")
    parser.add_argument("--methods", help="comma-separated subset of methods to run")
    parser.add_argument("--patch-size", type=int, default=64, help="built-in textures only")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kernelbank-textures"),
                        help="where the built-in textures are written (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.root:
        root = Path(args.root)
    else:
        from kernelbank.datasets.textures import ensure_textures
        root = Path(args.cache) / f"p{args.patch_size}"
        ensure_textures(root, patch_size=args.patch_size)
    train, y_train = load_split(root, "train")
    test, y_test = load_split(root, "test")
    train, test = as_batch(train), as_batch(test)
    classes = sorted(set(y_train))
    print(f"# {root}: {len(y_train)} train / {len(y_test)} test images, {len(classes)} classes "
          f"({', '.join(classes)})")

    table = methods(args.seed)
    chosen = list(table) if not args.methods else args.methods.split(",")
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(table)}")
    results = {}
    for name in chosen:
        family, run = table[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accuracy, speed, params = run(train, y_train, test, y_test)
        results[name] = {"accuracy": accuracy, "images_per_s": speed, "family": family,
                         "params": params}
        print(f"# done {name}: {accuracy:.4f}", file=sys.stderr, flush=True)

    base = results.get("lbp_svm", {}).get("images_per_s")
    print(f"{'method':<16}{'family':<12}{'accuracy':>9}{'error':>8}{'images/s':>10}"
          f"{'vs lbp':>8}  classifier")
    for name, r in results.items():
        ratio = f"{r['images_per_s'] / base:7.2f}x" if base else "      -"
        print(f"{name:<16}{r['family']:<12}{r['accuracy']:>9.4f}{1 - r['accuracy']:>8.4f}"
              f"{r['images_per_s']:>10.1f}{ratio:>8}  {r['params'] or 'none'}")
    ours = [r["accuracy"] for r in results.values() if r["family"] == "kernelbank"]
    peers = [r["accuracy"] for r in results.values() if r["family"] == "peer"]
    if ours and peers:
        best_ours, best_peer = max(ours), max(peers)
        ratio = (1 - best_ours) / (1 - best_peer) if best_peer < 1 else float("inf")
        print(f"# best kernelbank {best_ours:.4f} vs best peer {best_peer:.4f}: error ratio "
              f"{ratio:.2f} (target <= 0.33)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {k: {f: v[f] for f in ("accuracy", "images_per_s", "family")}
             for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
