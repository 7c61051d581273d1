"""Colour texture classification: kernelbank's colour recipe against its own luminance
recipe and against classic descriptors given colour.

Usage::

    python bench/accuracy.py --channels rgb [ROOT] [--data textures|gmrf] [--methods a,b]
    python bench/accuracy_colour.py [ROOT] [...]          (the same)

``ROOT`` is any ``root/{train,test}/<class>/<image>`` folder of colour images (greyscale
files are replicated into three channels). Default ``--data textures``: the built-in
textures in colour (``kernelbank.datasets.textures``, ``colour=True``): ``starfield`` and
``tissue`` are colour photographs, ``brick``, ``grass``, ``gravel`` and ``moon`` greyscale
ones replicated into three equal channels, so colour can only separate the two groups
and the rest is luminance. ``--data gmrf``: four classes of exact multivariate GMRF
samples (``kernelbank.datasets.vector_gmrf``) whose channels are mixed per class in a
way that leaves the luminance unchanged (:func:`gmrf_classes`): only colour separates
them, and a luminance recipe is at chance (25 %).

Rows (every one trained on ``train``, scored once on ``test``; the recipe variant and
the SVC parameters chosen by 5-fold CV on ``train`` exactly as in ``bench/accuracy.py``,
whose protocol and helpers this module reuses):

kernelbank, colour (vector AR kernels, ``channels=3``; each recipe with the own centre
masked or every centre masked, CV choosing)
    ``likelihood_rgb``   per-class pooled vector kernels, Gaussian likelihood of the
                         residual vector with the class's residual covariance.
    ``bank_rgb_svm``     residual features of per-class pooled full vector kernels.
    ``ar_rgb_svm``       each image's own vector AR coefficients.
    ``texture_rgb_svm``  each image's own full vector kernel and the residual descriptors
                         of every channel (``TextureFeatures(channels=3)``).
kernelbank, luminance (the same recipes on the images' luminance, PIL ``L``)
    ``likelihood``, ``bank_svm``, ``ar_svm``, ``texture_svm``
peers given colour
    ``lbp_rgb_svm``      LBP histograms of each channel, concatenated.
    ``gabor_rgb_svm``    colour Gabor energy: per channel mean and std of each filter's
                         magnitude, and the opponent features of Jain & Healey (1998):
                         the std of the difference of two channels' normalised
                         magnitudes, per filter and channel pair.
peers, luminance: ``lbp_svm``, ``gabor_svm``.

The last lines compare kernelbank's best colour row with its best luminance row, and
with the best colour peer (error ratio).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np

from accuracy import SUFFIXES, Extractor, gabor_features, lbp_features
from select_v1 import (Likelihood,
                      select_and_test)
from kernelbank.sklearn import ARFeatures, BankFeatures, TextureFeatures


# ---------------------------------------------------------------------------- data
def load_colour_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB images (n, 3, H, W), their luminance (n, H, W), labels) of one split.

    Greyscale and palette files are converted to RGB (grey replicated); the luminance
    is PIL's ``L`` of the RGB image, what a one-channel decode of the file gives.
    """
    from PIL import Image

    colour, grey, labels = [], [], []
    folder = root / split
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: ROOT must hold train/<class>/ and "
                         f"test/<class>/")
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in SUFFIXES - {".npy"}:
                continue
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                colour.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
                grey.append(np.asarray(rgb.convert("L"), dtype=np.float32))
            labels.append(class_dir.name)
    if not colour:
        raise SystemExit(f"no images under {folder}")
    if len({c.shape for c in colour}) != 1:
        raise SystemExit("the colour benchmark needs images of one size")
    return np.stack(colour), np.stack(grey), np.array(labels)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)      # PIL's "L" (ITU-R 601)


def gmrf_classes(n_train: int = 40, n_test: int = 16, size: int = 64, seed: int = 0,
                 strength: float = 0.1):
    """Four classes of 3-channel GMRF samples that have the same luminance.

    One multivariate GMRF (a random stable vector kernel) is drawn for every image; class
    ``k`` then mixes its channels at every pixel by ``M_k = I + s u_k v_kᵀ`` with ``u_k``
    a unit vector orthogonal to the luminance weights ``w``, ``v_k`` standard normal and
    ``s`` the ``strength``, so ``wᵀ M_k = wᵀ``: the luminance of every class is the same
    random field, and only the colour tells the classes apart (the more weakly, the
    smaller ``s``).
    """
    from kernelbank.datasets import random_stable_vector_kernel, simulate_vector_gmrf

    rng = np.random.default_rng(seed)
    kernel = random_stable_vector_kernel(2, channels=3, max_response=0.95, random_state=rng)
    w = LUMA.astype(np.float64)
    mixes = []
    for _ in range(4):
        u = rng.normal(size=3)
        u -= w * (u @ w) / (w @ w)                       # orthogonal to the luminance
        mixes.append(np.eye(3) + strength * np.outer(u / np.linalg.norm(u),
                                                     rng.normal(size=3)))
    splits = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images, labels = [], []
        for index, mix in enumerate(mixes):
            field = simulate_vector_gmrf(kernel, (size, size), n=count, random_state=rng)
            images.append(np.einsum("cd,nd...->nc...", mix, field))
            labels += [f"mix{index}"] * count
        colour = np.concatenate(images).astype(np.float32)
        grey = np.tensordot(LUMA, colour, ([0], [1]))
        splits[split] = (colour, grey, np.array(labels))
    return splits


