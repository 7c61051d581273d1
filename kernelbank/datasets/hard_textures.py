"""A harder built-in texture benchmark: 28 classes, small patches, rotated and rescaled
test patches, illumination changes — built deterministically, never downloaded.

The six-class built-in set (:mod:`~kernelbank.datasets.textures`) is saturated at 64 px
(every method scores ~1.0), so it can no longer tell a better recipe from a worse one.
This set separates them:

* **28 classes.** 15 photographs that packages ship (scikit-image's ``data`` module,
  scikit-learn's sample images, matplotlib's sample data), each in grey, centre-cropped
  to at most 512 px; and 13 generated textures (binary blobs at three sizes, Gaussian
  fields with power spectra ``1/f^β`` at three slopes, Gaussian Markov random fields of
  three random kernels, a noisy grating, a noisy lattice, and Voronoi cell edges at two
  densities), each a 512 x 512 image from a fixed seed.
* **Split by tiles.** Each image is cut into a 4 x 4 grid of tiles; 5 tiles (the same
  seeded choice for every class) give test patches, the other 11 train patches, and
  every patch window lies inside its own tile: no test patch overlaps a train patch,
  and both sample the whole photograph (a left/right split would also test a drift
  across the photograph).
* **Transformations.** A patch is resampled (bilinear) from a window of its tile: train
  patches with a small rotation (±10°) and scale (±5 %), so that they go through the
  same interpolation as the test patches; test patches at any angle (0-360°) and scale
  0.75-1.33. Every patch gets an illumination change: gain 0.6-1.4, gamma 0.7-1.4 and a
  linear ramp of up to ±20 % across the patch.

* **Augmentation, on request.** :func:`hard_train_augmentations` gives extra views of the
  train patches, resampled from their centres in their own train tiles the way test
  patches are (any angle, scale 0.75-1.33, relit), with the index of each view's source
  patch, so that a cross-validation can keep a view in its source's folds
  (``bench/accuracy.py --augment``). The train and test patches do not change.

Everything is drawn from ``numpy.random.default_rng`` with fixed seeds, so the same
arguments give the same patches, bit for bit, on every machine (the test builds the set
twice and compares checksums).
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

__all__ = ["HARD_CLASSES", "load_hard_textures", "hard_train_augmentations",
           "hard_texture_image"]

GRID = 4
TEST_TILES = 5


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        from skimage.color import rgb2gray
        image = rgb2gray(image[..., :3]) * 255
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _to_uint8(field: np.ndarray) -> np.ndarray:
    """A real field scaled by its 0.5 and 99.5 percentiles to 0-255."""
    lo, hi = np.percentile(field, [0.5, 99.5])
    return np.clip(np.rint((field - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)


def _power_law(beta: float, seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    return _to_uint8(np.real(np.fft.ifft2(spectrum * f ** (-beta / 2))))


def _blobs(fraction: float, seed: int, size: int = 512) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    from skimage.data import binary_blobs
    blobs = binary_blobs(length=size, blob_size_fraction=fraction, rng=seed).astype(float)
    noise = np.random.default_rng(seed + 1).standard_normal((size, size))
    return _to_uint8(gaussian_filter(blobs, 1.0) + 0.15 * noise)


def _gmrf(seed: int, size: int = 512) -> np.ndarray:
    from .synthetic import random_stable_kernel, simulate_gmrf
    kernel = random_stable_kernel(2, random_state=seed)
    return _to_uint8(np.asarray(simulate_gmrf(kernel, (size, size), random_state=seed + 1)
                                ).reshape(size, size))


def _grating(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    wave = np.sin(2 * np.pi * (0.8 * x + 0.6 * y) / 9.0)
    return _to_uint8(wave + 0.8 * rng.standard_normal((size, size)))


def _lattice(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    dots = np.cos(2 * np.pi * x / 7.0) * np.cos(2 * np.pi * y / 7.0)
    return _to_uint8(dots + 0.8 * rng.standard_normal((size, size)))


def _voronoi(n_points: int, seed: int, size: int = 512) -> np.ndarray:
    from scipy.spatial import cKDTree
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (n_points, 2))
    grid = np.stack(np.mgrid[:size, :size], -1).reshape(-1, 2)
    distances, _ = cKDTree(points).query(grid, k=2)
    edges = (distances[:, 1] - distances[:, 0]).reshape(size, size)
    return _to_uint8(-np.exp(-edges / 2.0) + 0.1 * rng.standard_normal((size, size)))


def _sources() -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as data

    def sklearn_image(index):
        from sklearn.datasets import load_sample_images
        return _grey(load_sample_images().images[index])

    def hopper():
        import matplotlib.cbook
        import matplotlib.pyplot as plt
        return _grey(plt.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))

    return {
        "astronaut": lambda: _grey(data.astronaut()), "brick": lambda: _grey(data.brick()),
        "camera": lambda: _grey(data.camera()), "cell": lambda: _grey(data.cell()),
        "coffee": lambda: _grey(data.coffee()), "grass": lambda: _grey(data.grass()),
        "gravel": lambda: _grey(data.gravel()), "moon": lambda: _grey(data.moon()),
        "starfield": lambda: _grey(data.hubble_deep_field()),
        "tissue": lambda: _grey(data.immunohistochemistry()),
        "retina": lambda: _grey(data.retina()), "rocket": lambda: _grey(data.rocket()),
        "china": lambda: sklearn_image(0), "flower": lambda: sklearn_image(1),
        "hopper": hopper,
        "blobs_fine": lambda: _blobs(0.04, 11), "blobs_medium": lambda: _blobs(0.08, 12),
        "blobs_coarse": lambda: _blobs(0.16, 13),
        "noise_b15": lambda: _power_law(1.5, 21), "noise_b20": lambda: _power_law(2.0, 22),
        "noise_b25": lambda: _power_law(2.5, 23),
        "gmrf_a": lambda: _gmrf(31), "gmrf_b": lambda: _gmrf(32), "gmrf_c": lambda: _gmrf(33),
        "grating": lambda: _grating(41), "lattice": lambda: _lattice(42),
        "voronoi_sparse": lambda: _voronoi(150, 51), "voronoi_dense": lambda: _voronoi(600, 52),
    }


#: The 28 classes, sorted.
HARD_CLASSES: tuple[str, ...] = ("astronaut", "blobs_coarse", "blobs_fine", "blobs_medium", "brick", "camera",
                                  "cell", "china", "coffee", "flower", "gmrf_a", "gmrf_b",
                                  "gmrf_c", "grass", "grating", "gravel", "hopper", "lattice",
                                  "moon", "noise_b15", "noise_b20", "noise_b25", "retina",
                                  "rocket", "starfield", "tissue", "voronoi_dense",
                                  "voronoi_sparse")


def hard_texture_image(name: str) -> np.ndarray:
    """The source image of one class: grey uint8, centre-cropped to at most 512 x 512."""
    sources = _sources()
    if name not in sources:
        raise ValueError(f"unknown class {name!r}; choose from {list(HARD_CLASSES)}")
    image = sources[name]()
    top, left = max(0, (image.shape[0] - 512) // 2), max(0, (image.shape[1] - 512) // 2)
    return image[top:top + 512, left:left + 512]


def _patch(image: np.ndarray, centre: tuple[float, float], size: int, angle: float,
           scale: float) -> np.ndarray:
    """A ``size`` x ``size`` patch centred at ``centre``, rotated by ``angle`` radians and
    magnified by ``scale`` (bilinear)."""
    from scipy.ndimage import map_coordinates
    offsets = (np.arange(size) - (size - 1) / 2) / scale
    v, u = np.meshgrid(offsets, offsets, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    rows = centre[0] + c * v - s * u
    cols = centre[1] + s * v + c * u
    return map_coordinates(image.astype(np.float64), [rows, cols], order=1, mode="reflect")


def _illuminate(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain, gamma = rng.uniform(0.6, 1.4), rng.uniform(0.7, 1.4)
    direction, strength = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2)
    size = patch.shape[0]
    y, x = (np.mgrid[:size, :size] - (size - 1) / 2) / size
    ramp = 1 + strength * (np.cos(direction) * x + np.sin(direction) * y) * 2
    out = 255 * (np.clip(patch, 0, 255) / 255) ** gamma * gain * ramp
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_hard_textures(patch_size: int = 32, n_train: int = 60, n_test: int = 30,
                       classes: Sequence[str] | None = None, random_state: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The harder benchmark's patches in memory (see the module docstring).

    Parameters
    ----------
    patch_size : int, default=32
        Side of the patches, 8 to 64 pixels.
    n_train, n_test : int, default=60, 30
        Patches per class in each split.
    classes : sequence of str, optional
        Subset of :data:`HARD_CLASSES`; default all 28.
    random_state : int, default=0
        Seeds the test tiles and every patch's position, angle, scale and illumination
        (one generator per class, seeded by this and the class name).

    Returns
    -------
    images : np.ndarray of shape (n_patches, patch_size, patch_size), uint8
    labels : np.ndarray of shape (n_patches,), str
    splits : np.ndarray of shape (n_patches,), str
        ``"train"`` (first, per class) or ``"test"``.
    """
    images, labels, splits, _ = _draw(patch_size, n_train, n_test, classes, random_state)
    return images, labels, splits


