"""Gather what a report shows from a published run, reading only bounded samples.

The output is resolved through its publication pointer
(:func:`kernelbank.io.runs.open_published`): every stage is read where the run's
manifest says it lives. Nothing is ever unpickled: the bank and the class statistics are
``.npz`` archives read with ``allow_pickle=False``, the model with
``torch.load(weights_only=True)``. Everything is read through fsspec, so the output may
be a local folder or ``s3://…``.
Tables are scanned in batches and only counts plus a few rows are kept, so collecting
costs the same memory for a hundred images as for millions: the shape histogram stops
after :data:`MAX_SCANNED_ROWS` rows, the error table keeps its first ``max_error_rows``
rows and the test images are the first ``samples_per_class`` of each class.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.layout import SUMMARY, read_json
from ..io.runs import RunView, open_published
from ..io.storage import join, ray_filesystem, resolve

__all__ = ["RunData", "collect_run", "collect_view", "MAX_SCANNED_ROWS"]

#: Rows of ``fit/`` scanned for image sizes and sample images (a bound, not a sample size).
MAX_SCANNED_ROWS = 200_000


@dataclass
class RunData:
    """What a report needs from one output folder (any part may be missing).

    Attributes
    ----------
    url : str
        The output URL as given.
    run_id : str
        The published run shown.
    summary : dict or None
        The run's ``summary.json`` (``kernelbank run`` or a single stage).
    train_summary : dict or None
        ``train/summary.json`` of an end-to-end run.
    bank : KernelBank or None
        ``banks/bank.npz``.
    variance_ratio : ndarray of shape (n_kernels,) or None
        For PCA banks, each kernel's explained variance divided by the total coefficient
        variance of its class at its dilation (NaN for mean kernels).
    ndim : int
        2 for images, 3 for volumes.
    shapes : Counter
        Image shape → number of fitted images with it (first :data:`MAX_SCANNED_ROWS`).
    scanned_rows : int
        Rows of ``fit/`` the shape histogram covers.
    errors : list of dict
        The first rows of ``errors/*.parquet`` (``id, path, label, split, stage, reason``).
    n_errors : int
        All rows of ``errors/*.parquet``.
    errors_by_stage : dict of str to int
        Error rows per stage, from the error table itself.
    samples : list of dict
        Up to ``samples_per_class`` test images per class: ``label``, ``split``, ``path``,
        ``image`` (float32 array) or ``problem`` (why it could not be read).
    learned : dict or None
        End-to-end model kernels: ``kernels`` (n_dilations, n_kernels, *window) and
        ``dilations``.
    """

    url: str
    run_id: str = ""
    summary: dict | None = None
    train_summary: dict | None = None
    bank: Any = None
    variance_ratio: np.ndarray | None = None
    ndim: int = 2
    shapes: Counter = field(default_factory=Counter)
    scanned_rows: int = 0
    errors: list[dict] = field(default_factory=list)
    n_errors: int = 0
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    learned: dict | None = None
    notes: list[str] = field(default_factory=list)


def _batches(fs, files: list[str], columns: list[str]):
    """Record batches of the Parquet ``files`` (nothing when there are none)."""
    import pyarrow.dataset as pads
    files = [f for f in files if f.endswith(".parquet")]
    if not files:
        return
    dataset = pads.dataset(files, format="parquet", filesystem=ray_filesystem(fs))
    present = [c for c in columns if c in dataset.schema.names]
    yield from dataset.to_batches(columns=present, batch_size=8192)


def _read_bank(view: RunView, data: RunData, s3_endpoint: str | None) -> None:
    from ..io.bank_file import load_bank
    from ..io.storage import storage_options, url_of
    if not view.has("reduce"):
        return
    fs, banks = view.fs, view.stage_path("reduce")
    path = join(banks, "bank.npz")
    url = url_of(fs, path)
    data.bank = load_bank(url, **storage_options(url, s3_endpoint))
    data.ndim = data.bank.ndim
    if data.bank.explained_variance is not None:
        data.variance_ratio = _variance_ratio(fs, banks, data.bank, data)


def _variance_ratio(fs, banks: str, bank, data: RunData) -> np.ndarray | None:
    """Explained variance over the class's total coefficient variance, per kernel."""
    from ..io.stats_file import load_stats
    from ..stages.reduce import stats_file
    totals: dict[tuple[int, str], float] = {}
    for d in sorted(set(bank.dilations.tolist())):
        try:
            with fs.open(join(banks, stats_file(1, d)), "rb") as handle:
                stats = load_stats(handle)
        except (FileNotFoundError, ValueError) as error:
            data.notes.append(f"no explained-variance share: {error}")
            return None
        for name in stats.classes:
            totals[(d, name)] = float(np.trace(stats[name].covariance))
    ratio = np.full(len(bank), np.nan)
    for i, (d, c) in enumerate(zip(bank.dilations.tolist(), bank.class_index.tolist())):
        total = totals.get((d, bank.class_names[c])) if c >= 0 else None
        if total:
            ratio[i] = float(bank.explained_variance[i]) / total
    return ratio


def _scan_fit(view: RunView, data: RunData, samples_per_class: int, max_classes: int) -> None:
    """Shape histogram and the first test rows of each class from ``fit/``."""
    picked: dict[str, list[dict]] = {}
    fallback: dict[str, list[dict]] = {}
    files = view.stage_files("fit", ".parquet") if view.has("fit") else []
    for batch in _batches(view.fs, files, ["path", "label", "split", "shape"]):
        rows = batch.to_pydict()
        for path, label, split, shape in zip(rows["path"], rows["label"], rows["split"],
                                             rows["shape"]):
            data.shapes[tuple(shape)] += 1
            target = picked if split == "test" else fallback
            chosen = target.setdefault(label, [])
            if len(chosen) < samples_per_class:
                chosen.append({"path": path, "label": label, "split": split})
        data.scanned_rows += batch.num_rows
        if data.scanned_rows >= MAX_SCANNED_ROWS:
            data.notes.append(f"image sizes are counted over the first {data.scanned_rows} "
                              "rows of fit/")
            break
    for label in sorted(set(picked) | set(fallback))[:max_classes]:
        data.samples.extend(picked.get(label) or fallback.get(label, []))


def _load_sample(sample: dict, input_url: str | None, ndim: int,
                 s3_endpoint: str | None) -> None:
    """Decode the image of one sample row in place (``image``) or say why not (``problem``)."""
    from ..io.decode import decode_bytes
    if not input_url:
        sample["problem"] = "summary.json does not name the input"
        return
    try:
        fs, _ = resolve(input_url, s3_endpoint=s3_endpoint)
        path, _, row_id = sample["path"].partition("#")
        if row_id:
            sample["image"] = _parquet_image(fs, path, row_id, ndim)
        else:
            with fs.open(path, "rb") as handle:
                sample["image"] = decode_bytes(handle.read(), path, ndim, compiled_png=False)
    except Exception as error:  # a missing or moved input must not stop the report
        sample["problem"] = f"cannot read {sample['path']}: {type(error).__name__}: {error}"


def _parquet_image(fs, path: str, row_id: str, ndim: int) -> np.ndarray:
    """The image of row ``row_id`` (id column value, row number or content hash) of a Parquet
    file.

    Reads one row group at a time, its small ``id`` column first and the image column only
    of the group that holds the row (groups whose id statistics exclude it are skipped):
    a sample from a shard of a million-image dataset costs one row group, not the shard.
    """
    import hashlib
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from ..io.decode import decode_record
    from ..io.readers import _cell_value

    def decoded(value) -> np.ndarray:
        image, _ = decode_record(value, "", ndim, 1, compiled_png=False)   # a few images
        if image is None:
            raise ValueError("undecodable image cell")
        return image

    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        meta = parquet.metadata
        names = parquet.schema_arrow.names
        image_of = lambda g: parquet.read_row_group(g, columns=["image"]).column(0)  # noqa: E731
        if "id" in names:
            id_index = names.index("id")
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(id_index).statistics
                if stats is not None and stats.has_min_max and isinstance(stats.min, str) \
                        and not stats.min <= row_id <= stats.max:
                    continue
                ids = pc.cast(parquet.read_row_group(g, columns=["id"]).column(0), pa.string())
                hits = np.flatnonzero(pc.equal(ids, row_id).to_numpy(zero_copy_only=False))
                if len(hits):
                    return decoded(_cell_value(image_of(g)[int(hits[0])].as_py()))
            raise ValueError(f"no row {row_id!r} in {path}")
        if row_id.isdigit() and int(row_id) < meta.num_rows:     # the reader's "<file>#<row>"
            first = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if int(row_id) < first + rows:
                    return decoded(_cell_value(image_of(g)[int(row_id) - first].as_py()))
                first += rows
        for g in range(meta.num_row_groups):                     # content hash (older ids)
            for cell in image_of(g).to_pylist():
                value = _cell_value(cell)
                content = value if isinstance(value, bytes) \
                    else np.ascontiguousarray(value).tobytes()
                if hashlib.sha1(content).hexdigest()[:16] == row_id:
                    return decoded(value)
    raise ValueError(f"no row {row_id!r} in {path}")


def _scan_errors(view: RunView, data: RunData, max_error_rows: int) -> None:
    by_stage: Counter = Counter()
    for batch in _batches(view.fs, view.error_files(), ["id", "path", "label", "split", "stage",
                                                        "reason"]):
        rows = batch.to_pylist()
        by_stage.update(r.get("stage") or "" for r in rows)
        data.n_errors += len(rows)
        data.errors.extend(rows[:max(0, max_error_rows - len(data.errors))])
    data.errors_by_stage = dict(sorted(by_stage.items()))


def _read_learned(view: RunView, data: RunData) -> None:
    if not view.has("train"):
        return
    fs, path = view.fs, join(view.stage_path("train"), "model.pt")
    if not fs.exists(path):
        return
    from ..nn import load_model
    try:
        with fs.open(path, "rb") as handle:
            model = load_model(io.BytesIO(handle.read()))    # weights_only: never unpickles
    except Exception as error:          # a damaged or planted file: the rest of the report
        data.notes.append(f"the end-to-end model {path} could not be read "
                          f"({type(error).__name__}: {str(error)[:200]})")
        return
    data.learned = {"kernels": model.bank.kernels().detach().numpy(),
                    "dilations": list(model.bank.dilations)}
    data.ndim = model.config.ndim


def collect_run(url: str, *, s3_endpoint: str | None = None,
                samples_per_class: int = 2, max_classes: int = 12,
                max_error_rows: int = 50) -> RunData:
    """Read the summaries, bank, error sample and sample images of the run published at ``url``.

    Parameters
    ----------
    url : str
        Output of ``kernelbank run`` (or ``kernelbank train``, or a stage), local or fsspec
        URL; the run its ``LATEST.json`` names is read.
    s3_endpoint : str, optional
        S3-compatible endpoint (default ``AWS_ENDPOINT_URL``).
    samples_per_class : int, default=2
        Test images per class drawn with their residual and winner maps.
    max_classes : int, default=12
        Classes that get sample images.
    max_error_rows : int, default=50
        Rows of the error table kept for the report.

    Raises
    ------
    FileNotFoundError
        When ``url`` has no published run.
    """
    view = open_published(url, s3_endpoint=s3_endpoint)
    return collect_view(view, s3_endpoint=s3_endpoint, samples_per_class=samples_per_class,
                        max_classes=max_classes, max_error_rows=max_error_rows)


def collect_view(view: RunView, *, s3_endpoint: str | None = None, samples_per_class: int = 2,
                 max_classes: int = 12, max_error_rows: int = 50) -> RunData:
    """:func:`collect_run` for an already opened run."""
    data = RunData(url=view.url, run_id=view.run_id)
    data.summary = view.summary or None
    if view.has("train"):
        data.train_summary = read_json(view.fs, join(view.stage_path("train"), SUMMARY))
    if view.has("fit"):
        fit_meta = read_json(view.fs, join(view.stage_path("fit"), "_kernelbank.json")) or {}
        data.ndim = int(fit_meta.get("ndim", 2))
    _read_bank(view, data, s3_endpoint)
    _scan_fit(view, data, samples_per_class, max_classes)
    input_url = (data.summary or {}).get("input") or \
        (view.stage_summary("train").get("config", {}).get("input") if view.has("train") else None)
    for sample in data.samples:
        _load_sample(sample, input_url, data.ndim, s3_endpoint)
    _scan_errors(view, data, max_error_rows)
    _read_learned(view, data)
    return data
