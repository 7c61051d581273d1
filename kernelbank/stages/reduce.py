"""The reduce stage: exact per-class statistics from the statistics table, then banks.

Each file of ``fit/`` (train split only) becomes one partial
:class:`kernelbank.ClassStats` per entry (pyramid scale, dilation) in a Ray task, built
from the table's own-kernel coefficients and the normal equations of the chosen basis
(algebra on the window sums; no pixels); the driver adds the partials as they arrive.
Because the statistics are sums, the result is the statistics of all images at once,
whatever the files were. Banks are built per dilation (scale 1) with
:meth:`kernelbank.KernelBank.from_stats` and concatenated.

Outputs: ``banks/bank.npz`` (the bank), ``banks/bank.json`` (method, classes, counts,
dilations, kernel names) and ``banks/stats_s<scale>_d<dilation>.npz`` (the merged
statistics of every entry, :func:`kernelbank.io.stats_file.save_stats`: arrays and JSON,
never a pickle), for the likelihood classifier, the report and later analysis.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..config import ReduceConfig
from ..io.layout import read_json, write_json
from ..io.storage import join, resolve, storage_options, url_of

from .common import TRAIN_SPLITS, log, map_bounded, timed
from .fit import FIT_META
from .table import TableMeta, fit_result_of, table_files

__all__ = ["partial_stats", "merge_fit_table", "banks_from_stats", "run_reduce",
           "BANK_FILE", "stats_file", "load_fit_meta"]

BANK_FILE = "bank.npz"
#: The statistics table's columns the class statistics are built from.
STATS_COLUMNS = ["label", "split", "coef", "mse", "sums"]


def stats_file(scale: int, dilation: int) -> str:
    """File name of the merged statistics of one entry."""
    return f"stats_s{scale}_d{dilation}.npz"


def load_fit_meta(fs, fit_path: str, url: str) -> TableMeta:
    """The statistics table's metadata, with an actionable error when it is missing."""
    meta = read_json(fs, join(fit_path, FIT_META))
    if meta is None:
        raise FileNotFoundError(f"{url!r} has no {FIT_META}: run the fit stage first")
    return TableMeta.from_json(meta, url)


def partial_stats(table: pa.Table, meta: TableMeta) -> dict[tuple[int, int], dict]:
    """Per-class statistics (as :meth:`ClassStats.to_dict`) of the train rows of a table."""
    import kernelbank as kb
    table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS)))
    if table.num_rows == 0:
        return {}
    result = fit_result_of(table, meta)
    labels = table.column("label").to_pylist()
    return {entry: kb.ClassStats.from_fit(result, labels, scale=index).to_dict()
            for index, entry in enumerate(meta.scale_index)}


def _partial_of_file(fs, path: str, meta: TableMeta) -> dict[tuple[int, int], dict]:
    import pyarrow.parquet as pq
    with fs.open(path, "rb") as handle:
        return partial_stats(pq.read_table(handle, columns=STATS_COLUMNS), meta)


def merge_fit_table(fit_url: str, *, s3_endpoint: str | None = None,
                    partials_seen: list[int] | None = None) -> dict[tuple[int, int], Any]:
    """Exact per-class statistics of the train rows of a statistics table, per entry.

    Parameters
    ----------
    fit_url : str
        The ``fit/`` folder written by the fit stage.
    partials_seen : list, optional
        Gets the number of partial statistics (files with train rows) merged.

    Returns
    -------
    dict of (scale, dilation) to ClassStats
    """
    import ray
    import kernelbank as kb
    fs, path = resolve(fit_url, s3_endpoint=s3_endpoint)
    meta = load_fit_meta(fs, path, fit_url)
    files = table_files(fs, path)
    if not files:
        raise FileNotFoundError(f"{fit_url!r} holds no Parquet files: the fit stage fitted no image")
    # one task per file (each file is one write task's rows, so bounded); the partials
    # travel as plain dicts of arrays through Ray's object store
    task = ray.remote(num_cpus=1)(_partial_of_file)
    merged = {entry: kb.ClassStats.empty() for entry in meta.scale_index}
    count = 0
    for part in map_bounded(task, ((fs, p, meta) for p in files)):
        count += bool(part)
        for entry, stats in part.items():
            merged[entry] = merged[entry] + kb.ClassStats.from_dict(stats)
    if partials_seen is not None:
        partials_seen.append(count)
    return merged


