"""The validation split the train stage selects its epoch on, carved from the train split.

Choosing the exported epoch by *test* accuracy is model selection on the test set: the
reported accuracy is then optimistic. :func:`carve_validation` sets aside a stratified,
seeded share of each class's training rows instead; the train stage selects the epoch
on those and scores the test split once, with the exported weights.

The choice depends only on the ids and labels of the training rows and on the seed —
never on their order of arrival, nor on anything in the test split — so the same input
and seed give the same validation rows on every machine and every rerun.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np

__all__ = ["VALIDATION_SPLITS", "carve_validation"]

#: Split names an input may already use for its own validation rows.
VALIDATION_SPLITS = ("val", "validation")


def carve_validation(ids: Iterable[str], labels: Iterable[str], fraction: float,
                     random_state: int = 0) -> tuple[set[str], dict[str, int]]:
    """Ids of a stratified, seeded validation share of the training rows.

    Per class, ``round(fraction · n)`` rows (at least 1, and none from a class with a
    single training row, which it needs to learn from) are drawn without replacement
    by a permutation seeded with ``random_state`` and the class name.

    Parameters
    ----------
    ids, labels : iterables of str, of equal length
        The training rows' ids (unique) and class labels.
    fraction : float
        Share of each class to set aside, in (0, 1).
    random_state : int, default=0

    Returns
    -------
    ids : set of str
        The validation rows.
    counts : dict of str to int
        Validation rows per class.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
    by_class: dict[str, list[str]] = {}
    for rid, label in zip(ids, labels):
        by_class.setdefault(str(label), []).append(str(rid))
    chosen: set[str] = set()
    counts: dict[str, int] = {}
    for label in sorted(by_class):
        members = sorted(by_class[label])           # order of arrival must not matter
        n = len(members)
        k = 0 if n < 2 else min(n - 1, max(1, int(np.floor(fraction * n + 0.5))))
        # one generator per class, seeded by the seed and the class name: adding a class
        # leaves the other classes' validation rows unchanged
        rng = np.random.default_rng([int(random_state), zlib.crc32(label.encode())])
        chosen.update(members[i] for i in rng.permutation(n)[:k])
        counts[label] = k
    return chosen, counts