def hard_train_augmentations(patch_size: int = 32, n_train: int = 60, n_test: int = 30,
                             classes: Sequence[str] | None = None, random_state: int = 0,
                             copies: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extra views of the train patches of :func:`load_hard_textures` (same arguments),
    transformed the way test patches are: from each train patch's centre in its own
    (train) tile, ``copies`` new patches at any angle (0-360°) and scale 0.75-1.33, each
    relit. No pixel of a test tile is read. The train and test patches themselves are
    unchanged (the views come from their own generator, seeded by ``random_state``, the
    class name and 1).

    Returns
    -------
    images : np.ndarray of shape (n_train_patches * copies, patch_size, patch_size), uint8
    labels : np.ndarray of shape (n_train_patches * copies,), str
    source : np.ndarray of shape (n_train_patches * copies,), int
        Index of the view's train patch among the train patches of
        :func:`load_hard_textures` (in their order), so that a cross-validation can put
        a view in the folds of its source.
    """
    if not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
    _, labels, splits, centres = _draw(patch_size, n_train, n_test, classes, random_state)
    train = np.flatnonzero(splits == "train")
    images, out_labels, source = [], [], []
    for name in dict.fromkeys(labels[train]):
        image = hard_texture_image(name)
        rng = np.random.default_rng([random_state, zlib.crc32(name.encode()), 1])
        for k, index in enumerate(train):
            if labels[index] != name:
                continue
            for _ in range(copies):
                angle = rng.uniform(0, 2 * np.pi)
                scale = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
                patch = _patch(image, centres[index], patch_size, angle, scale)
                images.append(_illuminate(patch, rng))
                out_labels.append(name)
                source.append(k)
    return np.stack(images), np.array(out_labels), np.array(source)


def _draw(patch_size, n_train, n_test, classes, random_state):
    """:func:`load_hard_textures`'s patches, labels, splits and patch centres."""
    if not isinstance(patch_size, (int, np.integer)) or not 8 <= patch_size <= 64:
        raise ValueError(f"patch_size must be an integer in [8, 64], got {patch_size!r}")
    names = list(HARD_CLASSES) if classes is None else list(classes)
    unknown = [c for c in names if c not in HARD_CLASSES]
    if unknown or not names:
        raise ValueError(f"classes must be a non-empty subset of {list(HARD_CLASSES)}, got "
                         f"{list(classes) if classes is not None else None}")
    test_tiles = set(np.random.default_rng(random_state).choice(GRID * GRID, TEST_TILES,
                                                                replace=False).tolist())
    images, labels, splits, centres = [], [], [], []
    for name in names:
        image = hard_texture_image(name)
        tile = min(image.shape) // GRID
        # the window a rotated (any angle) and magnified-out patch reads, kept in its tile
        reach = patch_size * np.sqrt(2) / 2 / 0.75 + 1
        if 2 * reach > tile:
            raise ValueError(f"patch_size {patch_size} is too large for the {tile}-px tiles of "
                             f"{name!r}; use at most {int((tile / 2 - 1) * 0.75 * np.sqrt(2))}")
        rng = np.random.default_rng([random_state, zlib.crc32(name.encode())])
        for split, count in (("train", n_train), ("test", n_test)):
            tiles = [t for t in range(GRID * GRID) if (t in test_tiles) == (split == "test")]
            for _ in range(count):
                t = tiles[rng.integers(len(tiles))]
                row0, col0 = (t // GRID) * tile, (t % GRID) * tile
                centre = (row0 + rng.uniform(reach, tile - reach),
                          col0 + rng.uniform(reach, tile - reach))
                if split == "train":
                    angle, scale = np.deg2rad(rng.uniform(-10, 10)), rng.uniform(0.95, 1.05)
                else:
                    angle, scale = rng.uniform(0, 2 * np.pi), np.exp(rng.uniform(np.log(0.75),
                                                                              np.log(1.33)))
                patch = _patch(image, centre, patch_size, angle, scale)
                images.append(_illuminate(patch, rng))
                labels.append(name)
                splits.append(split)
                centres.append(centre)
    return np.stack(images), np.array(labels), np.array(splits), centres
