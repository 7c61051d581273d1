"""The report's pictures, returned as PNG bytes.

Plots with axes (confusion matrix, counts, stage timings, learning curves) are drawn
with matplotlib's Agg backend at a modest resolution (:data:`DPI`); the grids of small
images (bank kernels, sample maps), whose number grows with the classes, are drawn
straight into pixels (:mod:`kernelbank.report.raster`), about a hundred times faster.
Kernels are drawn on a symmetric diverging scale (``RdBu_r``, white = 0) whose limit the
caller shares across a whole bank; volumes and 3-D kernels are drawn as the middle slice
along each axis. All text is drawn literally (``text.parse_math`` off for matplotlib):
class names and paths come from the data, and a name with ``$`` must not be read as TeX.
"""

from __future__ import annotations

import functools
import io
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from . import raster  # noqa: E402

__all__ = ["DPI", "KERNEL_CMAP", "middle_slices", "kernel_grid", "sample_panel",
           "confusion_figure", "counts_figure", "stages_figure", "curves_figure",
           "category_colors"]

DPI = 80
KERNEL_CMAP = "RdBu_r"
AXIS_NAMES = ("axis 0 (depth)", "axis 1 (rows)", "axis 2 (columns)")


def _literal_text(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Run ``draw`` with mathtext off, so every label it creates is shown as written."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> bytes:
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def middle_slices(array: np.ndarray) -> list[np.ndarray]:
    """``[array]`` for 2-D arrays; the three middle slices (one per axis) for 3-D ones."""
    array = np.asarray(array)
    if array.ndim == 2:
        return [array]
    return [np.take(array, array.shape[axis] // 2, axis=axis) for axis in range(3)]


def category_colors(n: int) -> np.ndarray:
    """``n`` distinguishable RGBA colours (tab10, tab20, then evenly spaced hues)."""
    if n <= 10:
        return plt.get_cmap("tab10")(np.arange(n))
    if n <= 20:
        return plt.get_cmap("tab20")(np.arange(n))
    return plt.get_cmap("hsv")(np.linspace(0, 1, n, endpoint=False))


#: Longest side, in pixels, of one kernel tile and of one sample map.
KERNEL_TILE = 64
MAP_TILE = 192


def kernel_grid(kernels: Sequence[np.ndarray], titles: Sequence[str], vmax: float,
                ncols: int = 8) -> bytes:
    """Kernels as small images on one symmetric colour scale ``[-vmax, vmax]``.

    Parameters
    ----------
    kernels : sequence of arrays of shape (k, k) or (k, k, k)
        3-D kernels take one row each: their middle slice along every axis.
    titles : sequence of str
        One caption per kernel.
    vmax : float
        Colour limit shared by every kernel of the bank (so colours compare across
        figures of one report).
    ncols : int, default=8
        Kernels per row for 2-D kernels.
    """
    vmax = float(vmax) if vmax > 0 else 1.0
    tiles = [[raster.Tile(raster.colorize(part, KERNEL_CMAP, -vmax, vmax, KERNEL_TILE),
                          title if j == 0 else AXIS_NAMES[j])
              for j, part in enumerate(middle_slices(kernel))]
             for kernel, title in zip(kernels, titles)]
    if len(tiles[0]) == 1:                          # 2-D: ncols kernels per row
        flat = [row[0] for row in tiles]
        tiles = [flat[i:i + ncols] for i in range(0, len(flat), max(1, ncols))]
    scale = raster.colorbar(KERNEL_CMAP, -vmax, vmax, "tap weight")
    return raster.png(raster.stack([*tiles, [scale]]))


def channel_kernel_grid(kernels: Sequence[np.ndarray], titles: Sequence[str], vmax: float,
                        channel_names: Sequence[str] | None = None) -> bytes:
    """Vector (colour) kernels, each as a ``C × C`` grid of kernel images.

    Parameters
    ----------
    kernels : sequence of arrays of shape (C, C, k, k)
        ``kernel[c, c']``: the weights output channel ``c`` puts on input channel ``c'``
        (rows: output channel, columns: input channel).
    titles : sequence of str
        One caption per kernel (drawn above its grid).
    vmax : float
        Colour limit shared by every kernel.
    channel_names : sequence of str, optional
        Names of the channels (default ``c0, c1, …``).
    """
    vmax = float(vmax) if vmax > 0 else 1.0
    channels = int(np.asarray(kernels[0]).shape[0])
    names = list(channel_names or [f"c{c}" for c in range(channels)])
    blocks = []
    for kernel, title in zip(kernels, titles):
        kernel = np.asarray(kernel)
        rows = [[raster.Tile(raster.colorize(kernel[c, c2], KERNEL_CMAP, -vmax, vmax,
                                             KERNEL_TILE // 2 + 8),
                             f"out {names[c]}\nin {names[c2]}")
                 for c2 in range(channels)] for c in range(channels)]
        blocks.append(raster.Tile(raster.stack(rows), title))
    per_row = max(1, min(len(blocks), 4 if channels <= 3 else 2))
    scale = raster.colorbar(KERNEL_CMAP, -vmax, vmax, "tap weight")
    return raster.png(raster.stack([*(blocks[i:i + per_row]
                                      for i in range(0, len(blocks), per_row)), [scale]]))


def sample_panel(image: np.ndarray, residual: np.ndarray, categories: np.ndarray,
                 names: Sequence[str], title: str, legend_title: str = "kernel") -> bytes:
    """One test image, the residual of its best kernel, and the per-pixel winner map.

    Parameters
    ----------
    image, residual : arrays of shape (H, W) or (D, H, W)
        The z-scored image and the residual map (NaN where no kernel reaches).
    categories : int array, same shape
        Category of the best kernel at each pixel (-1 where no kernel reaches).
    names : sequence of str
        Legend label of each category.
    title : str
    legend_title : str, default="kernel"
        What a category is (``kernel``, ``class of kernel``).
    """
    colors = category_colors(len(names))
    cmap = ListedColormap(np.vstack([[1, 1, 1, 1], colors]))       # -1 (border) is white
    limit = float(np.nanmax(np.abs(residual))) if np.isfinite(residual).any() else 1.0
    finite = np.asarray(image, dtype=np.float64)[np.isfinite(image)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    many = np.ndim(image) == 3
    rows = []
    for r, (img, res, cat) in enumerate(zip(middle_slices(image), middle_slices(residual),
                                            middle_slices(categories))):
        suffix = f" — {AXIS_NAMES[r]}" if many else ""
        rows.append([
            raster.Tile(raster.colorize(img, "gray", low, high, MAP_TILE),
                        "image (z-scored)" + suffix),
            raster.Tile(raster.colorize(res, KERNEL_CMAP, -limit, limit, MAP_TILE),
                        "residual of best kernel" + suffix),
            raster.Tile(raster.colorize(np.asarray(cat) + 1, cmap, 0, len(names), MAP_TILE),
                        "best kernel per pixel" + suffix)])
    present = np.unique(categories[categories >= 0])[:24]
    keys = [raster.colorbar(KERNEL_CMAP, -limit, limit, "residual")]
    if len(present):
        keys.append(raster.legend(colors[present], [names[c] for c in present], legend_title))
    return raster.png(raster.stack([*rows, keys], title))


@_literal_text
def confusion_figure(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """Confusion counts (rows true, columns predicted), coloured by row fraction."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    fractions = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = min(2.0 + 0.45 * n, 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    shown = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black")
    ticks = np.arange(n) if n <= 40 else []
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="fraction of true class")
    return _png(fig)


@_literal_text
def counts_figure(counts: dict[str, dict[str, int]]) -> bytes:
    """Images per class, one bar per split."""
    splits = sorted(counts)
    classes = sorted({c for part in counts.values() for c in part})
    y = np.arange(len(classes))
    height = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.28 * len(classes) * max(1, len(splits)) ** 0.5))
    for i, split in enumerate(splits):
        ax.barh(y + i * height, [counts[split].get(c, 0) for c in classes], height,
                label=split, color=category_colors(max(len(splits), 1))[i])
    ax.set_yticks(y + height * (len(splits) - 1) / 2, classes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


@_literal_text
def stages_figure(names: Sequence[str], seconds: Sequence[float],
                  rates: Sequence[float | None]) -> bytes:
    """Wall seconds and images per second of each stage."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 0.8 + 0.35 * len(names)),
                                      layout="constrained")
    y = np.arange(len(names))
    left.barh(y, seconds, color="#4c72b0")
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.set_xlabel("seconds")
    right.barh(y, [r or 0 for r in rates], color="#55a868")
    right.set_yticks(y, names)
    right.invert_yaxis()
    right.set_xlabel("images / s")
    return _png(fig)


@_literal_text
def curves_figure(epochs: Sequence[dict]) -> bytes:
    """Loss and train/validation accuracy per epoch of an end-to-end run."""
    x = [e["epoch"] for e in epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 2.8))
    left.plot(x, [e["loss"] for e in epochs], "o-", color="#c44e52")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    for key, color in (("train_accuracy", "#4c72b0"), ("validation_accuracy", "#55a868")):
        right.plot(x, [e.get(key) for e in epochs], "o-", color=color,
                   label=key.replace("_", " "))
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)
