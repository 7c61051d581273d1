"""Texture classification accuracy: kernelbank against classic texture descriptors.

Usage::

    python bench/accuracy.py [ROOT] [--data textures|hard] [--patch-size 32] [--json FILE]
                             [--methods a,b] [--variants "v1;v2"] [--views K] [--augment]
                             [--repeats 2] [--folds 5] [--jobs 2]

``ROOT`` is any ``root/{train,test}/<class>/<image>`` folder (PNG/JPEG/TIFF/.npy);
default: the built-in data, ``--data textures`` (six photographs, split by position,
:mod:`kernelbank.datasets.textures`) or ``--data hard`` (28 classes, rotated and
rescaled test patches, illumination changes, :mod:`kernelbank.datasets.hard_textures`).

Protocol (the same for every method). Each method has a few variants of its features
and the same heads, StandardScaler + SVC {rbf C=1, 10, 100; linear C=1}. The
(variant, head) pair with the best mean accuracy over ``--repeats`` x ``--folds``
stratified group folds of the **train split only** is refitted on all of it and scored
once on the test split (groups: ten bands of each class in file order, so neighbouring
patches of one photograph fall in the same fold). The test split plays no part in any
choice. ``cv`` is that pair's mean ± sd over all folds.

Test-like validation (``--views K``, ``--data hard`` only; default 1 there): the hard
set's test patches are turned by any angle, rescaled by 0.75-1.33 and relit, its train
patches hardly move, so a fold scored on its own validation rows cannot see what
invariance is worth (the previous protocol: CV 0.81, test 0.42 for the same recipe).
Every train patch gets K views resampled from its centre in its own train tile the way
test patches are (:func:`kernelbank.datasets.hard_train_augmentations`; no pixel of a
test tile is read), and each fold is scored on the views of its validation rows. That
is still cross-validation on the train split only, and it tracks the test accuracy
(within 1-3 points on every method measured). ``cv rows`` (each fold scored on its
rows, as before) is printed beside it. With ``--augment`` every fit (every fold's, and
the final refit) also trains on the views of its own training rows. A method whose
features of the views cannot be computed (scattering without kymatio) is not run.

Speed: every variant's features are computed once for train and test (one pass of the
AR fit serves every kernelbank variant: variants are column subsets and maps of one
table) and cached on disk under ``--cache``; the CV fits run on ``--jobs`` processes.
Wall time and CPU time are printed: the machine is shared, and CPU time / cores
estimates the time alone.

Methods
    ``kernelbank``  one pass per image: own full radius-2 kernel at dilations 1-3 (those
                    that fit), residual descriptors (moments, |e|/σ quantiles, residual
                    LBP ri/nri, co-occurrences), the image's own ri sign patterns at lag
                    = dilation from the same sweep (``+img1p``: what ``kernelbank run``
                    stores) and, from a separate pass, scikit-image's interpolated
                    image LBP (``+img``: riu2, 8r points at radii 1-3,
                    :mod:`kernelbank.image_patterns`). Variants: ``own+res``, ``+img``,
                    ``+img1p``, ``hellinger`` (square root of every histogram column),
                    ``ri`` (rotation-invariant histograms only: no nri patterns nor
                    co-occurrences), ``ownspec`` (each own kernel as its rotation-
                    invariant spectral descriptors, :mod:`kernelbank.core.spectrum`:
                    what ``kernelbank run`` computes by default), ``own4`` / ``ownsym``
                    (the own coefficients pooled over the 8 symmetries of the window:
                    sorted within each orbit of taps, or its mean), ``dpool`` (every
                    per-dilation column averaged over the dilations: scale pooling),
                    and ``iso ri own+res +img1p hellinger``: the same from a second pass
                    with the isotropic (rotation-invariant) basis of radius 3. By default
                    the five variants of :data:`DEFAULT_VARIANTS` (a short menu:
                    selection noise grows with it); ``--variants`` names others
                    (:data:`KERNELBANK_VARIANTS`).
    ``kernelbank_ridge`` the same variants with the head of ``kernelbank run``'s classify
                    stage: StandardScaler + RidgeClassifier, alpha 1, 10 or 100.
    ``kernelbank_stream`` the same variants with the heads the pipeline can stream
                    (:class:`kernelbank.heads.KernelMapRidge`: Nyström or random Fourier
                    map, 2048 components, + standardised ridge, alpha 1 or 10).
    ``kernelbank_nystroem`` the same variants with ``kernelbank run --head nystroem``'s
                    head as one head (:class:`kernelbank.heads.KernelHead`: 1024 Nyström
                    landmarks, <= 256 rows per class, alpha by its own inner CV).
    ``lbp``         LBP histograms (skimage), 8r points at radii 1-3: uniform (whole image
                    or 2x2 cells) or nri_uniform.
    ``gabor``       Gabor energy (mean, std of the magnitude), 4 or 6 orientations.
    ``scattering``  kymatio 2-D scattering, J 2 or 3, L 8, log of the spatial means (a
                    row says so when kymatio is missing: ``pip install -e ".[bench]"``).

The last lines give the CV-chosen kernelbank recipe and its test error ratio against the
CV-chosen best peer and against the peer best on test (target <= 0.5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernelbank.image_patterns import (histogram_columns, image_lbp_histograms,  # noqa: E402
                                       image_lbp_names, power_normalize)
from kernelbank.sklearn import TextureFeatures  # noqa: E402

SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}
HEADS = [{"kernel": "rbf", "C": 1.0}, {"kernel": "rbf", "C": 10.0}, {"kernel": "rbf", "C": 100.0},
         {"kernel": "linear", "C": 1.0}]
#: The streaming heads the pipeline can run (kernelbank.heads): kernel map + ridge.
STREAM_HEADS = [{"kernel_map": m, "alpha": a, "n_components": 2048}
                for m in ("nystroem", "rbf") for a in (1.0, 10.0)]


def make_head(head: dict):
    """SVC pipeline for an SVC head, KernelMapRidge for a streaming one."""
    if "kernel_map" in head:
        from kernelbank.heads import KernelMapRidge
        return KernelMapRidge(**head)
    if "pipeline_kernel" in head:
        from kernelbank.heads import KernelHead
        return KernelHead(n_components=head["pipeline_kernel"])
    if "ridge" in head:
        from sklearn.linear_model import RidgeClassifier
        return make_pipeline(StandardScaler(), RidgeClassifier(alpha=head["ridge"]))
    return make_pipeline(StandardScaler(), SVC(**head))


def head_name(head: dict) -> str:
    if "kernel_map" in head:
        return f"stream {head['kernel_map']} ridge alpha={head['alpha']:g}"
    if "pipeline_kernel" in head:
        return (f"--head nystroem ({head['pipeline_kernel']} landmarks, <= 256 rows per class, "
                "alpha by CV)")
    if "ridge" in head:
        return f"standardised ridge alpha={head['ridge']:g}"
    return f"svc {head['kernel']} C={head['C']:g}"


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


# ---------------------------------------------------------------------------- kernelbank
def kernelbank_table(images, radius: int = 2, basis: str = "full") -> tuple[np.ndarray, list[str]]:
    """The one pass the kernelbank variants of a basis share: own kernel + residual
    descriptors (``TextureFeatures``) and image-domain LBP, with column names."""
    side = min(min(np.shape(i)) for i in images)
    dilations = tuple(d for d in (1, 2, 3) if 2 * radius * d + 3 <= side)
    texture = TextureFeatures(radius=radius, basis=basis, dilations=dilations,
                              image_patterns=("ri",)).fit(images[:1])
    radii = tuple(r for r in (1, 2, 3) if 2 * r + 1 <= side)
    table = np.hstack([texture.transform(images), image_lbp_histograms(images, radii)])
    return table, list(texture.get_feature_names_out()) + image_lbp_names(radii)


def kernelbank_variant(table: np.ndarray, names: list[str], variant: str) -> np.ndarray:
    """Columns and maps of the shared table that make one variant (see the docstring)."""
    names_a = np.array(names)
    tokens = variant.split()
    keep = np.ones(len(names), bool)
    if "+img" not in tokens:             # scikit-image's LBP, a separate pass
        keep &= ~np.char.startswith(names_a, "img_")
    if "+img1p" not in tokens:           # the one pass's image patterns (zero kernel)
        keep &= ~(np.char.find(names_a, "_img_") >= 0)
    if variant.startswith("ri "):
        keep &= ~(np.char.find(names_a, "_lbp_nri") >= 0) & ~(np.char.find(names_a, "_cooc") >= 0)
    out = table[:, keep]
    if "hellinger" in variant:
        out = power_normalize(out, histogram_columns(names_a[keep]))
    kept = list(names_a[keep])
    if "dpool" in tokens:
        out, kept = pool_dilations(out, kept)
    if "own4+res" in tokens or "ownsym+res" in tokens:
        out = pool_symmetries(out, kept, "sort" if "own4+res" in tokens else "mean")
    if "ownspec+res" in tokens:
        out = own_spectra(out, kept)
    return out


def _map_own_kernels(features: np.ndarray, names: list[str], transform) -> np.ndarray:
    """Each entry's own full-basis coefficients (``ar_<entry>_c<j>``, row-major taps of a
    square window) replaced by ``transform(block, radius)``; other columns as they are."""
    import re
    out, done = [], set()
    for j, name in enumerate(names):
        found = re.fullmatch(r"(ar_s\d+_d\d+)_c(\d+)", name)
        if not found:
            out.append(features[:, j:j + 1])
            continue
        if found.group(1) in done:
            continue
        done.add(found.group(1))
        columns = [k for k, n in enumerate(names) if re.fullmatch(found.group(1) + r"_c\d+", n)]
        out.append(transform(features[:, columns], int(round(np.sqrt(len(columns) + 1))) // 2))
    return np.hstack(out)


def own_spectra(features: np.ndarray, names: list[str]) -> np.ndarray:
    """Each entry's own kernel as its rotation-invariant spectral descriptors
    (:mod:`kernelbank.core.spectrum`, as ``kernelbank run`` computes them)."""
    import kernelbank as kb
    from kernelbank.core.spectrum import spectral_invariants, spectrum_operator

    def spectra(block, radius):
        return spectral_invariants(block, spectrum_operator(kb.Basis.full(radius)
                                                            .kernels.numpy()))
    return _map_own_kernels(features, names, spectra)


def pool_symmetries(features: np.ndarray, names: list[str], how: str) -> np.ndarray:
    """Own full-basis coefficients pooled over the 8 symmetries of the square window.

    Rotations by 90° and flips permute the taps within each orbit ``{(±a, ±b), (±b, ±a)}``:
    ``"sort"`` keeps each orbit's values sorted (invariant, same width), ``"mean"`` their
    mean (the D4-symmetric part of the kernel: one value per orbit).
    """
    def pooled(block, r):
        offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                   if (dy, dx) != (0, 0)]
        orbits: dict = {}
        for k, (dy, dx) in enumerate(offsets):
            orbits.setdefault((max(abs(dy), abs(dx)), min(abs(dy), abs(dx))), []).append(k)
        return np.hstack([np.sort(block[:, orbits[key]], 1) if how == "sort" else
                          block[:, orbits[key]].mean(1, keepdims=True)
                          for key in sorted(orbits)])
    return _map_own_kernels(features, names, pooled)


def pool_dilations(features: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Every per-dilation column averaged over the dilations (``_d<k>_`` -> ``_d0_``).

    A rescaled texture moves its structure from one dilation to the next; the mean over
    dilations is the part of each feature that such a move leaves (roughly) unchanged.
    Columns without a dilation are kept as they are.
    """
    import re
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        groups.setdefault(re.sub(r"_d\d+_", "_d0_", name), []).append(j)
    return (np.column_stack([features[:, js].mean(1) for js in groups.values()]),
            list(groups))


