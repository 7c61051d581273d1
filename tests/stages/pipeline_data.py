"""Small real datasets for the pipeline tests: GMRF textures as PNG files plus bad records."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from kernelbank.datasets import random_stable_kernel, write_synthetic_dataset

#: Bad records every pipeline test adds, with the text their error reason must contain.
BAD_RECORDS = {
    "train/c0/corrupt.png": "cannot decode",
    "train/c1/tiny.png": "smaller than",
    "test/c1/nan_volume.npy": "NaN",
}


def write_dataset(root: str | Path, *, classes: int = 3, per_class: int = 6, size: int = 32,
                  radius: int = 2, seed: int = 0, bad: bool = True) -> dict:
    """``root/{train,test}/c<i>/*.png`` GMRF textures (one random kernel per class).

    With ``bad``, adds :data:`BAD_RECORDS`: undecodable bytes, an image smaller than
    any window, and a ``.npy`` image full of NaN.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    kernels = {f"c{i}": random_stable_kernel(radius, random_state=rng) for i in range(classes)}
    summary = write_synthetic_dataset(root, kernels, n_per_class=per_class, shape=(size, size),
                                      random_state=rng)
    if bad:
        (root / "train/c0/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
        Image.fromarray(np.full((3, 3), 9, np.uint8)).save(root / "train/c1/tiny.png")
        np.save(root / "test/c1/nan_volume.npy", np.full((size, size), np.nan, np.float32))
    return summary


def decoded_rows(root: str | Path, *, classes: int, min_side: int, per_class: int = 4,
                 size: int = 24):
    """:func:`write_dataset` (no bad records) under ``root``, read and decoded by the real
    reader: the pyarrow rows a fit task receives."""
    from kernelbank.config import ReadConfig
    from kernelbank.io.manifest import list_inputs
    from kernelbank.io.readers import read_block
    from kernelbank.io.storage import read_filesystem
    write_dataset(root, classes=classes, per_class=per_class, size=size, bad=False)
    read = ReadConfig(str(root), min_side=min_side)
    fs, _ = read_filesystem(str(root))
    return read_block(list_inputs(read), fs=fs, config=read)


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
