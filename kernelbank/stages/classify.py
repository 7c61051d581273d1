"""The classify stage: a kernel head on a bounded sample, or a standardised ridge
classifier trained by streaming sums.

With ``head=ridge`` the math is :class:`kernelbank.core.ridge.StreamingRidge`
(scikit-learn's ``StandardScaler`` + ``RidgeClassifier``). A first pass (one Ray task per
features file; in ``kernelbank run``, the feature writes) sums the train split into
per-fold statistics (folds by a hash of the image id); the driver merges them, chooses the
ridge α of least held-out squared loss by exact k-fold CV from those sums (unless
``--alpha`` fixes it) and solves. A second pass scores every row,
``argmax((x - μ) D W + b)``, writing the per-image predictions (``predictions/*.parquet``:
``id, path, label, split, predicted, likelihood_prediction``) and returning confusion
counts per split. The table may be larger than any node; partial sums travel through Ray's
object store, never as files. The likelihood classifier's prediction (a column written by
the feature stage) is scored in the same pass.

With ``head=nystroem`` (:class:`~kernelbank.config.ClassifierHead`, the default) the
first pass (in ``kernelbank run``: the feature writes) instead gathers a bounded sample of
the train rows — in each class the
``sample_per_class`` rows of least :func:`~kernelbank.kernel_head.sample_keys` (a hash of the
id: a uniform sample that does not depend on how the table is split into files) — and
the driver fits an RBF kernel head on it (Nyström landmarks + standardised ridge, α by
held-out accuracy over CV folds of the sample, :func:`~kernelbank.heads.fit_kernel_head`).
The second pass scores every row with it. The fit costs the same at a thousand rows
or a million (a sample of at most ``classes · sample_per_class`` rows); the scoring is
one ``(rows, F) × (F, m)`` block of kernel values per file block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ClassifierHead, ClassifyConfig
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


def sample_of_table(table: pa.Table, names: list[str], per_class: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A features table's part of the kernel head's sample: in each class, the
    ``per_class`` finite train rows of least sample key. Returns ``(keys, ids, labels,
    x)``. The feature stage calls it on the rows it writes; the first pass of
    :func:`classify_table` on each file."""
    import pyarrow.compute as pc
    from ..kernel_head import bottom_rows, sample_keys
    table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS)))
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    keys = sample_keys(ids)
    x = _matrix(table, names)
    keep = np.flatnonzero(_finite_rows(x))
    chosen = keep[bottom_rows(keys[keep], ids[keep], labels[keep], per_class)]
    return keys[chosen], ids[chosen], labels[chosen], x[chosen]


def merge_samples(merged: tuple | None, part: tuple, per_class: int) -> tuple:
    """Two parts of the sample (:func:`sample_of_table`) as one: the bottom rows of both
    (the result does not depend on the order the parts come in)."""
    from ..kernel_head import bottom_rows
    if merged is not None:
        part = tuple(np.concatenate([a, b]) for a, b in zip(merged, part))
    chosen = bottom_rows(part[0], part[1], part[2], per_class)
    return tuple(a[chosen] for a in part)


def head_input(config: ClassifyConfig) -> tuple[str, int]:
    """What the feature writes gather from their train rows for ``config``'s head:
    ``("folds", k)``, the linear head's per-fold sums, or ``("sample", n)``, the kernel
    head's sample of ``n`` rows per class."""
    if config.head is ClassifierHead.NYSTROEM:
        return "sample", config.sample_per_class
    return "folds", config.cv_folds


def gather_head_input(table: pa.Table, names: list[str], wanted: tuple[str, int]):
    """:func:`train_sums` or :func:`sample_of_table` of ``table``, as ``wanted`` says."""
    kind, n = wanted
    return train_sums(table, names, n) if kind == "folds" else sample_of_table(table, names, n)


def merge_head_input(merged, part, wanted: tuple[str, int]):
    """Two files' :func:`gather_head_input` as one."""
    kind, n = wanted
    if kind == "folds":
        return part if merged is None else [a + b for a, b in zip(merged, part)]
    return merge_samples(merged, part, n)


