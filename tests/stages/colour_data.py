"""Small real colour datasets for the channel pipeline tests: vector-GMRF textures as PNG
files, plus a grey PNG and an RGBA PNG in the same folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kernelbank.datasets.vector_gmrf import random_stable_vector_kernel, simulate_vector_gmrf


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(C, H, W) floats → (H, W, C) uint8, stretched to the full range."""
    low, high = image.min(), image.max()
    scaled = (image - low) / max(high - low, 1e-12) * 255
    return np.ascontiguousarray(np.round(scaled).astype(np.uint8).transpose(1, 2, 0))


def write_colour_dataset(root: str | Path, *, classes: int = 2, per_class: int = 3,
                         size: int = 24, seed: int = 0) -> dict:
    """``root/{train,test}/c<i>/*.png`` RGB vector-GMRF textures (one kernel per class),
    plus ``train/c0/grey.png`` (mode L) and ``train/c1/rgba.png`` (an RGBA PNG whose RGB
    is a texture and whose alpha is noise).

    Returns the paths of the grey and RGBA files and their pixels (grey (H, W); rgba
    (H, W, 4)).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        kernel = random_stable_vector_kernel(1, channels=3, random_state=rng)
        images = simulate_vector_gmrf(kernel, (size, size), n=2 * per_class, random_state=rng)
        for i, image in enumerate(images):
            split = "train" if i < per_class else "test"
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(image)).save(folder / f"img{i}.png")
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "train/c0/grey.png")
    kernel = random_stable_vector_kernel(1, channels=3, random_state=rng)
    rgb = to_uint8(simulate_vector_gmrf(kernel, (size, size), n=1, random_state=rng)[0])
    rgba = np.dstack([rgb, rng.integers(0, 256, (size, size), dtype=np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "train/c1/rgba.png")
    return {"grey": root / "train/c0/grey.png", "grey_pixels": grey,
            "rgba": root / "train/c1/rgba.png", "rgba_pixels": rgba}
