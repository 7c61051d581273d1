"""The parts of the classify stage's kernel head (``--head nystroem``) that run in Ray
tasks, numpy only, so that those tasks import no scikit-learn (about a second per worker):

* the sample it is fitted on: per class, the rows of least key, the key a hash of the
  row's id — a uniform sample that does not depend on how the table is split into files,
  nor on the order they are read (:func:`sample_keys`, :func:`bottom_rows`);
* the scores of every row under the fitted model (:func:`kernel_head_scores`).

The fit itself, on the driver, is :func:`kernelbank.heads.fit_kernel_head`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["sample_keys", "bottom_rows", "kernel_head_scores"]


def sample_keys(ids: Sequence[str]) -> np.ndarray:
    """A stable pseudo-random key per row id (CRC-32 of ``"sample:" + id``).

    The rows of a class with the smallest keys are a uniform sample of it that does not
    depend on how the table is split into files, nor on the order the files are read
    (the prefix keeps the key independent of the CV fold, which is the CRC-32 of the id).
    """
    import zlib
    return np.array([zlib.crc32(b"sample:" + str(i).encode()) for i in ids], dtype=np.int64)


def bottom_rows(keys: np.ndarray, ids: np.ndarray, labels: np.ndarray, per_class: int
                ) -> np.ndarray:
    """Indices of the ``per_class`` rows of least ``(key, id)`` in every class."""
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        order = np.lexsort((ids[rows], keys[rows]))        # key first, id breaks ties
        chosen.append(rows[order[:per_class]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def kernel_head_scores(model: dict, x: np.ndarray, block_rows: int = 1024) -> np.ndarray:
    """Class scores of :func:`kernelbank.heads.fit_kernel_head`'s model, shape (n, C),
    ``block_rows`` rows at a time (memory O(block_rows · m))."""
    landmarks = model["landmarks"]
    squared = (landmarks ** 2).sum(1)
    out = np.empty((len(x), len(model["classes"])))
    for start in range(0, len(x), block_rows):
        z = (np.asarray(x[start:start + block_rows], dtype=np.float64) - model["x_mean"]) \
            / model["x_scale"]
        # ‖z - l‖² = ‖z‖² + ‖l‖² - 2 z·l, clipped at 0 as scikit-learn's
        # euclidean_distances clips it
        d2 = np.maximum((z ** 2).sum(1)[:, None] + squared[None, :] - 2 * z @ landmarks.T, 0)
        np.exp(-model["gamma"] * d2, out=d2)
        out[start:start + block_rows] = d2 @ model["weights"] + model["intercept"]
    return out