KERNELBANK_VARIANTS = ("own+res", "own+res +img", "own+res +img hellinger",
                       "ri own+res +img hellinger", "ri own+res +img1p",
                       "own+res +img1p hellinger", "ri own+res +img1p hellinger",
                       "iso ri own+res +img1p hellinger", "ri own4+res +img1p hellinger",
                       "ri ownsym+res +img1p hellinger", "ri own+res +img1p hellinger dpool",
                       "ri ownsym+res +img1p hellinger dpool", "ri ownspec+res +img1p hellinger",
                       "ri ownspec+res +img hellinger")
#: The menu a run compares unless ``--variants`` names others: the research baseline,
#: the previous pipeline default, its D4-pooled twin, and the spectral own kernels with the
#: one pass's image patterns (the pipeline's default) or scikit-image's LBP.
DEFAULT_VARIANTS = ("own+res", "ri own+res +img1p hellinger", "ri ownsym+res +img1p hellinger",
                    "ri ownspec+res +img1p hellinger", "ri ownspec+res +img hellinger")
#: The heads of ``kernelbank run``'s classify stage: StandardScaler + ridge classifier
#: (the pipeline picks alpha by CV from its streaming sums; here CV picks it).
RIDGE_HEADS = [{"ridge": a} for a in (1.0, 10.0, 100.0)]


