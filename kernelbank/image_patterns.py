"""Image-domain local binary patterns and the power (Hellinger) map of histogram features.

The residual descriptors (:mod:`kernelbank.core.residual`) take sign patterns of each
image's AR residual ``e = x − k ⋆ x``: what the image's own kernel does *not* explain.
The patterns of the image itself describe what it does explain (edges, spots, flat
areas); the two are complementary, and the bench (``bench/accuracy.py``) measures the
pair against either alone.

:func:`image_lbp_histograms` gives, per image and radius ``r``, the normalised histogram
of rotation-invariant uniform codes over ``8r`` circular neighbours (``8r + 2`` bins,
scikit-image's ``local_binary_pattern(..., method="uniform")``): invariant to monotone
illumination changes by construction, and to rotation up to the sampling of the circle.

:func:`power_normalize` maps histogram columns ``h`` to ``sign(h) · |h|^p``; ``p = 1/2``
is the Hellinger map, under which the Euclidean distance of two histograms is the
Hellinger distance, which weighs rare codes up — what a linear or RBF head on
standardised columns needs to compare histograms the way χ² does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["image_lbp_histograms", "image_lbp_names", "power_normalize", "histogram_columns"]


def image_lbp_histograms(images, radii: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """Rotation-invariant uniform LBP histograms of each image at each radius.

    Parameters
    ----------
    images : array of shape (n_images, H, W), or a list of 2-D arrays
    radii : sequence of int, default=(1, 2, 3)
        ``8 r`` neighbours at radius ``r``.

    Returns
    -------
    np.ndarray of shape (n_images, Σ_r (8 r + 2)), float64
        Each radius's histogram sums to 1.
    """
    from skimage.feature import local_binary_pattern
    radii = tuple(int(r) for r in radii)
    if not radii or min(radii) < 1:
        raise ValueError(f"radii must be positive integers, got {radii!r}")
    rows = []
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 2 or min(image.shape) < 2 * max(radii) + 1:
            raise ValueError(f"each image must be 2-D with a side >= {2 * max(radii) + 1} "
                             f"(radius {max(radii)}), got shape {image.shape}")
        parts = []
        for r in radii:
            codes = local_binary_pattern(image, 8 * r, r, method="uniform")
            parts.append(np.bincount(codes.astype(np.int64).ravel(), minlength=8 * r + 2)
                         / codes.size)
        rows.append(np.concatenate(parts))
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def image_lbp_names(radii: Sequence[int] = (1, 2, 3)) -> list[str]:
    """Column names of :func:`image_lbp_histograms` (``img_lbp_r{r}_{code:02d}``)."""
    return [f"img_lbp_r{r}_{c:02d}" for r in radii for c in range(8 * int(r) + 2)]


def histogram_columns(names: Sequence[str]) -> np.ndarray:
    """Boolean mask of the columns that are histogram bins (sign patterns, co-occurrences)."""
    return np.array(["_lbp_" in n or "_cooc" in n or n.startswith("img_lbp") for n in names])


def power_normalize(features: np.ndarray, columns: np.ndarray | None = None,
                    power: float = 0.5) -> np.ndarray:
    """``sign(x) · |x|^power`` on the chosen columns (all by default); a new array.

    Parameters
    ----------
    features : np.ndarray of shape (n_samples, n_features)
    columns : boolean np.ndarray of shape (n_features,), optional
    power : float, default=0.5
        0.5 is the Hellinger map; 1 leaves the values unchanged.
    """
    if not 0 < power <= 1:
        raise ValueError(f"power must be in (0, 1], got {power!r}")
    out = np.array(features, dtype=np.float64, copy=True)
    view = out if columns is None else out[:, columns]
    view = np.sign(view) * np.abs(view) ** power
    if columns is None:
        return view
    out[:, columns] = view
    return out