# ---------------------------------------------------------------------------- peers in colour
def lbp_rgb_features(images, **params) -> np.ndarray:
    """:func:`accuracy.lbp_features` of each channel, concatenated."""
    images = np.asarray(images)
    return np.concatenate([lbp_features(images[:, c], **params) for c in range(3)], 1)


def gabor_rgb_features(images, frequencies=(0.1, 0.2, 0.4), n_orientations=4) -> np.ndarray:
    """Per-channel Gabor energy and the Jain–Healey opponent features."""
    from scipy.signal import fftconvolve
    from skimage.filters import gabor_kernel

    kernels = [gabor_kernel(f, theta=np.pi * i / n_orientations)
               for f in frequencies for i in range(n_orientations)]
    rows = []
    for image in np.asarray(images, dtype=np.float64):
        image = (image - image.mean((1, 2), keepdims=True)) / np.maximum(
            image.std((1, 2), keepdims=True), 1e-12)
        parts = []
        for k in kernels:
            magnitude = np.stack([np.abs(fftconvolve(channel, k, mode="same"))
                                  for channel in image])
            parts += list(magnitude.mean((1, 2))) + list(magnitude.std((1, 2)))
            unit = magnitude / np.maximum(np.sqrt((magnitude ** 2).mean((1, 2), keepdims=True)),
                                          1e-12)
            parts += [float((unit[a] - unit[b]).std()) for a, b in combinations(range(3), 2)]
        rows.append(parts)
    return np.array(rows)


# ---------------------------------------------------------------------------- methods
def colour_methods(min_side: int) -> dict:
    """name -> (family, input, uses the SVM, factory, variants chosen among by CV)."""
    def fits(radius, dilations):
        return tuple(d for d in dilations if 2 * radius * d + 1 <= min_side)

    def kernelbank_rows(channels: int, suffix: str, data: str) -> dict:
        c = {"channels": channels}
        family = f"kernelbank {'colour' if channels > 1 else 'luminance'}"
        # colour: both centre masks (the own centre only, or every channel's)
        masks = {"": {}} if channels == 1 else {f" {m}": {"centre_mask": m}
                                                for m in ("own", "all")}
        return {
            f"likelihood{suffix}": (family, data, False, lambda **p: Likelihood(**c, **p), {
                f"full r{r} d{'-'.join(map(str, fits(r, d)))}{name}":
                    {"radius": r, "basis": "full", "dilations": fits(r, d), **mask}
                for r, d in ((1, (1, 2, 3)), (2, (1, 2))) for name, mask in masks.items()}),
            f"bank{suffix}_svm": (family, data, True,
                                  lambda **p: BankFeatures(basis="full", **c, **p), {
                f"full r2 d{'-'.join(map(str, fits(2, (1, 2))))} grid{g}{name}":
                    {"radius": 2, "dilations": fits(2, (1, 2)), "grid": g, **mask}
                for g in (1, 2) for name, mask in masks.items()}),
            f"ar{suffix}_svm": (family, data, True,
                                lambda **p: ARFeatures(basis="isotropic", **c, **p), {
                f"isotropic r{r} d1-3{name}": {"radius": r, "dilations": fits(r, (1, 2, 3)),
                                               **mask}
                for r in (2, 3) for name, mask in masks.items()}),
            # bench/accuracy.py's best recipe: own full kernels + residual descriptors
            f"texture{suffix}_svm": (family, data, True,
                                     lambda **p: TextureFeatures(**c, **p), {
                f"full r2 d1-3 lbp{'+cooc' if cooc else ''}{name}":
                    {"radius": 2, "dilations": fits(2, (1, 2, 3)), "cooccurrence": cooc, **mask}
                for cooc in (0, 2) for name, mask in masks.items()}),
        }

    lbp = {f"r{'-'.join(map(str, r))} uniform grid{g}": {"radii": r, "grid": g}
           for r in ((1, 2), (1, 2, 3)) for g in (1, 2)}
    gabor = {f"f{'-'.join(map(str, f))} o{o}": {"frequencies": f, "n_orientations": o}
             for f in ((0.1, 0.2, 0.4), (0.05, 0.1, 0.2, 0.4)) for o in (4, 6)}
    return {
        **kernelbank_rows(3, "_rgb", "rgb"),
        **kernelbank_rows(1, "", "grey"),
        "lbp_rgb_svm": ("peer colour", "rgb", True,
                        lambda **p: Extractor(lbp_rgb_features, **p), lbp),
        "gabor_rgb_svm": ("peer colour", "rgb", True,
                          lambda **p: Extractor(gabor_rgb_features, **p), gabor),
        "lbp_svm": ("peer luminance", "grey", True, lambda **p: Extractor(lbp_features, **p),
                    lbp),
        "gabor_svm": ("peer luminance", "grey", True,
                      lambda **p: Extractor(gabor_features, **p), gabor),
    }


