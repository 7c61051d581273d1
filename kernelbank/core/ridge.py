r"""A standardised ridge classifier from mergeable sums, with its ridge chosen by exact CV.

The model is scikit-learn's ``StandardScaler`` + ``RidgeClassifier(alpha)`` (targets ±1
per class, an intercept, population standard deviations). It is fitted from sums, so a
table of any size streams through it: each block contributes

    n,  μ_b = mean(x),  M_b = Σ (x - μ_b)(x - μ_b)ᵀ,  and per class n_c, S_c = Σ_{y=c} x

and blocks merge exactly (Chan et al.'s pairwise update ``M = M_a + M_b + δδᵀ n_a n_b / n``,
``δ = μ_b - μ_a``, which stays accurate where ``Σxxᵀ - nμμᵀ`` would cancel). With
``D = diag(1/σ)``:

    (D M D + α I) W = D · 2 (S_c - n_c μ)   for every class c,   b_c = (2 n_c - n) / n

**Choosing α without another pass.** Rows are dealt into ``k`` folds (by a hash of their
id, so the split does not depend on how the table is blocked), one set of sums per fold.
The held-out squared loss of the model trained on the other folds is a quadratic form in
the held-out fold's sums: with ``z = D_T (x - μ_T)`` and ``δ = μ_V - μ_T``,
``Σ zzᵀ = D_T (M_V + n_V δδᵀ) D_T``, ``Σ z = n_V D_T δ`` and
``Σ y_c z = D_T (2 (S_c^V - n_c^V μ_T) - n_V δ)``, so the loss of every α on every fold is
exact algebra (one eigendecomposition per fold serves all α) — the criterion of
scikit-learn's ``RidgeClassifierCV``, computed from sums.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

__all__ = ["StreamingRidge", "ALPHAS", "fold_of"]

#: Ridge strengths searched by :meth:`StreamingRidge.choose_alpha` (features standardised).
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


def fold_of(ids: Sequence[str], folds: int) -> np.ndarray:
    """A stable fold index per row id (CRC-32 of the id modulo ``folds``)."""
    return np.array([zlib.crc32(str(i).encode()) % folds for i in ids], dtype=np.int64)


class StreamingRidge:
    """Mergeable sufficient statistics of a standardised ridge classifier.

    Build one per block with :meth:`from_block`, merge with ``+``, then :meth:`solve`.

    Attributes
    ----------
    n : int
    mean : ndarray of shape (F,)
    scatter : ndarray of shape (F, F)
        ``Σ (x - mean)(x - mean)ᵀ``.
    class_n : dict of str to int
    class_sum : dict of str to ndarray of shape (F,)
    """

    def __init__(self, n: int, mean: np.ndarray, scatter: np.ndarray,
                 class_n: dict[str, int], class_sum: dict[str, np.ndarray]):
        self.n, self.mean, self.scatter = n, mean, scatter
        self.class_n, self.class_sum = class_n, class_sum

    @classmethod
    def from_block(cls, x: np.ndarray, labels: Sequence[str]) -> "StreamingRidge":
        """Statistics of one block: ``x`` of shape (n, F), float64."""
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
        centred = x - mean
        class_n: dict[str, int] = {}
        class_sum: dict[str, np.ndarray] = {}
        labels_arr = np.asarray(labels, dtype=object)
        for name in sorted(set(labels)):
            rows = labels_arr == name
            class_n[name] = int(rows.sum())
            class_sum[name] = x[rows].sum(0)
        return cls(len(x), mean, centred.T @ centred, class_n, class_sum)

    @classmethod
    def empty(cls, n_features: int) -> "StreamingRidge":
        return cls(0, np.zeros(n_features), np.zeros((n_features, n_features)), {}, {})

    def __add__(self, other: "StreamingRidge") -> "StreamingRidge":
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        class_n = dict(self.class_n)
        class_sum = {k: v.copy() for k, v in self.class_sum.items()}
        for name, count in other.class_n.items():
            class_n[name] = class_n.get(name, 0) + count
            class_sum[name] = class_sum.get(name, 0) + other.class_sum[name]
        return StreamingRidge(n, mean, scatter, class_n, class_sum)

    # ------------------------------------------------------------------ solving
    def _standardised(self, classes: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Scale ``σ``, the standardised scatter ``D M D``, the targets ``D · 2 (S_c - n_c μ)``
        (F, C) and the intercepts ``(2 n_c - n) / n`` (C,) of these statistics."""
        if self.n == 0 or not self.class_n:
            raise ValueError("no training rows in the feature table (split 'train' or "
                             "'unsplit'); nothing to classify with")
        scale = np.sqrt(np.clip(np.diag(self.scatter) / self.n, 0, None))
        scale = np.where(scale > 0, scale, 1.0)
        inverse = 1.0 / scale
        zero = np.zeros_like(self.mean)
        targets = np.column_stack([2 * (self.class_sum.get(c, zero) - self.class_n.get(c, 0)
                                        * self.mean) * inverse for c in classes])
        intercept = np.array([(2 * self.class_n.get(c, 0) - self.n) / self.n for c in classes])
        return scale, self.scatter * inverse[:, None] * inverse[None, :], targets, intercept

    def solve(self, alpha: float, classes: Sequence[str] | None = None) -> dict:
        """Classes, mean, scale, weights (F, C) and intercept (C,) of the classifier."""
        classes = sorted(self.class_n) if classes is None else list(classes)
        scale, gram, targets, intercept = self._standardised(classes)
        weights = np.linalg.solve(gram + alpha * np.eye(len(gram)), targets)
        return {"classes": classes, "mean": self.mean, "scale": scale, "weights": weights,
                "intercept": intercept, "alpha": float(alpha)}

    @staticmethod
    def choose_alpha(folds: Sequence["StreamingRidge"], alphas: Sequence[float] = ALPHAS
                     ) -> tuple[float, dict[float, float]]:
        """The α of least k-fold held-out squared loss over ``folds`` (one StreamingRidge
        per fold, at least 2 non-empty), and every α's mean held-out squared loss per row,
        summed over classes."""
        used = [f for f in folds if f.n > 0]
        if len(used) < 2:
            raise ValueError("choosing alpha needs at least 2 non-empty folds; give a ridge "
                             "value instead")
        classes = sorted({c for f in used for c in f.class_n})
        total = {float(a): 0.0 for a in alphas}
        rows = 0
        for k, held in enumerate(used):
            train = sum((f for j, f in enumerate(used) if j != k),
                        StreamingRidge.empty(len(held.mean)))
            scale, gram, targets, intercept = train._standardised(classes)
            inverse = 1.0 / scale
            values, vectors = np.linalg.eigh(gram)
            projected = vectors.T @ targets                                     # (F, C)
            delta = held.mean - train.mean
            zz = (held.scatter + held.n * np.outer(delta, delta)) * inverse[:, None] \
                * inverse[None, :]
            z_sum = held.n * delta * inverse
            zero = np.zeros_like(held.mean)
            yz = np.column_stack([(2 * (held.class_sum.get(c, zero) - held.class_n.get(c, 0)
                                        * train.mean) - held.n * delta) * inverse
                                  for c in classes])
            y_sum = np.array([2 * held.class_n.get(c, 0) - held.n for c in classes])
            for alpha in total:
                w = vectors @ (projected / (values.clip(min=0) + alpha)[:, None])
                fit_y = (w * yz).sum(0) + intercept * y_sum
                fit_f = (w * (zz @ w)).sum(0) + 2 * intercept * (z_sum @ w) \
                    + held.n * intercept ** 2
                total[alpha] += float((held.n - 2 * fit_y + fit_f).sum())
            rows += held.n
        losses = {a: v / rows for a, v in total.items()}
        best = min(losses, key=lambda a: (losses[a], -a))
        return best, losses
