"""The classify stage: a standardised ridge classifier trained by streaming sums.

The math is :class:`kernelbank.core.ridge.StreamingRidge` (scikit-learn's
``StandardScaler`` + ``RidgeClassifier``). A first pass (one Ray task per features
file) sums the train split into per-fold statistics (folds by a hash of the image id);
the driver merges them, chooses the ridge α of least held-out squared loss by exact
k-fold CV from those sums (unless ``--alpha`` fixes it) and solves. A second pass scores
every row, ``argmax((x - μ) D W + b)``, writing the per-image predictions
(``predictions/*.parquet``: ``id, path, label, split, predicted,
likelihood_prediction``) and returning confusion counts per split. The table may be
larger than any node; partial sums travel through Ray's object store, never as files.
The likelihood classifier's prediction (a column written by the feature stage) is
scored in the same pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ClassifyConfig
from ..core.ridge import StreamingRidge, fold_of
from ..io.layout import read_json, write_json
from ..io.storage import join, resolve
from .common import TEST_SPLIT, TRAIN_SPLITS, log, map_bounded, timed
from .features import PREDICTION

__all__ = ["run_classify", "write_classify", "classify_table", "train_sums", "RESULT"]

#: The classify stage's summary file (accuracy, confusion matrices), next to predictions/.
RESULT = "result.json"


def _matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    if not names:
        return np.zeros((table.num_rows, 0))
    return np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                            for n in names])


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(1)


def _read_features(fs, path: str, columns: list[str]) -> pa.Table:
    import pyarrow.parquet as pq
    with fs.open(path, "rb") as handle:
        present = pq.read_schema(handle).names
        handle.seek(0)
        return pq.read_table(handle, columns=[c for c in columns if c in present])


def _train_file(fs, path: str, names: list[str], folds: int) -> list[StreamingRidge]:
    """The streaming sums of the train rows of one features file, one per CV fold."""
    return train_sums(_read_features(fs, path, ["id", "split", "label"] + names), names, folds)


def train_sums(table: pa.Table, names: list[str], folds: int) -> list[StreamingRidge]:
    """The streaming sums of the train rows of a features table, one per CV fold (by a
    hash of the id: :func:`~kernelbank.core.ridge.fold_of`). The feature stage calls it
    on the rows it writes; the first pass of :func:`classify_table` on each file."""
    import pyarrow.compute as pc
    table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS)))
    x = _matrix(table, names)
    keep = _finite_rows(x)
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    fold = fold_of(table.column("id").to_pylist(), folds)
    return [StreamingRidge.from_block(x[keep & (fold == k)], list(labels[keep & (fold == k)]))
            for k in range(folds)]


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
                   s3_endpoint: str | None = None,
                   folds: list[StreamingRidge] | None = None) -> dict[str, Any]:
    """Train on the train split of a features table and score every split.

    Parameters
    ----------
    features_url : str
        The ``features/`` folder of the feature stage.
    predictions_dir : str, optional
        Protocol-free folder on ``fs_out`` for ``predictions/*.parquet``; default: next
        to the features (``features/../predictions``).
    folds : list of StreamingRidge, optional
        The per-fold sums of the train rows (``config.cv_folds`` of them), as the feature
        stage's writes returned them; without them a first pass over the table sums them.

    Returns
    -------
    dict
        ``test_accuracy`` (None without a test split), ``train_accuracy``,
        ``likelihood_test_accuracy``, ``classes``, and per split ``images``,
        ``accuracy``, ``labels``, ``confusion`` (rows true, columns predicted),
        ``per_class`` counts.
    """
    import ray
    from .table import table_files
    fs, path = resolve(features_url, s3_endpoint=s3_endpoint)
    meta = read_json(fs, join(path, "_kernelbank.json"))
    if meta is None:
        raise FileNotFoundError(f"{features_url!r} has no _kernelbank.json: run the feature "
                                "stage first")
    names = meta["feature_names"]
    files = table_files(fs, path)
    if not files:
        raise ValueError(f"the features table {features_url!r} is empty")
    if folds is None or len(folds) != config.cv_folds:
        train = ray.remote(num_cpus=1)(_train_file)
        folds = [StreamingRidge.empty(len(names)) for _ in range(config.cv_folds)]
        for parts in map_bounded(train, ((fs, p, names, config.cv_folds) for p in files)):
            folds = [a + b for a, b in zip(folds, parts)]
    total = sum(folds, StreamingRidge.empty(len(names)))
    if len(total.class_n) < 2:
        raise ValueError(f"the train split of the features table {features_url!r} has "
                         f"{len(total.class_n)} class(es) {sorted(total.class_n)}; a classifier "
                         "needs at least 2 (its accuracy would be meaningless)")
    losses = None
    if config.ridge is None:
        alpha, losses = StreamingRidge.choose_alpha(folds)
    else:
        alpha = config.ridge
    model = total.solve(alpha)
    if fs_out is None:
        fs_out, predictions_dir = fs, predictions_dir or join(path.rsplit("/", 1)[0],
                                                              "predictions")
    score = ray.remote(num_cpus=1)(_score_file)
    model_ref = ray.put(model)
    jobs = ((fs, p, names, model_ref, join(predictions_dir, p.rsplit("/", 1)[-1]))
            for p in files)
    counts: dict[tuple, int] = {}
    for part in map_bounded(score, jobs):
        for key, n in part.items():
            counts[key] = counts.get(key, 0) + n
    report = _accuracy_report(counts, model["classes"])
    train_acc = [report[s]["accuracy"] for s in TRAIN_SPLITS if s in report]
    return {"classes": model["classes"], "model": "StandardScaler + RidgeClassifier",
            "alpha": alpha, "alpha_chosen_by": "given" if losses is None else
            f"{config.cv_folds}-fold CV (held-out squared loss)",
            "cv_losses": None if losses is None else {f"{a:g}": v for a, v in losses.items()},
            "n_features": len(names),
            "test_accuracy": report.get(TEST_SPLIT, {}).get("accuracy"),
            "likelihood_test_accuracy": report.get(TEST_SPLIT, {}).get("likelihood_accuracy"),
            "train_accuracy": train_acc[0] if train_acc else None, "splits": report}


def run_classify(output: str, config: ClassifyConfig, *, s3_endpoint: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """The classify stage alone: reads the published ``features/``, publishes a run with
    ``classify/`` (``predictions/*.parquet`` and ``result.json``, the summary)."""
    from .summary import run_alone, settings_of
    return run_alone(output, "classify", settings_of(config),
                     lambda stage: write_classify(stage.run.stage_url("features"), config, stage,
                                                  s3_endpoint=s3_endpoint),
                     overwrite=overwrite, s3_endpoint=s3_endpoint)


def write_classify(features_url: str, config: ClassifyConfig, stage, *,
                   s3_endpoint: str | None = None,
                   folds: list[StreamingRidge] | None = None) -> dict[str, Any]:
    """Run :func:`classify_table` into the classify stage's folder (``predictions/``,
    ``result.json``) with timing; ``folds``: the feature writes' ridge sums."""
    summary: dict[str, Any] = {}
    log(f"classify: {features_url} ridge alpha="
        f"{'by CV' if config.ridge is None else config.ridge}")
    with timed(summary):
        summary.update(classify_table(features_url, config, fs_out=stage.fs,
                                      predictions_dir=join(stage.path, "predictions"),
                                      s3_endpoint=s3_endpoint, folds=folds))
    images = sum(s["images"] for s in summary["splits"].values())
    summary["images_per_second"] = round(images / max(summary["seconds"], 1e-9), 2)
    acc = summary["test_accuracy"]
    write_json(stage.fs, join(stage.path, RESULT), summary)
    log(f"classify: alpha {summary['alpha']:g}, test accuracy "
        f"{'n/a (no test split)' if acc is None else f'{acc:.3f}'}, "
        f"train accuracy {summary['train_accuracy']:.3f} ({summary['seconds']:.1f} s)")
    return summary