def _sample_file(fs, path: str, names: list[str], per_class: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return sample_of_table(_read_features(fs, path, ["id", "split", "label"] + names), names,
                           per_class)


def _kernel_sample(fs, files: list[str], names: list[str], per_class: int) -> tuple:
    """``(keys, ids, labels, x)`` of the kernel head's sample of the whole table: the
    files' parts merged on the driver, which never holds more than two parts' rows."""
    import ray
    sample = ray.remote(num_cpus=1)(_sample_file)
    merged = None
    for part in map_bounded(sample, ((fs, p, names, per_class) for p in files)):
        merged = merge_samples(merged, part, per_class)
    if merged is None:
        return (np.zeros(0), np.zeros(0, object), np.zeros(0, object),
                np.zeros((0, len(names))))
    return merged


def _scores(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class scores of either head's model, shape (rows, classes)."""
    if model.get("head") == ClassifierHead.NYSTROEM.value:
        from ..kernel_head import kernel_head_scores
        return kernel_head_scores(model, x)
    return ((x - model["mean"]) / model["scale"]) @ model["weights"] + model["intercept"]


def _score_file(fs, path: str, names: list[str], model: dict[str, Any], out_path: str
                ) -> dict[tuple, int]:
    """Predict every row of one features file; write its predictions; confusion counts."""
    from ..io.tables import write_table
    table = _read_features(fs, path, ["id", "path", "split", "label", PREDICTION] + names)
    x = _matrix(table, names)
    keep = _finite_rows(x)
    scores = _scores(model, np.nan_to_num(x))
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
                   gathered=None) -> dict[str, Any]:
    """Train on the train split of a features table and score every split.

    Parameters
    ----------
    features_url : str
        The ``features/`` folder of the feature stage.
    predictions_dir : str, optional
        Protocol-free folder on ``fs_out`` for ``predictions/*.parquet``; default: next
        to the features (``features/../predictions``).
    gathered : optional
        What the head needs of the train rows (:func:`head_input`), as the feature
        stage's writes returned it: the linear head's per-fold sums (``config.cv_folds``
        :class:`StreamingRidge`) or the kernel head's sample (:func:`sample_of_table`);
        without it a first pass over the table gathers it.

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
    if config.head is ClassifierHead.NYSTROEM:
        model, described = _fit_kernel(fs, files, names, config, features_url, gathered)
    else:
        model, described = _fit_ridge(fs, files, names, config, features_url, gathered)
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
    return {"classes": model["classes"], **described, "n_features": len(names),
            "test_accuracy": report.get(TEST_SPLIT, {}).get("accuracy"),
            "likelihood_test_accuracy": report.get(TEST_SPLIT, {}).get("likelihood_accuracy"),
            "train_accuracy": train_acc[0] if train_acc else None, "splits": report}


def _too_few_classes(classes, features_url: str) -> None:
    if len(classes) < 2:
        raise ValueError(f"the train split of the features table {features_url!r} has "
                         f"{len(classes)} class(es) {sorted(classes)}; a classifier "
                         "needs at least 2 (its accuracy would be meaningless)")


def _fit_ridge(fs, files: list[str], names: list[str], config: ClassifyConfig,
               features_url: str, folds: list[StreamingRidge] | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The linear head from the per-fold sums of every train row (summed here unless
    the feature writes returned them)."""
    import ray
    if folds is None or len(folds) != config.cv_folds:
        train = ray.remote(num_cpus=1)(_train_file)
        folds = [StreamingRidge.empty(len(names)) for _ in range(config.cv_folds)]
        for parts in map_bounded(train, ((fs, p, names, config.cv_folds) for p in files)):
            folds = [a + b for a, b in zip(folds, parts)]
    total = sum(folds, StreamingRidge.empty(len(names)))
    _too_few_classes(total.class_n, features_url)
    losses = None
    if config.ridge is None:
        alpha, losses = StreamingRidge.choose_alpha(folds)
    else:
        alpha = config.ridge
    model = total.solve(alpha)
    return model, {"head": config.head.value, "model": "StandardScaler + RidgeClassifier",
                   "alpha": alpha, "alpha_chosen_by": "given" if losses is None else
                   f"{config.cv_folds}-fold CV (held-out squared loss)",
                   "cv_losses": None if losses is None else
                   {f"{a:g}": v for a, v in losses.items()}}


def _fit_kernel(fs, files: list[str], names: list[str], config: ClassifyConfig,
                features_url: str, sample: tuple | None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Nyström kernel head, fitted on the driver from a bounded sample of train rows
    (``sample``, or gathered by a first pass)."""
    import time
    from ..heads import fit_kernel_head
    began = time.perf_counter()
    if sample is None:
        sample = _kernel_sample(fs, files, names, config.sample_per_class)
    _, ids, labels, x = sample
    sampled = time.perf_counter()
    _too_few_classes(set(labels), features_url)
    model = fit_kernel_head(x, labels, ids, n_components=config.n_components,
                            alpha=config.ridge, cv_folds=config.cv_folds)
    model["head"] = config.head.value
    m = model["n_components"]
    return model, {
        "head": config.head.value,
        "model": f"StandardScaler + Nystroem(rbf, gamma {model['gamma']:.3g}, {m} landmarks) "
                 "+ StandardScaler + RidgeClassifier",
        "alpha": model["alpha"], "alpha_chosen_by": "given" if config.ridge is not None else
        f"{config.cv_folds}-fold CV on the sample (held-out accuracy)",
        "cv_accuracy": model["cv_accuracy"],
        "sample_rows": model["n_sample"], "sample_per_class": config.sample_per_class,
        "n_components": m, "gamma": model["gamma"],
        "sample_seconds": round(sampled - began, 3),
        "fit_seconds": round(time.perf_counter() - sampled, 3)}


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
                   s3_endpoint: str | None = None, gathered=None) -> dict[str, Any]:
    """Run :func:`classify_table` into the classify stage's folder (``predictions/``,
    ``result.json``) with timing; ``gathered``: what the feature writes gathered for the
    head (:func:`head_input`), or None."""
    summary: dict[str, Any] = {}
    log(f"classify: {features_url} {config.head.value} head, ridge alpha="
        f"{'by CV' if config.ridge is None else config.ridge}")
    with timed(summary):
        summary.update(classify_table(features_url, config, fs_out=stage.fs,
                                      predictions_dir=join(stage.path, "predictions"),
                                      s3_endpoint=s3_endpoint, gathered=gathered))
    images = sum(s["images"] for s in summary["splits"].values())
    summary["images_per_second"] = round(images / max(summary["seconds"], 1e-9), 2)
    acc = summary["test_accuracy"]
    write_json(stage.fs, join(stage.path, RESULT), summary)
    log(f"classify: alpha {summary['alpha']:g}, test accuracy "
        f"{'n/a (no test split)' if acc is None else f'{acc:.3f}'}, "
        f"train accuracy {summary['train_accuracy']:.3f} ({summary['seconds']:.1f} s)")
    return summary
