"""The reduce stage: exact per-class statistics from the fit table, then kernel banks.

Each block of ``fit/`` (train split only) becomes one partial
:class:`kernelbank.ClassStats` per dilation in a Ray task (``map_batches`` emits it
serialised, a few KiB); the driver adds the partials as they stream in. Because the
statistics are sums, the result is the statistics of all images at once, whatever the
blocks were — no row is collected on the driver. Banks are built per dilation with
:meth:`kernelbank.KernelBank.from_stats` and concatenated.

Outputs: ``banks/bank.npz`` (the bank), ``banks/bank.json`` (method, classes, counts,
dilations, kernel names) and ``banks/stats_d<dilation>.npz`` (the merged statistics,
:func:`kernelbank.io.stats_file.save_stats` — arrays and JSON, never a pickle — for the
likelihood classifier and later analysis).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ReduceConfig
from ..io.layout import read_json, write_json
from ..io.stats_file import save_stats
from ..io.storage import join, resolve, storage_options, url_of
from ..io.tables import parquet_files
from .common import TRAIN_SPLITS, log, make_basis, timed
from .fit import FIT_META

__all__ = ["partial_stats", "merge_fit_table", "banks_from_stats", "run_reduce",
           "BANK_FILE"]

BANK_FILE = "bank.npz"
MAX_READ_TASKS = 1024
_STATS_COLUMNS = ["label", "split", "coef", "mse", "gram", "rhs", "sum_sq", "n_pixels"]


def _column(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat).reshape((table.num_rows,) + shape)     # writable copy for torch


def partial_stats(table: pa.Table, *, meta: dict[str, Any]) -> pa.Table:
    """One serialised :class:`ClassStats` per dilation for the train rows of a block."""
    import torch
    import kernelbank as kb
    splits = pc.is_in(table.column("split"), value_set=pa.array(TRAIN_SPLITS))
    table = table.filter(splits)
    out = {"dilation": [], "stats": []}
    if table.num_rows == 0:
        return _stats_table(out)
    basis = make_basis(meta["basis"], meta["radius"], meta["ndim"])
    dilations, m = meta["dilations"], basis.n_components
    s = len(dilations)
    coef = torch.from_numpy(_column(table, "coef", (s, m)))
    gram = torch.from_numpy(_column(table, "gram", (s, m, m)))
    rhs = torch.from_numpy(_column(table, "rhs", (s, m)))
    mse = torch.from_numpy(_column(table, "mse", (s,)))
    sum_sq = torch.from_numpy(_column(table, "sum_sq", (s,)))
    n_pixels = torch.from_numpy(_column(table, "n_pixels", (s,)))
    labels = table.column("label").to_pylist()
    result = kb.FitResult(coef=coef, kernels=basis.to_kernels(coef), mse=mse, gram=gram,
                          rhs=rhs, sum_sq=sum_sq, n_pixels=n_pixels, basis=basis,
                          scale_index=[(1, d) for d in dilations])
    for index, dilation in enumerate(dilations):
        stats = kb.ClassStats.from_fit(result, labels, scale=index)
        out["dilation"].append(dilation)
        out["stats"].append(pickle.dumps(stats.to_dict(), protocol=5))
    return _stats_table(out)


def _stats_table(out: dict[str, list]) -> pa.Table:
    return pa.table({"dilation": pa.array(out["dilation"], pa.int64()),
                     "stats": pa.array(out["stats"], pa.large_binary())})


def _partials_of_files(batch: dict[str, Any], *, fs, meta: dict[str, Any]) -> pa.Table:
    """Partial statistics of each fit file named in ``batch["path"]``."""
    import pyarrow.parquet as pq
    parts = []
    for path in batch["path"]:
        with fs.open(str(path), "rb") as handle:
            parts.append(partial_stats(pq.read_table(handle, columns=_STATS_COLUMNS), meta=meta))
    return pa.concat_tables(parts)


def merge_fit_table(fit_url: str, *, s3_endpoint: str | None = None,
                    partials_seen: list[int] | None = None) -> dict[int, Any]:
    """Exact per-class statistics of the train rows of a fit table, per dilation.

    Parameters
    ----------
    fit_url : str
        The ``fit/`` folder written by the fit stage.
    partials_seen : list, optional
        Gets the number of partial statistics (blocks with train rows) merged.

    Returns
    -------
    dict of int to ClassStats
        Merged statistics for each dilation.
    """
    import ray.data
    import kernelbank as kb
    fs, path = resolve(fit_url, s3_endpoint=s3_endpoint)
    meta = read_json(fs, join(path, FIT_META))
    if meta is None:
        raise FileNotFoundError(f"{fit_url!r} has no {FIT_META}: run the fit stage first")
    files = parquet_files(fs, path)
    if not files:
        raise FileNotFoundError(f"{fit_url!r} holds no Parquet files: the fit stage fitted no image")
    # one partial per file (each file is one write task's rows, so bounded): Ray's
    # read_parquet would pack small files into one block and hide the merge
    ds = ray.data.from_items([{"path": p} for p in files],
                             override_num_blocks=min(len(files), MAX_READ_TASKS))
    partials = ds.map_batches(_partials_of_files, batch_format="numpy", batch_size=1,
                              fn_kwargs={"fs": fs, "meta": meta})
    merged: dict[int, Any] = {d: kb.ClassStats.empty() for d in meta["dilations"]}
    count = 0
    for batch in partials.iter_batches(batch_format="pyarrow", batch_size=None):
        for dilation, blob in zip(batch.column("dilation").to_pylist(),
                                  batch.column("stats").to_pylist()):
            merged[dilation] = merged[dilation] + kb.ClassStats.from_dict(pickle.loads(blob))
            count += 1
    if partials_seen is not None:
        partials_seen.append(count // max(1, len(meta["dilations"])))
    return merged


def banks_from_stats(stats: dict[int, Any], config: ReduceConfig):
    """One bank per dilation with ``config.method``, concatenated into one bank."""
    import kernelbank as kb
    banks = []
    for dilation, part in sorted(stats.items()):
        if not part.classes:
            raise ValueError("no training images reached the reduce stage (split 'train' or "
                             "'unsplit'); check the input layout and errors/")
        n_components = None if config.method.value == "pooled" else config.n_components
        banks.append(kb.KernelBank.from_stats(part, config.method.value,
                                              n_components=n_components, ridge=config.ridge,
                                              random_state=config.random_state))
    return banks[0] if len(banks) == 1 else kb.KernelBank.concat(banks)


def write_reduce(fit_url: str, config: ReduceConfig, staging, *,
                 s3_endpoint: str | None = None) -> dict[str, Any]:
    """Run the reduce stage into ``staging.dir("banks")``; returns the stage summary."""
    summary: dict[str, Any] = {}
    log(f"reduce: {fit_url} method={config.method.value}")
    partials: list[int] = []
    with timed(summary):
        stats = merge_fit_table(fit_url, s3_endpoint=s3_endpoint, partials_seen=partials)
        bank = banks_from_stats(stats, config)
    fs, banks = staging.fs, staging.dir("banks")
    fs.makedirs(banks, exist_ok=True)
    bank_url = url_of(fs, join(banks, BANK_FILE))
    bank.save(bank_url, **storage_options(bank_url, s3_endpoint))
    for dilation, part in stats.items():
        save_stats(part, fs, join(banks, f"stats_d{dilation}.npz"))
    any_stats = next(iter(stats.values()))
    counts = {c: any_stats.count(c) for c in any_stats.classes}
    info = {"method": config.method.value, "n_kernels": len(bank),
            "dilations": sorted(stats), "class_names": list(bank.class_names),
            "kernel_names": list(bank.kernel_names), "train_counts": counts}
    write_json(fs, join(banks, "bank.json"), info)
    images = sum(counts.values())
    summary.update({"images": images, "classes": counts, "n_kernels": len(bank),
                    "partial_stats_merged": partials[0],
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
