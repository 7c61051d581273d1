"""A uniform sample of a table's rows per class that does not depend on how the table is
split into files, nor on the order they are read: the rows of least key, the key a hash of
the row's id. Numpy only: the feature and classify tasks that gather the kernel head's
sample import no scikit-learn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["sample_keys", "bottom_rows"]


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
