"""Real texture patches, Brodatz-style, from the photographs scikit-image ships.

Each class is one photograph of a texture, converted to greyscale and cut into
non-overlapping square patches. Train and test patches come from disjoint parts of
the photograph: the rightmost columns are test, the leftmost are train, and at least
``gap`` pixels separate the two, so no test patch overlaps or touches a train patch.
That is the honest way to split a single-image texture class: patches cut from one
region are correlated with their neighbours, so a random split would leak.

The classes (all bundled with scikit-image, no download):

* ``brick``, ``grass``, ``gravel``: ``skimage.data.brick/grass/gravel()``, 512 x 512
  photographs taken as textures.
* ``moon``: ``skimage.data.moon()``, 512 x 512 lunar regolith; mostly homogeneous, a few
  craters.
* ``starfield``: centre 512 x 512 of ``skimage.data.hubble_deep_field()`` in grey; a
  stochastic point texture (stars and galaxies on black).
* ``tissue``: ``skimage.data.immunohistochemistry()`` in grey, 512 x 512; glands and
  stroma, the least homogeneous class.

Larger photographs are centre-cropped to ``max_size`` so the classes are balanced.

**Colour** (``colour=True``): the same patches in RGB. Only ``starfield`` and ``tissue``
have colour sources; ``brick``, ``grass``, ``gravel`` and ``moon`` are greyscale
photographs, replicated into three equal channels (:data:`COLOUR_CLASSES` names the
real colour ones). A colour model can therefore tell those four from the other two by
their missing colour alone; between the four it has only their luminance. The greyscale
patches of the colour classes are the luminance (``rgb2gray``) of the colour ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["TEXTURE_CLASSES", "COLOUR_CLASSES", "load_texture_image", "texture_patch_positions",
           "load_textures", "write_textures", "ensure_textures"]


def _grey(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray
    return np.rint(rgb2gray(rgb) * 255).astype(np.uint8)


def _replicated(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def _sources(colour: bool = False) -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as data
    as_grey = _replicated if colour else (lambda image: image)
    as_colour = (lambda image: image) if colour else _grey
    return {
        "brick": lambda: as_grey(data.brick()),
        "grass": lambda: as_grey(data.grass()),
        "gravel": lambda: as_grey(data.gravel()),
        "moon": lambda: as_grey(data.moon()),
        "starfield": lambda: as_colour(data.hubble_deep_field()),
        "tissue": lambda: as_colour(data.immunohistochemistry()),
    }


TEXTURE_CLASSES: tuple[str, ...] = ("brick", "grass", "gravel", "moon", "starfield", "tissue")
#: The classes whose source photograph is in colour (the others are replicated grey).
COLOUR_CLASSES: tuple[str, ...] = ("starfield", "tissue")
MANIFEST = "textures.json"


def load_texture_image(name: str, max_size: int | None = 512, *,
                       colour: bool = False) -> np.ndarray:
    """The source photograph of one texture class, greyscale or colour.

    Parameters
    ----------
    name : str
        One of :data:`TEXTURE_CLASSES`.
    max_size : int or None, default=512
        Centre-crop each side to at most this many pixels; None keeps the whole photo.
    colour : bool, default=False
        RGB; a greyscale source is replicated into three equal channels.

    Returns
    -------
    np.ndarray of shape (H, W), or (H, W, 3) with ``colour``, uint8
    """
    sources = _sources(colour)
    if name not in sources:
        raise ValueError(f"unknown texture class {name!r}; choose from {list(TEXTURE_CLASSES)}")
    image = np.asarray(sources[name]())
    expected = 3 if colour else 2
    if image.ndim != expected or image.dtype != np.uint8:
        kind = "an RGB" if colour else "a greyscale"
        raise ValueError(f"texture {name!r} did not load as {kind} uint8 image "
                         f"(got {image.dtype}, shape {image.shape})")
    if max_size is not None:
        top = max(0, (image.shape[0] - max_size) // 2)
        left = max(0, (image.shape[1] - max_size) // 2)
        image = image[top:top + max_size, left:left + max_size]
    return image


def _default_gap(patch_size: int) -> int:
    return max(1, patch_size // 4)


def texture_patch_positions(image_shape: Sequence[int], patch_size: int = 64,
                            test_fraction: float = 0.3, gap: int | None = None
                            ) -> dict[str, list[tuple[int, int]]]:
    """Top-left corners of the train and test patches of one photograph.

    The image is tiled by ``W // patch_size`` columns of patches;
    ``round(test_fraction * that)`` (at least 1) of them, flush with the right edge,
    are test. Train patches tile from the left edge up to ``gap`` pixels before the
    first test column. Rows tile from the top edge.

    Parameters
    ----------
    image_shape : (H, W)
    patch_size : int, default=64
    test_fraction : float, default=0.3
        Approximate share of the patch columns used for test, in (0, 1).
    gap : int, optional
        Minimum number of pixels between train and test patches; default
        ``max(1, patch_size // 4)``.

    Returns
    -------
    dict
        ``{"train": [(row, col), ...], "test": [...]}`` in pixels, row-major order.
    """
    height, width = (int(s) for s in image_shape)
    if not isinstance(patch_size, (int, np.integer)) or patch_size < 4:
        raise ValueError(f"patch_size must be an integer >= 4, got {patch_size!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    gap = _default_gap(patch_size) if gap is None else int(gap)
    if gap < 1:
        raise ValueError(f"gap must be >= 1 pixel so train and test patches never touch, got {gap}")
    n_rows, n_columns = height // patch_size, width // patch_size
    n_test = max(1, int(np.floor(test_fraction * n_columns + 0.5)))
    test_left = width - n_test * patch_size
    n_train = max(0, (test_left - gap) // patch_size)
    if n_rows < 1 or n_train < 1:
        raise ValueError(
            f"patch_size={patch_size} with gap={gap} leaves no train patch in an image of "
            f"{height} x {width}; use a smaller patch_size, test_fraction or gap")
    rows = [r * patch_size for r in range(n_rows)]
    return {
        "train": [(r, c * patch_size) for r in rows for c in range(n_train)],
        "test": [(r, test_left + c * patch_size) for r in rows for c in range(n_test)],
    }


def _check_classes(classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return list(TEXTURE_CLASSES)
    unknown = [c for c in classes if c not in TEXTURE_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be a non-empty subset of {list(TEXTURE_CLASSES)}, "
                         f"got unknown {unknown}" if unknown else "classes is empty")
    return list(classes)


def _patches(patch_size, test_fraction, gap, classes, max_size, colour=False):
    """Yield (class, split, row, col, patch) in a fixed order; colour patches (P, P, 3)."""
    for name in _check_classes(classes):
        image = load_texture_image(name, max_size, colour=colour)
        positions = texture_patch_positions(image.shape[:2], patch_size, test_fraction, gap)
        for split in ("train", "test"):
            for row, col in positions[split]:
                yield name, split, row, col, image[row:row + patch_size, col:col + patch_size]


def load_textures(patch_size: int = 64, test_fraction: float = 0.3, gap: int | None = None,
                  classes: Sequence[str] | None = None, max_size: int | None = 512, *,
                  colour: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All texture patches in memory.

    Parameters are those of :func:`write_textures`.

    Returns
    -------
    images : np.ndarray of shape (n_patches, patch_size, patch_size), uint8
        With ``colour``: (n_patches, 3, patch_size, patch_size), channels first as
        ``kb.fit`` takes them.
    labels : np.ndarray of shape (n_patches,), str
        Class name of each patch.
    splits : np.ndarray of shape (n_patches,), str
        ``"train"`` or ``"test"``.

    Examples
    --------
    >>> images, labels, splits = load_textures(patch_size=64)
    >>> images.shape, sorted(set(labels)) == sorted(TEXTURE_CLASSES)
    ((336, 64, 64), True)
    """
    records = list(_patches(patch_size, test_fraction, gap, classes, max_size, colour))
    images = np.stack([r[4] for r in records])
    if colour:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return images, np.array([r[0] for r in records]), np.array([r[1] for r in records])


def _patch_name(name: str, row: int, col: int) -> str:
    return f"{name}_{row:04d}_{col:04d}.png"


def write_textures(root: str | Path, patch_size: int = 64, test_fraction: float = 0.3,
                   gap: int | None = None, classes: Sequence[str] | None = None,
                   max_size: int | None = 512, *, colour: bool = False) -> dict:
    """Write the texture patches as ``root/<split>/<class>/<class>_<row>_<col>.png``.

    ``row`` and ``col`` are the pixel coordinates of the patch's top-left corner in the
    (cropped) source photograph, zero-padded to 4 digits. Patches are uint8 greyscale
    PNGs, or RGB PNGs with ``colour`` (greyscale sources replicated). A summary is also
    written to ``root/textures.json``. Patch files left in ``root`` by an earlier write
    (any parameters) are deleted first; other files are kept.

    Parameters
    ----------
    root : str or Path
        Output folder (created if missing).
    patch_size : int, default=64
        Side of the square patches in pixels.
    test_fraction : float, default=0.3
        Approximate share of each photograph's patch columns used for test.
    gap : int, optional
        Minimum pixels between train and test patches; default ``max(1, patch_size // 4)``.
    classes : sequence of str, optional
        Subset of :data:`TEXTURE_CLASSES`; default all.
    max_size : int or None, default=512
        Centre-crop larger photographs to this side so classes are balanced.
    colour : bool, default=False
        Write RGB patches (see the module docstring).

    Returns
    -------
    dict
        ``root``, ``params`` (the arguments above), ``classes``, ``counts``
        (split -> class -> number of patches) and ``patches`` (list of
        ``{"path", "class", "split", "row", "col"}``, paths relative to ``root``).
    """
    from PIL import Image

    root = Path(root)
    params = _params(patch_size, test_fraction, gap, classes, max_size, colour)
    _remove_previous(root)
    counts = {"train": {c: 0 for c in params["classes"]}, "test": {c: 0 for c in params["classes"]}}
    patches = []
    for name, split, row, col, patch in _patches(patch_size, test_fraction, params["gap"],
                                                 params["classes"], max_size, colour):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{split}/{name}/{_patch_name(name, row, col)}"
        Image.fromarray(np.ascontiguousarray(patch)).save(root / relative)
        counts[split][name] += 1
        patches.append({"path": relative, "class": name, "split": split, "row": row, "col": col})
    summary = {"root": str(root), "params": params, "classes": params["classes"],
               "counts": counts, "patches": patches}
    (root / MANIFEST).write_text(json.dumps(summary, indent=1))
    return summary


def _remove_previous(root: Path) -> None:
    """Delete the patch files an earlier write left: only ``<class>_<row>_<col>.png`` files
    in ``root/{train,test}/<class>/`` folders of known classes, and the manifest."""
    for split in ("train", "test"):
        for name in TEXTURE_CLASSES:
            folder = root / split / name
            if folder.is_dir():
                pattern = re.compile(rf"^{name}_\d{{4}}_\d{{4}}\.png$")
                for path in folder.iterdir():
                    if pattern.match(path.name):
                        path.unlink()
    (root / MANIFEST).unlink(missing_ok=True)


def _params(patch_size, test_fraction, gap, classes, max_size, colour) -> dict:
    return {"patch_size": int(patch_size), "test_fraction": float(test_fraction),
            "gap": _default_gap(patch_size) if gap is None else int(gap),
            "classes": _check_classes(classes), "max_size": max_size, "colour": bool(colour)}


def ensure_textures(root: str | Path, patch_size: int = 64, test_fraction: float = 0.3,
                    gap: int | None = None, classes: Sequence[str] | None = None,
                    max_size: int | None = 512, *, colour: bool = False) -> dict:
    """Return the summary of the texture patches in ``root``, writing them only if needed.

    The patches are reused when ``root/textures.json`` records the same parameters and
    every file it lists exists; otherwise :func:`write_textures` (re)writes them.
    """
    root = Path(root)
    params = _params(patch_size, test_fraction, gap, classes, max_size, colour)
    manifest = root / MANIFEST
    if manifest.exists():
        try:
            summary = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            summary = None
        if (summary is not None and summary.get("params") == params
                and all((root / p["path"]).exists() for p in summary["patches"])):
            summary["root"] = str(root)
            return summary
    return write_textures(root, patch_size, test_fraction, gap, classes, max_size,
                          colour=colour)