# ---------------------------------------------------------------------------- protocol
def cv_folds(labels: np.ndarray, repeats: int, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` x ``folds`` stratified group folds of the train split.

    Groups are ten bands of each class in file order: patches named by position (the
    built-in textures) that neighbour each other share a fold.
    """
    groups = np.zeros(len(labels), np.int64)
    for c, label in enumerate(np.unique(labels)):
        index = np.flatnonzero(labels == label)
        groups[index] = c * 10 + (np.arange(len(index)) * 10) // len(index)
    out = []
    for r in range(repeats):
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=r)
        out += list(splitter.split(np.zeros(len(labels)), labels, groups))
    return out


def _with_views(features, labels, index, views, augment: bool):
    """The rows ``index`` of the train split, plus (``augment``) the views of those rows
    (``views``: ``(view features, view labels, source index)`` or None)."""
    if views is None or not augment:
        return features[index], labels[index]
    extra = np.isin(views[2], index)
    return (np.vstack([features[index], views[0][extra]]),
            np.concatenate([labels[index], views[1][extra]]))


def _score(features, labels, fit_index, val_index, head, views=None, augment=False
           ) -> tuple[float, float]:
    """(accuracy on the validation rows, on their views; the rows' again without views)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_head(head).fit(*_with_views(features, labels, fit_index, views, augment))
        rows = float(np.mean(model.predict(features[val_index]) == labels[val_index]))
        if views is None:
            return rows, rows
        mine = np.isin(views[2], val_index)
        return rows, float(np.mean(model.predict(views[0][mine]) == views[1][mine]))


def select_and_test(variants: dict[str, tuple[np.ndarray, np.ndarray]], y_train, y_test,
                    folds, jobs: int, heads: list[dict] = HEADS, views: dict | None = None,
                    view_labels=None, view_source=None, augment: bool = False) -> dict:
    """Pick (variant, head) by CV on train; refit on train; score once on test.

    With ``views`` (``{variant: features of the test-like views of the train rows}``,
    ``view_source`` indexing their rows), each fold is scored on the views of its
    validation rows, and with ``augment`` every fit — each fold's and the final one —
    adds the views of its own train rows. ``cv_rows`` scores the folds on their rows.
    """
    from joblib import Parallel, delayed

    def of(name):
        return None if views is None else (views[name], view_labels, view_source)
    tasks = [(name, h, f) for name in variants for h in range(len(heads))
             for f in range(len(folds))]
    scores = Parallel(n_jobs=jobs)(
        delayed(_score)(variants[name][0], y_train, *folds[f], heads[h], of(name), augment)
        for name, h, f in tasks)
    table: dict[tuple[str, int], list[float]] = {}
    rows: dict[tuple[str, int], list[float]] = {}
    for (name, h, _), (on_rows, on_views) in zip(tasks, scores):
        table.setdefault((name, h), []).append(on_views)
        rows.setdefault((name, h), []).append(on_rows)
    (name, h), cv = max(table.items(), key=lambda item: np.mean(item[1]))
    train, test = variants[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_head(heads[h]).fit(*_with_views(train, y_train, np.arange(len(train)),
                                                     of(name), augment))
        accuracy = float(np.mean(model.predict(test) == y_test))
    per_variant = {}            # each variant's best head: CV mean, sd, head
    for v in variants:
        k = max(range(len(heads)), key=lambda k: np.mean(table[(v, k)]))
        per_variant[v] = {"cv": float(np.mean(table[(v, k)])),
                          "cv_sd": float(np.std(table[(v, k)])),
                          "cv_rows": float(np.mean(rows[(v, k)])), "head": head_name(heads[k])}
    return {"accuracy": accuracy, "cv": float(np.mean(cv)), "cv_sd": float(np.std(cv)),
            "cv_rows": float(np.mean(rows[(name, h)])),
            "recipe": f"{name} | {head_name(heads[h])}", "variants_cv": per_variant}


class FeatureCache:
    """Features per (data, method, variant) on disk: a rerun computes nothing twice."""

    def __init__(self, folder: Path, data_key: str):
        self.folder, self.data_key = folder, data_key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(f"{self.data_key}|{key}".encode()).hexdigest()[:24]
        return self.folder / f"{digest}.npy"

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self._path(key)
        if path.exists():
            return np.load(path)
        value = np.asarray(compute(), dtype=np.float64)
        np.save(path, value)
        return value


def method_features(name: str, images, cache: FeatureCache, variants: tuple[str, ...] = ()
                    ) -> dict[str, np.ndarray] | str:
    """``{variant: features of images}`` of one method, or why it cannot run
    (``variants``: a subset of the kernelbank variants; default all)."""
    side = min(min(np.shape(i)) for i in images)
    if name in ("kernelbank", "kernelbank_stream", "kernelbank_ridge", "kernelbank_nystroem"):
        out = {}
        variants = variants or DEFAULT_VARIANTS
        for basis, radius in (("full", 2), ("isotropic", 3)):
            if not any(v.startswith("iso ") == (basis != "full")
                                    for v in variants):
                continue
            table = cache.get(f"kernelbank table img1p {basis} r{radius}",
                              lambda: kernelbank_table(images, radius, basis)[0])
            names = kernelbank_table(images[:2], radius, basis)[1]
            out.update({v: kernelbank_variant(table, names, v.removeprefix("iso "))
                        for v in variants
                        if v.startswith("iso ") == (basis != "full")})
        return out
    if name == "lbp":
        radii = tuple(r for r in (1, 2, 3) if 2 * r + 1 <= side)
        options = {"uniform grid1": ("uniform", 1), "uniform grid2": ("uniform", 2),
                   "nri_uniform grid1": ("nri_uniform", 1)}
        return {f"r1-{radii[-1]} {k}": cache.get(f"lbp {radii} {k}", lambda m=m, g=g:
                                                  lbp_features(images, radii, m, g))
                for k, (m, g) in options.items()}
    if name == "gabor":
        return {f"o{o}": cache.get(f"gabor o{o}", lambda o=o: gabor_features(
            images, (0.05, 0.1, 0.2, 0.4), o)) for o in (4, 6)}
    if name == "scattering":
        scattering = scattering_function()
        keys = {f"J{J} L8 log": J for J in (2, 3) if 2 ** J * 4 <= side}
        if isinstance(scattering, str):      # features cached by a run that had kymatio
            if not all(cache.has(f"scattering {k}") for k in keys):
                return scattering
            scattering = None
        return {k: cache.get(f"scattering {k}", lambda J=J: scattering(
            images, J=J, L=8, log=True)) for k, J in keys.items()}
    raise SystemExit(f"unknown method {name!r}; choose from {METHODS}")


METHODS = ("kernelbank", "kernelbank_ridge", "kernelbank_stream", "kernelbank_nystroem",
           "lbp", "gabor", "scattering")
#: What a run compares unless ``--methods`` says otherwise: ``kernelbank_stream`` (the
#: streaming kernel maps the Nyström head of the pipeline replaced) costs the most CV fits.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "kernelbank_stream")
FAMILY = {"kernelbank": "kernelbank", "kernelbank_ridge": "kernelbank",
          "kernelbank_stream": "kernelbank", "kernelbank_nystroem": "kernelbank",
          "lbp": "peer", "gabor": "peer", "scattering": "peer"}


def load_builtin(data: str, patch_size: int, cache: str, n_classes: int | None = None,
                 per_class: int = 60):
    """(train, y_train, test, y_test, description) of a built-in set."""
    if data == "hard":
        from kernelbank.datasets.hard_textures import HARD_CLASSES, load_hard_textures
        # the photographs under 512 px (china, coffee, flower, rocket) have tiles too small
        # for a patch above 55 px at every angle and scale: left out at those sizes
        fits = [c for c in HARD_CLASSES if patch_size <= 55 or
                c not in ("china", "coffee", "flower", "rocket")]
        classes = tuple(fits[:n_classes] if n_classes else fits)
        images, labels, splits = load_hard_textures(patch_size=patch_size, classes=classes,
                                                    n_train=per_class, n_test=per_class // 2)
        images = images.astype(np.float32)
        return (images[splits == "train"], labels[splits == "train"], images[splits == "test"],
                labels[splits == "test"], f"hard textures {patch_size}px, {len(classes)} classes")
    from kernelbank.datasets.textures import ensure_textures
    root = Path(cache) / f"p{patch_size}"
    ensure_textures(root, patch_size=patch_size)
    train, y_train = load_split(root, "train")
    test, y_test = load_split(root, "test")
    return as_batch(train), y_train, as_batch(test), y_test, str(root)


def augment_builtin(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(views, labels, source) of ``--views`` on the built-in hard set."""
    from kernelbank.datasets.hard_textures import HARD_CLASSES, hard_train_augmentations
    fits = [c for c in HARD_CLASSES if args.patch_size <= 55 or
            c not in ("china", "coffee", "flower", "rocket")]
    classes = tuple(fits[:args.n_classes] if args.n_classes else fits)
    views, labels, source = hard_train_augmentations(
        patch_size=args.patch_size, classes=classes, n_train=args.per_class,
        n_test=args.per_class // 2, copies=args.views)
    return views.astype(np.float32), labels, source


def _cpu_seconds() -> float:
    """CPU seconds of this process and its children, live (joblib's workers) or reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):     # live children: Linux only
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tick, live, frontier = os.sysconf("SC_CLK_TCK"), 0, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, ticks) in stats.items():
            if ppid == parent:
                live += ticks
                frontier.append(pid)
    return total + live / tick


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="folder with train/<class>/ and test/<class>/")
    parser.add_argument("--data", choices=("textures", "hard", "gmrf"), default="textures",
                        help="built-in set when ROOT is not given (default textures; gmrf "
                             "with --channels rgb only)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} "
                        f"(default: all but kernelbank_stream)")
    parser.add_argument("--patch-size", type=int, default=32, help="built-in data only")
    parser.add_argument("--n-classes", type=int, default=None,
                        help="--data hard: the first N classes (default all 28)")
    parser.add_argument("--per-class", type=int, default=60,
                        help="--data hard: train patches per class (test: half; default 60)")
    parser.add_argument("--variants", help="';'-separated subset of the kernelbank variants "
                        "(default all)")
    parser.add_argument("--views", type=int, default=None,
                        help="--data hard: this many test-like views of every train patch "
                             "(any angle, scale 0.75-1.33, relit, from the patch's own train "
                             "tile); every CV fold is scored on its validation rows' views "
                             "(default 1 with --data hard, else 0)")
    parser.add_argument("--augment", action="store_true",
                        help="also add the views of its training rows to every fit, for "
                             "every method (needs views)")
    parser.add_argument("--head-components", type=int, default=1024,
                        help="kernelbank_nystroem: Nystroem landmarks (default 1024, the "
                             "pipeline's --head-components)")
    parser.add_argument("--repeats", type=int, default=2, help="CV repeats (default 2)")
    parser.add_argument("--folds", type=int, default=5, help="CV folds (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the CV fits")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kernelbank-bench"),
                        help="built-in images and cached features (default: %(default)s)")
    parser.add_argument("--channels", choices=("luminance", "rgb"), default="luminance",
                        help="rgb: the colour benchmark of bench/accuracy_colour.py")
    args = parser.parse_args(argv)
    if args.channels == "rgb":
        from accuracy_colour import run
        return run(args)
    began, cpu_began = time.perf_counter(), _cpu_seconds()
    if args.root:
        root = Path(args.root)
        train, y_train = load_split(root, "train")
        test, y_test = load_split(root, "test")
        train, test, where = as_batch(train), as_batch(test), str(root)
    else:
        train, y_train, test, y_test, where = load_builtin(args.data, args.patch_size, args.cache,
                                                           args.n_classes, args.per_class)
    classes = sorted(set(y_train))
    print(f"# {where}: {len(y_train)} train / {len(y_test)} test images, {len(classes)} classes")
    view_images = view_labels = view_source = None
    if args.views is None:
        args.views = 1 if args.data == "hard" and not args.root else 0
    if args.augment and not args.views:
        raise SystemExit("--augment needs views (--views K >= 1 with --data hard)")
    if args.views:
        if args.root or args.data != "hard":
            raise SystemExit("--views needs --data hard (the views come from the train tiles)")
        view_images, view_labels, view_source = augment_builtin(args)
        print(f"# {len(view_labels)} test-like views of the train patches (any angle, scale "
              f"0.75-1.33, relit): every CV fold is scored on its validation rows' views"
              + ("; every fit also trains on its rows' views" if args.augment else ""))
    images = list(train) + list(test)
    if len({np.shape(i) for i in images}) == 1:
        images = np.stack(images)
    digest = hashlib.sha1()
    for image in images:
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    cache = FeatureCache(Path(args.cache) / "features", digest.hexdigest())
    folds = cv_folds(np.asarray(y_train), args.repeats, args.folds)
    chosen = DEFAULT_METHODS if not args.methods else tuple(args.methods.split(","))
    subset = tuple(v.strip() for v in args.variants.split(";")) if args.variants else ()
    unknown = [v for v in subset if v not in KERNELBANK_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {KERNELBANK_VARIANTS}")
    view_cache = None
    if view_images is not None:
        digest_views = hashlib.sha1(np.ascontiguousarray(view_images, np.float32).tobytes())
        view_cache = FeatureCache(Path(args.cache) / "features", digest_views.hexdigest())
    n_train = len(y_train)
    results, skipped = {}, {}
    for name in chosen:
        started = time.perf_counter()
        features = method_features(name, images, cache, subset)
        views = None
        if view_cache is not None and not isinstance(features, str):
            views = method_features(name, view_images, view_cache, subset)
            if isinstance(views, str):
                features = "skipped: no features of the test-like views: " + views
        if isinstance(features, str):
            skipped[name] = features
            continue
        extracted = time.perf_counter() - started
        variants = {k: (v[:n_train], v[n_train:]) for k, v in features.items()}
        heads = STREAM_HEADS if name.endswith("_stream") else \
            RIDGE_HEADS if name.endswith("_ridge") else \
            [{"pipeline_kernel": args.head_components}] if name.endswith("_nystroem") else \
            HEADS     # the Nyström head is one head: it picks alpha inside each fit, as the
        # pipeline does (kernelbank.heads.KernelHead: <= 256 rows per class, inner CV)
        result = select_and_test(variants, np.asarray(y_train), np.asarray(y_test), folds,
                                 args.jobs, heads, views, view_labels, view_source,
                                 args.augment)
        results[name] = {**result, "family": FAMILY[name], "features_seconds": extracted,
                         "seconds": time.perf_counter() - started}
        print(f"# done {name}: test {result['accuracy']:.4f}, cv {result['cv']:.4f} "
              f"({result['recipe']}; {time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)

    n_test = len(y_test)
    scored_on = "views" if args.views else "rows"
    print(f"{'method':<20}{'family':<12}{'test acc':>9}{'errors':>8}{'cv mean±sd':>15}"
          f"{'cv rows':>9}  recipe chosen by CV (train only; folds scored on their {scored_on})")
    for name, r in results.items():
        errors = round((1 - r["accuracy"]) * n_test)
        print(f"{name:<20}{r['family']:<12}{r['accuracy']:>9.4f}{errors:>8d}"
              f"{r['cv']:>9.4f}±{r['cv_sd']:.4f}{r['cv_rows']:>9.4f}  {r['recipe']}")
        for variant, v in r["variants_cv"].items():
            print(f"{'':<32}{'':>17}{v['cv']:>9.4f}±{v['cv_sd']:.4f}{v['cv_rows']:>9.4f}  "
                  f"variant {variant} ({v['head']})")
    for name, why in skipped.items():
        print(f"{name:<20}{FAMILY[name]:<12}{'-':>9}{'-':>8}{'-':>15}  {why}")
    ours = {k: r for k, r in results.items() if r["family"] == "kernelbank"}
    peers = {k: r for k, r in results.items() if r["family"] == "peer"}
    summary = {}
    if ours and peers:
        best_ours = max(ours, key=lambda k: ours[k]["cv"])
        peer_cv = max(peers, key=lambda k: peers[k]["cv"])
        peer_test = max(peers, key=lambda k: peers[k]["accuracy"])

        def ratio(a, b):
            ea, eb = 1 - a, 1 - b
            return ea / eb if eb > 0 else (0.0 if ea == 0 else float("inf"))
        r_cv = ratio(ours[best_ours]["accuracy"], peers[peer_cv]["accuracy"])
        r_test = ratio(ours[best_ours]["accuracy"], peers[peer_test]["accuracy"])
        print(f"# CV-chosen kernelbank recipe: {best_ours} [{ours[best_ours]['recipe']}] test "
              f"{ours[best_ours]['accuracy']:.4f} (cv {ours[best_ours]['cv']:.4f}±"
              f"{ours[best_ours]['cv_sd']:.4f})")
        print(f"# error ratio vs the CV-chosen best peer {peer_cv} "
              f"({peers[peer_cv]['accuracy']:.4f}): {r_cv:.2f}; vs the peer best on test "
              f"{peer_test} ({peers[peer_test]['accuracy']:.4f}): {r_test:.2f} (target <= 0.5: "
              f"{'met' if max(r_cv, r_test) <= 0.5 else 'not met'})"
              + ("" if not skipped else f"; not run: {', '.join(skipped)}"))
        summary = {"kernelbank": best_ours, "peer_by_cv": peer_cv, "peer_by_test": peer_test,
                   "error_ratio_vs_cv_peer": r_cv, "error_ratio_vs_test_peer": r_test}
    wall, cpu = time.perf_counter() - began, _cpu_seconds() - cpu_began
    cores = min(os.cpu_count() or 1, max(1, args.jobs))
    print(f"# wall {wall:.0f} s, CPU {cpu:.0f} s; alone on {cores} cores about "
          f"{cpu / cores:.0f} s (the machine is shared: load {os.getloadavg()[0]:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": where, "results": results,
                                               "skipped": skipped, "summary": summary,
                                               "wall_s": wall, "cpu_s": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