def banks_from_stats(stats: dict[tuple[int, int], Any], config: ReduceConfig):
    """One bank per dilation (scale-1 entries) with ``config.method``, concatenated."""
    import kernelbank as kb
    banks = []
    entries = sorted(e for e in stats if e[0] == 1) or sorted(stats)
    for entry in entries:
        part = stats[entry]
        if not part.classes:
            raise ValueError("no training images reached the reduce stage (split 'train' or "
                             "'unsplit'); check the input layout and errors/")
        n_components = None if config.method.value == "pooled" else config.n_components
        banks.append(kb.KernelBank.from_stats(part, config.method.value,
                                              n_components=n_components, ridge=config.ridge,
                                              random_state=config.random_state))
    return banks[0] if len(banks) == 1 else kb.KernelBank.concat(banks)


def write_reduce(fit_url: str, config: ReduceConfig, staging, *,
                 s3_endpoint: str | None = None, class_stats: dict | None = None
                 ) -> dict[str, Any]:
    """Run the reduce stage into ``staging.dir("banks")``; returns the stage summary.

    ``class_stats``: what the fit stage's writes returned
    (:func:`kernelbank.stages.fit.write_fit`: ``"stats"`` and ``"partials"``); when it
    covers every entry of the table the stage only builds banks, else it merges ``fit/``
    file by file (``kernelbank reduce`` alone, a resumed fit stage).
    """
    from ..io.bank_file import save_bank
    from ..io.stats_file import save_stats
    summary: dict[str, Any] = {}
    fs_fit, fit_path = resolve(fit_url, s3_endpoint=s3_endpoint)
    entries = load_fit_meta(fs_fit, fit_path, fit_url).scale_index
    folded = bool(class_stats) and all(e in class_stats["stats"] for e in entries)
    log(f"reduce: {fit_url} method={config.method.value}"
        + (" (class statistics from the fit stage's writes)" if folded else ""))
    partials: list[int] = []
    with timed(summary):
        if folded:
            stats = {e: class_stats["stats"][e] for e in entries}
            partials.append(class_stats["partials"])
        else:
            stats = merge_fit_table(fit_url, s3_endpoint=s3_endpoint, partials_seen=partials)
        bank = banks_from_stats(stats, config)
    fs, banks = staging.fs, staging.dir("banks")
    fs.makedirs(banks, exist_ok=True)
    bank_url = url_of(fs, join(banks, BANK_FILE))
    save_bank(bank, bank_url, **storage_options(bank_url, s3_endpoint))
    for (scale, dilation), part in stats.items():
        url = url_of(fs, join(banks, stats_file(scale, dilation)))
        save_stats(part, url, **storage_options(url, s3_endpoint))
    any_stats = next(iter(stats.values()))
    counts = {c: any_stats.count(c) for c in any_stats.classes}
    info = {"method": config.method.value, "n_kernels": len(bank),
            "dilations": sorted({d for _, d in stats}),
            "entries": [list(e) for e in stats],
            "stats_files": [stats_file(*e) for e in stats],
            "class_names": list(bank.class_names),
            "kernel_names": list(bank.kernel_names), "train_counts": counts}
    write_json(fs, join(banks, "bank.json"), info)
    images = sum(counts.values())
    summary.update({"images": images, "classes": counts, "n_kernels": len(bank),
                    "partial_stats_merged": partials[0],
                    "statistics_from": "fit writes" if folded else "fit table",
                    "method": config.method.value,
                    "images_per_second": round(images / max(summary["seconds"], 1e-9), 2)})
    log(f"reduce: {images} train images, {len(counts)} classes -> {len(bank)} kernels "
        f"({summary['seconds']:.1f} s)")
    return summary


def run_reduce(output: str, config: ReduceConfig, *, overwrite: bool = False,
               s3_endpoint: str | None = None) -> dict[str, Any]:
    """The reduce stage alone: reads the published ``fit/``, publishes a run with ``banks/``."""
    from .summary import run_alone, settings_of
    return run_alone(output, "reduce", settings_of(config),
                     lambda stage: write_reduce(stage.run.stage_url("fit"), config, stage,
                                                s3_endpoint=s3_endpoint),
                     overwrite=overwrite, s3_endpoint=s3_endpoint)
