r"""The classify stage: a ridge classifier trained by streaming, mergeable sums.

The model is scikit-learn's ``StandardScaler`` + ``RidgeClassifier(alpha)`` (targets
±1 per class, intercept, population standard deviation), fitted without ever holding
the feature table: each block of the train split contributes

    n,  μ_b = mean(x),  M_b = Σ (x - μ_b)(x - μ_b)ᵀ,  and per class n_c, S_c = Σ_{y=c} x

and blocks merge exactly (Chan et al.'s pairwise update
``M = M_a + M_b + δδᵀ n_a n_b / n``, ``δ = μ_b - μ_a``, which stays accurate where
``Σxxᵀ - nμμᵀ`` would cancel). With ``D = diag(1/σ)`` the driver solves

    (D M D + α I) W = D · 2 (S_c - n_c μ)   for every class c,   b_c = (2 n_c - n) / n

and a second pass scores every row, ``argmax((x - μ) D W + b)``, writing the per-image
predictions (``predictions/*.parquet``: ``id, path, label, split, predicted,
likelihood_prediction``) and returning confusion counts per split. Both passes are one
Ray task per features file plus a sum on the driver, so the table may be larger than any
node; partial sums travel through Ray's object store, never as files. The likelihood
classifier's prediction (a column written by the feature stage) is scored in the same
pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ClassifyConfig
from ..io.layout import read_json
from ..io.storage import join, resolve, url_of
from .common import TEST_SPLIT, TRAIN_SPLITS, log, timed
from .features import PREDICTION

__all__ = ["StreamingRidge", "run_classify"]


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


def _read_features(fs, path: str, columns: list[str]) -> pa.Table:
    import pyarrow.parquet as pq
    with fs.open(path, "rb") as handle:
        present = pq.read_schema(handle).names
        handle.seek(0)
        return pq.read_table(handle, columns=[c for c in columns if c in present])


def _train_file(fs, path: str, names: list[str]) -> StreamingRidge:
    """The streaming sums of the train rows of one features file."""
    import pyarrow.compute as pc
    table = _read_features(fs, path, ["split", "label"] + names)
    table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS)))
    x = _matrix(table, names)
    keep = _finite_rows(x)
    labels = [label for label, k in zip(table.column("label").to_pylist(), keep) if k]
    return StreamingRidge.from_block(x[keep], labels)


def _score_file(fs, path: str, names: list[str], model: dict[str, Any], out_path: str
                ) -> dict[tuple, int]:
    """Predict every row of one features file; write its predictions; confusion counts."""
    from ..io.tables import write_table
    table = _read_features(fs, path, ["id", "path", "split", "label", PREDICTION] + names)
    x = _matrix(table, names)
    keep = _finite_rows(x)
    scores = ((np.nan_to_num(x) - model["mean"]) / model["scale"]) @ model["weights"] + \
        model["intercept"]
    predicted = np.asarray(model["classes"], dtype=object)[scores.argmax(1)]
    predicted[~keep] = "<non-finite>"
    likelihood = table.column(PREDICTION).to_pylist() if PREDICTION in table.column_names \
        else [None] * table.num_rows
    write_table(pa.table({"id": table.column("id"), "path": table.column("path"),
                          "label": table.column("label"), "split": table.column("split"),
                          "predicted": pa.array(list(predicted), pa.string()),
                          PREDICTION: pa.array(likelihood, pa.string())}), fs, out_path)
    counts: dict[tuple, int] = {}
    for key in zip(table.column("split").to_pylist(), table.column("label").to_pylist(),
                   predicted, [lik or "" for lik in likelihood]):
        counts[key] = counts.get(key, 0) + 1
    return counts


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
                   predictions_dir: str | None = None, fs_out=None,
                   s3_endpoint: str | None = None) -> dict[str, Any]:
    """Train on the train split of a features table and score every split.

    Parameters
    ----------
    features_url : str
        The ``features/`` folder of the feature stage.
    predictions_dir : str, optional
        Protocol-free folder on ``fs_out`` for ``predictions/*.parquet``; default: next
        to the features (``features/../predictions``).

    Returns
    -------
    dict
        ``test_accuracy`` (None without a test split), ``train_accuracy``,
        ``likelihood_test_accuracy``, ``classes``, and per split ``images``,
        ``accuracy``, ``labels``, ``confusion`` (rows true, columns predicted),
        ``per_class`` counts.
    """
    import ray
    from ..io.tables import parquet_files
    fs, path = resolve(features_url, s3_endpoint=s3_endpoint)
    meta = read_json(fs, join(path, "_kernelbank.json"))
    if meta is None:
        raise FileNotFoundError(f"{features_url!r} has no _kernelbank.json: run the feature "
                                "stage first")
    names = meta["feature_names"]
    files = parquet_files(fs, path)
    if not files:
        raise ValueError(f"the features table {features_url!r} is empty")
    train = ray.remote(num_cpus=1)(_train_file)
    total = None
    for part in ray.get([train.remote(fs, p, names) for p in files]):
        total = part if total is None else total + part
    model = total.solve(config.ridge)
    if fs_out is None:
        fs_out, predictions_dir = fs, predictions_dir or join(path.rsplit("/", 1)[0],
                                                              "predictions")
    score = ray.remote(num_cpus=1)(_score_file)
    model_ref = ray.put(model)
    jobs = [score.remote(fs, p, names, model_ref,
                         join(predictions_dir, p.rsplit("/", 1)[-1])) for p in files]
    counts: dict[tuple, int] = {}
    for part in ray.get(jobs):
        for key, n in part.items():
            counts[key] = counts.get(key, 0) + n
    report = _accuracy_report(counts, model["classes"])
    train_acc = [report[s]["accuracy"] for s in TRAIN_SPLITS if s in report]
    return {"classes": model["classes"], "model": "StandardScaler + RidgeClassifier",
            "alpha": config.ridge, "n_features": len(names),
            "test_accuracy": report.get(TEST_SPLIT, {}).get("accuracy"),
            "likelihood_test_accuracy": report.get(TEST_SPLIT, {}).get("likelihood_accuracy"),
            "train_accuracy": train_acc[0] if train_acc else None, "splits": report}


def run_classify(output: str, config: ClassifyConfig, *, overwrite: bool = True,
                 s3_endpoint: str | None = None) -> dict[str, Any]:
    """The classify stage alone: reads ``OUTPUT/features/``, writes ``OUTPUT/predictions/``.

    Its predictions depend only on the features table, so a rerun replaces them.
    """
    from ..io.layout import Staging
    from .summary import run_staged
    staging = Staging.open(output, owned=("predictions",), overwrite=overwrite,
                           s3_endpoint=s3_endpoint)
    features_url = url_of(staging.fs, join(staging.final, "features"))
    return run_staged(staging, "classify",
                      lambda: write_classify(features_url, config, staging,
                                             s3_endpoint=s3_endpoint))


def write_classify(features_url: str, config: ClassifyConfig, staging, *,
                   s3_endpoint: str | None = None) -> dict[str, Any]:
    """Run :func:`classify_table` into ``staging`` (``predictions/``) with timing."""
    summary: dict[str, Any] = {}
    log(f"classify: {features_url} ridge alpha={config.ridge}")
    with timed(summary):
        summary.update(classify_table(features_url, config, fs_out=staging.fs,
                                      predictions_dir=staging.dir("predictions"),
                                      s3_endpoint=s3_endpoint))
    images = sum(s["images"] for s in summary["splits"].values())
    summary["images_per_second"] = round(images / max(summary["seconds"], 1e-9), 2)
    acc = summary["test_accuracy"]
    log(f"classify: test accuracy {'n/a (no test split)' if acc is None else f'{acc:.3f}'}, "
        f"train accuracy {summary['train_accuracy']:.3f} ({summary['seconds']:.1f} s)")
    return summary
