"""Texture classification accuracy: kernelbank against classic texture descriptors.

Usage::

    python bench/accuracy.py [ROOT] [--json FILE] [--methods a,b,...] [--patch-size 64]

``ROOT`` is any ``root/{train,test}/<class>/<image>`` folder (PNG/JPEG/TIFF/.npy);
default: the built-in textures (``kernelbank.datasets.textures``), written once to
``--cache``. Every method is trained on ``train`` and scored on ``test``:

kernelbank
    ``ar_svm``         AR coefficients at dilations 1-5 (isotropic, radius 4) + SVM:
                       the original ConvAR recipe (dilations that do not fit are dropped).
    ``bank_svm``       residual features of per-class pooled full kernels (radius 2 at
                       dilations 1-4, or radius 4 at 1-3): log mae/mse/var/grid energy,
                       gain, win rate, optionally the joint coefficients; + SVM.
    ``likelihood``     per-class pooled kernels, Gaussian residual likelihood; no
                       classifier training at all.
    ``own_svm``        each image's own full radius-2 coefficients at dilations 1-3 (at
                       pyramid scales 1, or 1 and 2) + the residual's log mse/mae, skewness
                       and kurtosis (``TextureFeatures`` with no pattern descriptors).
    ``residual_svm``   residual descriptors alone (``ResidualFeatures``): moments, |e|/σ
                       quantiles, residual LBP histograms [+ quantised co-occurrences].
    ``texture_svm``    own coefficients + residual descriptors (``TextureFeatures``): full
                       radius 2 or isotropic radius 4, dilations 1-3, scales 1 or 1-2.
    ``texture_bank_svm`` ``texture_svm`` + the statistics features of per-class pooled
                       kernels (log mse/var, gain [+ joint coefficients]), relearned per fold.
peers
    ``lbp_svm``        LBP histograms (skimage.feature.local_binary_pattern), 8r points
                       at radii 1-2, 1-3 or 1-5; uniform (whole image or 2x2 cells) or
                       non-rotation-invariant uniform.
    ``gabor_svm``      Gabor filter-bank energy (skimage.filters.gabor_kernel, FFT
                       convolution): mean and std of the magnitude per filter; 3 frequency
                       sets x 4/6/8 orientations.
    ``scattering_svm`` wavelet scattering (kymatio 2-D, J 2/3, L 4/8, raw or log), spatial
                       mean of each channel; a table row says so when kymatio is missing
                       (``pip install -e ".[bench]"``).

Same effort for every method: each has a few recipe variants (listed in
:func:`methods`), and each "*_svm" method the same classifier, StandardScaler + SVC with
kernel {linear, rbf} x C {0.1, 1, 10, 100}. The (variant, SVC) pair with the best
5-fold cross-validated accuracy on the training set (unshuffled folds: contiguous
bands of the photographs for the built-in textures) is refitted on all of it and
scored once on the test set, which plays no part in any choice. Label-dependent
features (a kernel bank) are relearned on every fold's training part.

The last line gives the error ratio of kernelbank's best against the best peer (target
≤ 0.5); ``cv`` is the chosen pair's mean ± sd over the 5 folds.

``images/s`` is inference throughput on the test set: feature extraction plus
prediction, single process, measured in this run. The machine is shared, so read the
ratio column (against ``lbp_svm``), not the absolute numbers.

``--channels rgb`` runs the colour benchmark instead (``bench/accuracy_colour.py``: vector
AR kernels against their own luminance recipe and colour peers, ``--data textures|gmrf``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from kernelbank.sklearn import (ARFeatures, ARLikelihoodClassifier, BankFeatures, ResidualFeatures,
                               TextureFeatures)

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
class Extractor:
    """Label-free features: ``fit`` does nothing, ``transform`` maps images to rows."""

    supervised = False

    def __init__(self, function, **params):
        self.function, self.params = function, params

    def fit(self, images, y=None):
        return self

    def transform(self, images) -> np.ndarray:
        return self.function(images, **self.params)


def lbp_features(images, radii=(1, 2, 3), method="uniform", grid=1) -> np.ndarray:
    """Histograms of LBP codes with 8r points at each radius (per grid cell)."""
    from skimage.feature import local_binary_pattern

    rows = []
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        parts = []
        for r in radii:
            p = 8 * r
            codes = local_binary_pattern(image, p, r, method=method)
            n_bins = p + 2 if method == "uniform" else p * (p - 1) + 3
            for band in np.array_split(codes, grid, axis=0):
                for cell in np.array_split(band, grid, axis=1):
                    hist, _ = np.histogram(cell, bins=np.arange(n_bins + 1), density=True)
                    parts.append(hist)
        rows.append(np.concatenate(parts))
    return np.array(rows)


def gabor_features(images, frequencies=(0.05, 0.1, 0.2, 0.4), n_orientations=6) -> np.ndarray:
    """Mean and std of the Gabor magnitude (skimage.filters.gabor_kernel, FFT convolution)."""
    from scipy.signal import fftconvolve
    from skimage.filters import gabor_kernel

    kernels = [gabor_kernel(f, theta=np.pi * i / n_orientations)
               for f in frequencies for i in range(n_orientations)]
    rows = []
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        image = (image - image.mean()) / max(image.std(), 1e-12)
        parts = []
        for k in kernels:
            magnitude = np.abs(fftconvolve(image, k, mode="same"))
            parts += [magnitude.mean(), magnitude.std()]
        rows.append(parts)
    return np.array(rows)


def scattering_function() -> Callable | str:
    """The scattering extractor, or why it cannot run (a message for the table)."""
    try:   # the 2-D frontend only: kymatio 0.3's 3-D module breaks on scipy >= 1.15
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as error:
        return f"skipped: kymatio is not importable ({error}); pip install -e \".[bench]\""
    import torch

    operators: dict = {}
    last: dict = {}         # the log variant reuses the coefficients of the same images

    def scattering(images, J=3, L=8, log=False) -> np.ndarray:
        """Spatial mean of every scattering channel (J scales, L angles), batched by shape."""
        key = (J, L, id(images), len(images))
        if key not in last:
            last.clear()
            last[key] = _scattering(images, J, L)
        return np.log(np.abs(last[key]) + 1e-6) if log else last[key]

    def _scattering(images, J, L):
        images = [np.asarray(i, dtype=np.float32) for i in images]
        out = [None] * len(images)
        groups: dict = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for shape, indices in groups.items():
            if (J, L, shape) not in operators:
                operators[(J, L, shape)] = ScatteringTorch2D(J=J, shape=shape, L=L)
            batch = np.stack([images[i] for i in indices])
            batch = (batch - batch.mean((1, 2), keepdims=True)) / np.maximum(
                batch.std((1, 2), keepdims=True), 1e-12)
            with torch.no_grad():
                coef = operators[(J, L, shape)](torch.from_numpy(batch)).mean(dim=(-2, -1))
            for i, row in zip(indices, coef.numpy()):
                out[i] = row
        return np.array(out)

    return scattering


# ---------------------------------------------------------------------------- protocol
class Likelihood:
    """The likelihood classifier as an extractor-like object: no SVM on top."""

    def __init__(self, **params):
        self.params = params

    def fit(self, images, y):
        self.model = ARLikelihoodClassifier(**self.params).fit(images, y)
        return self

    def predict(self, images):
        return self.model.predict(images)


def _subset(images, index):
    return images[index] if isinstance(images, np.ndarray) else [images[i] for i in index]


def _svm(params: dict):
    return make_pipeline(StandardScaler(), SVC(**params))


TRANSFORM_PARAMS = ("grid", "log", "joint")    # BankFeatures parameters used by transform only
SVM_GRID = [{"kernel": k, "C": c} for k in GRID["svc__kernel"] for c in GRID["svc__C"]]


def select_and_test(make, variants: dict[str, dict], svm: bool, train, y_train, test, y_test):
    """Pick (variant, SVM parameters) by 5-fold CV on train; refit; score on test.

    Label-free features are computed once per variant; label-dependent ones (a bank)
    are refitted on every fold's training part, so no fold sees its own validation.
    """
    # unshuffled folds are contiguous in file order: for patches named by position (the
    # built-in textures) each fold is a band of the photograph, so CV sees a shift like
    # the test split's instead of near-duplicate neighbours of its training patches
    folds = list(StratifiedKFold(5).split(np.zeros(len(y_train)), y_train))
    scores: dict[tuple[str, int], list[float]] = {}
    fitted: dict = {}     # banks differing only in transform-time parameters are learned once
    for name, params in variants.items():
        extractor = make(**params)
        shared = None
        if svm and _label_free(extractor):
            shared = extractor.fit(train).transform(train)
        for fold, (fit_index, val_index) in enumerate(folds):
            y_fit, y_val = y_train[fit_index], y_train[val_index]
            if not svm:
                model = make(**params).fit(_subset(train, fit_index), y_fit)
                accuracy = np.mean(model.predict(_subset(train, val_index)) == y_val)
                scores.setdefault((name, -1), []).append(accuracy)
                continue
            if shared is not None:
                f_fit, f_val = shared[fit_index], shared[val_index]
            else:
                key = (fold, tuple(sorted((k, v) for k, v in params.items()
                                          if k not in TRANSFORM_PARAMS)))
                if key not in fitted:
                    fitted[key] = make(**params).fit(_subset(train, fit_index), y_fit)
                est = copy.copy(fitted[key]).set_params(
                    **{k: v for k, v in params.items() if k in TRANSFORM_PARAMS})
                f_fit, f_val = est.transform(_subset(train, fit_index)), \
                    est.transform(_subset(train, val_index))
            for j, svm_params in enumerate(SVM_GRID):
                model = _svm(svm_params).fit(f_fit, y_fit)
                scores.setdefault((name, j), []).append(np.mean(model.predict(f_val) == y_val))
    (name, j), cv = max(scores.items(), key=lambda item: np.mean(item[1]))
    model = make(**variants[name]).fit(train, y_train)
    if svm:
        head = _svm(SVM_GRID[j]).fit(model.transform(train), y_train)
        start = time.perf_counter()
        predicted = head.predict(model.transform(test))
    else:
        start = time.perf_counter()
        predicted = model.predict(test)
    seconds = time.perf_counter() - start
    chosen = name + (f" {SVM_GRID[j]['kernel']} C={SVM_GRID[j]['C']:g}" if svm else "")
    return (float(np.mean(predicted == y_test)), len(y_test) / seconds, chosen,
            float(np.mean(cv)), float(np.std(cv)))


def _label_free(extractor) -> bool:
    """Features that learn nothing from labels: computed once, shared by every fold."""
    if isinstance(extractor, TextureFeatures):
        return extractor.bank is None
    return isinstance(extractor, (Extractor, ARFeatures, ResidualFeatures))


def fitting(dilations: tuple[int, ...], radius: int, min_side: int) -> tuple[int, ...]:
    """The dilations whose window (2·radius·d + 1 pixels) fits in the smallest image."""
    kept = tuple(d for d in dilations if 2 * radius * d + 1 <= min_side)
    if not kept:
        raise SystemExit(f"images of side {min_side} are smaller than a radius-{radius} window")
    return kept


def methods(min_side: int) -> dict[str, tuple[str, bool, Callable, dict[str, dict]]]:
    """name -> (family, uses the SVM, factory, recipe variants chosen among by CV).

    Dilations that do not fit ``min_side`` are dropped (and the variant named accordingly).
    """
    def span(dilations, radius=4):
        kept = fitting(dilations, radius, min_side)
        return kept, f"d{kept[0]}-{kept[-1]}" if len(kept) > 1 else f"d{kept[0]}"

    shapes = {"r2": (2, (1, 2, 3, 4)), "r4": (4, (1, 2, 3))}   # radius, dilations

    def own(radius, basis="full", scales=(1,), **params):
        """Own-kernel parameters at dilations 1-3 that fit every scale, and a name."""
        side = -(-min_side // max(scales))
        dilations = span((1, 2, 3), radius)[0]
        dilations = tuple(d for d in dilations if 2 * radius * d + 1 <= side)
        if not dilations:
            return {}
        scale = f" s{scales[0]}-{scales[-1]}" if len(scales) > 1 else ""
        name = f"{basis} r{radius} d{dilations[0]}-{dilations[-1]}{scale}"
        return {name: {"radius": radius, "basis": basis, "dilations": dilations,
                       "scales": scales, **params}}

    shape_only = {"quantiles": (), "patterns": (), "cooccurrence": 0}   # log mse/mae, skew, kurt
    no_cooc = {"cooccurrence": 0}

    def named(suffix, variants):
        return {f"{k} {suffix}".strip(): v for k, v in variants.items()}
    table = {
        "ar_svm": ("kernelbank", True, lambda **p: ARFeatures(radius=4, basis="isotropic", **p),
                   {span((1, 2, 3, 4, 5))[1]: {"dilations": span((1, 2, 3, 4, 5))[0]}}),
        "bank_svm": ("kernelbank", True, lambda **p: BankFeatures(basis="full", method="pooled", **p), {
            f"full {r} {span(d, radius)[1]} grid{g}{' joint' if joint else ''}":
                {"radius": radius, "dilations": span(d, radius)[0], "grid": g, "joint": joint}
            for r, (radius, d) in shapes.items() for g in (1, 2) for joint in (False, True)}),
        "likelihood": ("kernelbank", False, Likelihood, {
            f"{b} r{radius} {span(d, radius)[1]}":
                {"radius": radius, "basis": b, "dilations": span(d, radius)[0]}
            for b in ("full", "isotropic") for radius, d in ((2, (1,)), (4, (1,)), (4, (1, 2, 3)),
                                                             (2, (1, 2, 3, 4)))}),
        "own_svm": ("kernelbank", True, lambda **p: TextureFeatures(**p), {
            **own(2, **shape_only), **own(2, scales=(1, 2), **shape_only)}),
        "residual_svm": ("kernelbank", True, lambda **p: ResidualFeatures(**p), {
            **named("lbp", own(2, **no_cooc)), **named("lbp+cooc", own(2))}),
        "texture_svm": ("kernelbank", True, lambda **p: TextureFeatures(**p), {
            **named("lbp", own(2, **no_cooc)), **named("lbp+cooc", own(2)),
            **named("lbp+cooc", own(2, scales=(1, 2))),
            **named("lbp+cooc", own(4, "isotropic"))}),
        "texture_bank_svm": ("kernelbank", True, lambda **p: TextureFeatures(**p), {
            **named("lbp+cooc bank", own(2, bank="stats")),
            **named("lbp+cooc bank joint", own(2, bank="stats", bank_joint=True))}),
        "lbp_svm": ("peer", True, lambda **p: Extractor(lbp_features, **p), {
            f"r{'-'.join(map(str, r))} {m} grid{g}": {"radii": r, "method": m, "grid": g}
            for r in ((1, 2), (1, 2, 3), (1, 2, 3, 4, 5)) for m, g in
            (("uniform", 1), ("uniform", 2), ("nri_uniform", 1))}),
        "gabor_svm": ("peer", True, lambda **p: Extractor(gabor_features, **p), {
            f"f{'-'.join(map(str, f))} o{o}": {"frequencies": f, "n_orientations": o}
            for f in ((0.1, 0.2, 0.4), (0.05, 0.1, 0.2, 0.4), (0.15, 0.25, 0.35, 0.45))
            for o in (4, 6, 8)}),
    }
    scattering = scattering_function()
    if isinstance(scattering, str):
        table["scattering_svm"] = ("peer", True, None, scattering)
    else:
        table["scattering_svm"] = ("peer", True, lambda **p: Extractor(scattering, **p), {
            f"J{J} L{L}{' log' if log else ''}": {"J": J, "L": L, "log": log}
            for J in (2, 3) for L in (4, 8) for log in (False, True)})
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="folder with train/<class>/ and test/<class>/")
    parser.add_argument("--json", help="write {method: {accuracy, images_per_s, family}} here")
    parser.add_argument("--methods", help="comma-separated subset of methods to run")
    parser.add_argument("--patch-size", type=int, default=64, help="built-in textures only")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kernelbank-textures"),
                        help="where the built-in textures are written (default: %(default)s)")
    parser.add_argument("--channels", choices=("luminance", "rgb"), default="luminance",
                        help="rgb: the colour benchmark of bench/accuracy_colour.py")
    parser.add_argument("--data", choices=("textures", "gmrf"), default="textures",
                        help="with --channels rgb: the built-in colour data to use")
    args = parser.parse_args(argv)
    if args.channels == "rgb":
        from accuracy_colour import run
        return run(args)

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

    min_side = min(min(i.shape) for i in list(train) + list(test))
    table = methods(min_side)
    chosen = list(table) if not args.methods else args.methods.split(",")
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(table)}")
    results, skipped = {}, {}
    for name in chosen:
        family, svm, make, variants = table[name]
        if isinstance(variants, str):            # cannot run here: say why in the table
            skipped[name] = (family, variants)
            continue
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accuracy, speed, recipe, cv, cv_sd = select_and_test(make, variants, svm, train,
                                                                 y_train, test, y_test)
        results[name] = {"accuracy": accuracy, "images_per_s": speed, "family": family,
                         "recipe": recipe, "cv": cv, "cv_sd": cv_sd}
        print(f"# done {name}: {accuracy:.4f} ({recipe}; {time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)

    base = results.get("lbp_svm", {}).get("images_per_s")
    print(f"{'method':<18}{'family':<12}{'accuracy':>9}{'errors':>8}{'cv mean±sd':>14}"
          f"{'images/s':>10}{'vs lbp':>8}  recipe chosen by CV")
    for name, r in results.items():
        ratio = f"{r['images_per_s'] / base:7.2f}x" if base else "      -"
        errors = round((1 - r["accuracy"]) * len(y_test))
        cv = f"{r['cv']:.3f}±{r['cv_sd']:.3f}"
        print(f"{name:<18}{r['family']:<12}{r['accuracy']:>9.4f}{errors:>8d}{cv:>14}"
              f"{r['images_per_s']:>10.1f}{ratio:>8}  {r['recipe']}")
    for name, (family, why) in skipped.items():
        print(f"{name:<18}{family:<12}{'-':>9}{'-':>8}{'-':>14}{'-':>10}{'-':>8}  {why}")
    ours = {k: r["accuracy"] for k, r in results.items() if r["family"] == "kernelbank"}
    peers = {k: r["accuracy"] for k, r in results.items() if r["family"] == "peer"}
    if ours and peers:
        best_ours, best_peer = max(ours, key=ours.get), max(peers, key=peers.get)
        errors_ours, errors_peer = 1 - ours[best_ours], 1 - peers[best_peer]
        ratio = errors_ours / errors_peer if errors_peer > 0 else \
            (0.0 if errors_ours == 0 else float("inf"))
        print(f"# best kernelbank {best_ours} {ours[best_ours]:.4f} vs best peer {best_peer} "
              f"{peers[best_peer]:.4f}: error ratio {ratio:.2f} (target <= 0.5)"
              + ("" if not skipped else f"; not run: {', '.join(skipped)}"))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {k: {f: v[f] for f in ("accuracy", "images_per_s", "family", "recipe", "cv", "cv_sd")}
             for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
