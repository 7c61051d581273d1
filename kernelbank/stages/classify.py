r"""The classify stage: a ridge classifier trained by streaming, mergeable sums.

The model is scikit-learn's ``StandardScaler`` + ``RidgeClassifier(alpha)`` (targets
±1 per class, intercept, population standard deviation), fitted without ever holding
the feature table: each block of the train split contributes

    n,  μ_b = mean(x),  M_b = Σ (x - μ_b)(x - μ_b)ᵀ,  and per class n_c, S_c = Σ_{y=c} x

and blocks merge exactly (Chan et al.'s pairwise update
``M = M_a + M_b + δδᵀ n_a n_b / n``, ``δ = μ_b - μ_a``, which stays accurate where
``Σxxᵀ - nμμᵀ`` would cancel). With ``D = diag(1/σ)`` the driver solves

    (D M D + α I) W = D · 2 (S_c - n_c μ)   for every class c,   b_c = (2 n_c - n) / n

and a second pass scores every row, ``argmax((x - μ) D W + b)``, emitting only confusion
counts per split. Both passes are ``map_batches`` over the features table plus a sum on
the driver, so the table may be larger than any node. The likelihood classifier's
prediction (a column written by the feature stage) is scored in the same pass.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ClassifyConfig
from ..io.layout import read_json, write_json
from ..io.storage import join, ray_filesystem, resolve
from .common import TEST_SPLIT, TRAIN_SPLITS, log, timed
from .features import PREDICTION

__all__ = ["StreamingRidge", "run_classify", "RESULT"]

#: The classify stage's output file (its summary: accuracy, confusion matrices).
RESULT = "result.json"


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    if not names:
        return np.zeros((table.num_rows, 0))
    return np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                            for n in names])


class StreamingRidge:
    """Mergeable sufficient statistics of a standardized ridge classifier.

    Build one per block with :meth:`from_block`, merge with ``+``, then :meth:`solve`.
    """

    def __init__(self, n: int, mean: np.ndarray, scatter: np.ndarray,
                 class_n: dict[str, int], class_sum: dict[str, np.ndarray]):
        self.n, self.mean, self.scatter = n, mean, scatter
        self.class_n, self.class_sum = class_n, class_sum

    @classmethod
    def from_block(cls, x: np.ndarray, labels: list[str]) -> "StreamingRidge":
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

    def solve(self, alpha: float) -> dict[str, Any]:
        """Classes, mean, scale, weights (F, C) and intercept (C,) of the classifier."""
        if self.n == 0 or not self.class_n:
            raise ValueError("no training rows in the feature table (split 'train' or "
                             "'unsplit'); nothing to classify with")
        classes = sorted(self.class_n)
        scale = np.sqrt(np.clip(np.diag(self.scatter) / self.n, 0, None))
        scale = np.where(scale > 0, scale, 1.0)
        inverse = 1.0 / scale
        gram = self.scatter * inverse[:, None] * inverse[None, :]
        rhs = np.column_stack([2 * (self.class_sum[c] - self.class_n[c] * self.mean) * inverse
                               for c in classes])
        weights = np.linalg.solve(gram + alpha * np.eye(len(gram)), rhs)
        intercept = np.array([(2 * self.class_n[c] - self.n) / self.n for c in classes])
        return {"classes": classes, "mean": self.mean, "scale": scale, "weights": weights,
                "intercept": intercept}


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(1)


def _train_block(table: pa.Table, *, names: list[str]) -> pa.Table:
    import pyarrow.compute as pc
    table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS)))
    x = _matrix(table, names)
    keep = _finite_rows(x)
    labels = [l for l, k in zip(table.column("label").to_pylist(), keep) if k]
    stats = StreamingRidge.from_block(x[keep], labels)
    return pa.table({"stats": pa.array([pickle.dumps(stats, protocol=5)], pa.large_binary())})


def _score_block(table: pa.Table, *, names: list[str], model: dict[str, Any]) -> pa.Table:
    x = _matrix(table, names)
    keep = _finite_rows(x)
    scores = ((np.nan_to_num(x) - model["mean"]) / model["scale"]) @ model["weights"] + \
        model["intercept"]
    predicted = np.asarray(model["classes"], dtype=object)[scores.argmax(1)]
    likelihood = table.column(PREDICTION).to_pylist() if PREDICTION in table.column_names \
        else [None] * table.num_rows
    rows: dict[tuple, int] = {}
    for split, label, pred, lik, ok in zip(table.column("split").to_pylist(),
                                            table.column("label").to_pylist(), predicted,
                                            likelihood, keep):
        key = (split, label, pred if ok else "<non-finite>", lik or "")
        rows[key] = rows.get(key, 0) + 1
    keys = list(rows)
    return pa.table({"split": [k[0] for k in keys], "label": [k[1] for k in keys],
                     "predicted": [k[2] for k in keys], "likelihood": [k[3] for k in keys],
                     "count": pa.array([rows[k] for k in keys], pa.int64())})


def _accuracy_report(counts: dict[tuple, int], classes: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for split in sorted({k[0] for k in counts}):
        part = {k: v for k, v in counts.items() if k[0] == split}
        labels = sorted({k[1] for k in part} | set(classes))
        index = {c: i for i, c in enumerate(labels)}
        confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
        correct = likelihood_correct = total = 0
        for (_, label, pred, lik), n in part.items():
            total += n
            if pred in index:
                confusion[index[label], index[pred]] += n
            correct += n * (pred == label)
            likelihood_correct += n * (lik == label)
        report[split] = {"images": total, "accuracy": correct / total if total else None,
                         "likelihood_accuracy": likelihood_correct / total if total else None,
                         "labels": labels, "confusion": confusion.tolist(),
                         "per_class": {c: int(confusion[index[c]].sum()) for c in labels}}
    return report


def classify_table(features_url: str, config: ClassifyConfig, *,
                   s3_endpoint: str | None = None) -> dict[str, Any]:
    """Train on the train split of a features table and score every split.

    Returns
    -------
    dict
        ``test_accuracy`` (None without a test split), ``train_accuracy``,
        ``likelihood_test_accuracy``, ``classes``, and per split ``images``,
        ``accuracy``, ``labels``, ``confusion`` (rows true, columns predicted),
        ``per_class`` counts.
    """
    import ray.data
    fs, path = resolve(features_url, s3_endpoint=s3_endpoint)
    meta = read_json(fs, join(path, "_kernelbank.json"))
    if meta is None:
        raise FileNotFoundError(f"{features_url!r} has no _kernelbank.json: run the feature "
                                "stage first")
    names = meta["feature_names"]
    ds = ray.data.read_parquet(path, filesystem=ray_filesystem(fs), file_extensions=["parquet"])
    total = None
    for batch in ds.map_batches(_train_block, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"names": names}).iter_batches(
                                    batch_format="pyarrow", batch_size=None):
        for blob in batch.column("stats").to_pylist():
            part = pickle.loads(blob)
            total = part if total is None else total + part
    if total is None:
        raise ValueError(f"the features table {features_url!r} is empty")
    if len(total.class_n) < 2:
        raise ValueError(f"the train split of the features table {features_url!r} has "
                         f"{len(total.class_n)} class(es) {sorted(total.class_n)}; a classifier "
                         "needs at least 2 (its accuracy would be meaningless)")
    model = total.solve(config.ridge)
    counts: dict[tuple, int] = {}
    scored = ds.map_batches(_score_block, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"names": names, "model": model})
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            key = (row["split"], row["label"], row["predicted"], row["likelihood"])
            counts[key] = counts.get(key, 0) + row["count"]
    report = _accuracy_report(counts, model["classes"])
    train = [report[s]["accuracy"] for s in TRAIN_SPLITS if s in report]
    return {"classes": model["classes"], "model": "StandardScaler + RidgeClassifier",
            "alpha": config.ridge,
            "test_accuracy": report.get(TEST_SPLIT, {}).get("accuracy"),
            "likelihood_test_accuracy": report.get(TEST_SPLIT, {}).get("likelihood_accuracy"),
            "train_accuracy": train[0] if train else None, "splits": report}


def run_classify(output: str, config: ClassifyConfig, *, s3_endpoint: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """The classify stage alone: reads the published ``features/``, publishes a run with
    ``classify/result.json`` (the summary)."""
    from .summary import run_alone, settings_of

    def write(stage) -> dict[str, Any]:
        summary = write_classify(stage.run.stage_url("features"), config,
                                 s3_endpoint=s3_endpoint)
        write_json(stage.fs, join(stage.path, RESULT), summary)
        return summary
    return run_alone(output, "classify", settings_of(config), write, overwrite=overwrite,
                     s3_endpoint=s3_endpoint)


def write_classify(features_url: str, config: ClassifyConfig, *,
                   s3_endpoint: str | None = None) -> dict[str, Any]:
    """Run :func:`classify_table` with timing and a progress line."""
    summary: dict[str, Any] = {}
    log(f"classify: {features_url} ridge alpha={config.ridge}")
    with timed(summary):
        summary.update(classify_table(features_url, config, s3_endpoint=s3_endpoint))
    images = sum(s["images"] for s in summary["splits"].values())
    summary["images_per_second"] = round(images / max(summary["seconds"], 1e-9), 2)
    acc = summary["test_accuracy"]
    log(f"classify: test accuracy {'n/a (no test split)' if acc is None else f'{acc:.3f}'}, "
        f"train accuracy {summary['train_accuracy']:.3f} ({summary['seconds']:.1f} s)")
    return summary