def run(args) -> int:
    """The colour benchmark for parsed ``accuracy.py``-style arguments."""
    if args.root:
        root = Path(args.root)
        train_rgb, train_grey, y_train = load_colour_split(root, "train")
        test_rgb, test_grey, y_test = load_colour_split(root, "test")
        where = str(root)
    elif args.data == "gmrf":
        splits = gmrf_classes()
        (train_rgb, train_grey, y_train), (test_rgb, test_grey, y_test) = \
            splits["train"], splits["test"]
        where = "synthetic 3-channel GMRF classes"
    else:
        from kernelbank.datasets.textures import ensure_textures
        root = Path(args.cache) / f"p{args.patch_size}-rgb"
        ensure_textures(root, patch_size=args.patch_size, colour=True)
        train_rgb, train_grey, y_train = load_colour_split(root, "train")
        test_rgb, test_grey, y_test = load_colour_split(root, "test")
        where = f"{root} (colour textures; 4 of 6 classes are replicated greyscale)"
    data = {"rgb": (train_rgb, test_rgb), "grey": (train_grey, test_grey)}
    classes = sorted(set(y_train))
    print(f"# {where}: {len(y_train)} train / {len(y_test)} test images, {len(classes)} "
          f"classes ({', '.join(classes)})")

    table = colour_methods(min(train_rgb.shape[-2:]))
    chosen = list(table) if not args.methods else args.methods.split(",")
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(table)}")
    results = {}
    for name in chosen:
        family, kind, svm, make, variants = table[name]
        train, test = data[kind]
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accuracy, speed, recipe, cv, cv_sd = select_and_test(make, variants, svm, train,
                                                                 y_train, test, y_test)
        results[name] = {"accuracy": accuracy, "images_per_s": speed, "family": family,
                         "recipe": recipe, "cv": cv, "cv_sd": cv_sd}
        print(f"# done {name}: {accuracy:.4f} ({recipe}; {time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)

    print(f"{'method':<18}{'family':<22}{'accuracy':>9}{'errors':>8}{'cv mean±sd':>14}"
          f"{'images/s':>10}  recipe chosen by CV")
    for name, r in results.items():
        errors = round((1 - r["accuracy"]) * len(y_test))
        print(f"{name:<18}{r['family']:<22}{r['accuracy']:>9.4f}{errors:>8d}"
              f"{r['cv']:>8.3f}±{r['cv_sd']:.3f}{r['images_per_s']:>10.1f}  {r['recipe']}")

    def best(family):
        """The family's row of best CV mean (then smallest CV sd, then table order), and
        the other rows tied with it on CV mean."""
        rows = [(n, r) for n, r in results.items() if r["family"] == family]
        if not rows:
            return None, []
        name, row = max(rows, key=lambda item: (item[1]["cv"], -np.nan_to_num(item[1]["cv_sd"])))
        return (name, row), [n for n, r in rows if r["cv"] == row["cv"] and n != name]

    def errors(row):
        return round((1 - row["accuracy"]) * len(y_test))

    (colour, colour_ties), (grey, _), (peer, _) = (
        best("kernelbank colour"), best("kernelbank luminance"), best("peer colour"))
    if colour and grey:
        tied = f"; CV tie with {', '.join(colour_ties)}" if colour_ties else ""
        print(f"kernelbank colour ({colour[0]}, best by CV{tied}) vs luminance ({grey[0]}): "
              f"test errors {errors(colour[1])} vs {errors(grey[1])}, CV "
              f"{colour[1]['cv']:.3f} vs {grey[1]['cv']:.3f}")
    if colour and peer:
        mine, theirs = errors(colour[1]), errors(peer[1])
        ratio = f"{mine / theirs:.2f}" if theirs else ("n/a" if mine == 0 else "inf")
        print(f"kernelbank colour vs best colour peer ({peer[0]}): test errors {mine} vs "
              f"{theirs}, error ratio {ratio}")
    if args.json:
        import json
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def main(argv=None) -> int:
    """The same arguments as ``accuracy.py --channels rgb``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="folder with train/<class>/ and test/<class>/")
    parser.add_argument("--json", help="write {method: {accuracy, …}} here")
    parser.add_argument("--methods", help="comma-separated subset of methods to run")
    parser.add_argument("--patch-size", type=int, default=64, help="built-in textures only")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kernelbank-textures"),
                        help="where the built-in textures are written (default: %(default)s)")
    parser.add_argument("--data", choices=("textures", "gmrf"), default="textures",
                        help="built-in colour data when no ROOT is given (default: textures)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
