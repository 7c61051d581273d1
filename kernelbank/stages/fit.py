"""The fit stage: AR coefficients of every image, on an autoscaling pool of actors.

``read_dataset`` (decode in CPU tasks) → :class:`KernelFitter` actors (basis on the
actor's device, images of equal shape fitted together with :func:`kernelbank.fit`) →
:class:`~kernelbank.io.tables.SplitParquetSink` writing ``fit/`` and ``errors/``.

One fit row per image (columns of :data:`FIT_COLUMNS`); vectors are fixed-size lists
with one block per dilation, in the order of ``dilations``:

``coef``     S·m   AR coefficients (float64)
``mse``      S     residual mean squared error
``gram``     S·m·m normal-equation sums ``G = Σ R Rᵀ``    } what :class:`kernelbank.ClassStats`
``rhs``      S·m   ``h = Σ R x``                          } needs, so the reduce stage can
``sum_sq``   S     ``Σ x²``                               } merge classes exactly without
``n_pixels`` S     valid pixels                           } the images
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import FitConfig, ReadConfig
from ..io.layout import write_json
from ..io.readers import images_from_batch, read_dataset
from ..io.storage import join
from ..io.tables import SplitParquetSink, count_rows
from .common import actor_pool_args, log, make_basis, timed

__all__ = ["KernelFitter", "FIT_COLUMNS", "FIT_META", "fit_dataset", "run_fit"]

FIT_COLUMNS = ["id", "path", "label", "split", "shape", "coef", "mse", "gram", "rhs",
               "sum_sq", "n_pixels", "stage", "reason"]
FIT_META = "_kernelbank.json"


def _fixed(values: list[np.ndarray | None], width: int, dtype) -> pa.Array:
    """Rows of ``width`` numbers as a fixed-size list column (null for ``None`` rows)."""
    missing = np.array([v is None for v in values], dtype=bool)
    flat = np.concatenate([np.zeros(width, dtype) if v is None else
                           np.asarray(v, dtype).reshape(-1) for v in values]) \
        if values else np.zeros(0, dtype)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat), width, mask=pa.array(missing) if missing.any() else None)


class KernelFitter:
    """Ray Data actor: fits the AR kernel of every decoded image of a batch.

    Parameters
    ----------
    config : FitConfig
        Basis, dilations, ridge, normalisation, device and threads.
    ndim : int
        2 for images, 3 for volumes.

    Notes
    -----
    The constructor sets ``torch.set_num_threads`` (Ray starts workers with one
    thread) and picks CUDA only when the config asked for GPUs and one is visible.
    Images are grouped by shape and each group is fitted in one call; if a group
    fails, its images are fitted one at a time so that only the bad one becomes an
    error row (stage ``fit``). Rows that arrive as error rows pass through.
    """

    def __init__(self, config: FitConfig, ndim: int = 2):
        import torch
        torch.set_num_threads(config.threads_per_actor)
        self.torch = torch
        self.config = config
        self.device = torch.device("cuda" if config.num_gpus > 0 and torch.cuda.is_available()
                                   else "cpu")
        self.basis = make_basis(config.basis, config.radius, ndim)
        self.width = self.basis.n_components
        self.images_seen = 0

    def _fit_group(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        import kernelbank as kb
        batch = self.torch.from_numpy(np.stack(images)).to(self.device)
        result = kb.fit(batch, self.basis, ridge=self.config.ridge,
                        normalize=self.config.normalize, dilations=list(self.config.dilations))
        as_np = lambda t: t.detach().cpu().to(self.torch.float64).numpy()  # noqa: E731
        return {"coef": as_np(result.coef), "mse": as_np(result.mse), "gram": as_np(result.gram),
                "rhs": as_np(result.rhs), "sum_sq": as_np(result.sum_sq),
                "n_pixels": result.n_pixels.detach().cpu().numpy().astype(np.int64)}

    def _maybe_fail(self, count: int) -> None:
        """Fault injection for tests: exit the process once after ``fault_kill_after`` images."""
        after, marker = self.config.fault_kill_after, self.config.fault_marker
        self.images_seen += count
        if after is None or self.images_seen < after:
            return
        if marker:
            if os.path.exists(marker):
                return
            with open(marker, "w") as handle:
                handle.write(f"killed after {self.images_seen} images\n")
        os._exit(17)

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = images_from_batch(batch)
        n = len(images)
        fields = {k: [None] * n for k in ("coef", "mse", "gram", "rhs", "sum_sq", "n_pixels")}
        stage = batch.column("stage").to_pylist()
        reason = batch.column("reason").to_pylist()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if image is not None and reason[i] is None:
                groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            try:
                parts = [(indices, self._fit_group([images[i] for i in indices]))]
            except ValueError:
                parts = []
                for i in indices:
                    try:
                        parts.append(([i], self._fit_group([images[i]])))
                    except ValueError as error:
                        stage[i], reason[i] = "fit", str(error).replace("image 0 ", "image ")
            for rows, out in parts:
                for j, i in enumerate(rows):
                    for key in fields:
                        fields[key][i] = out[key][j]
        self._maybe_fail(n)
        s, m = len(self.config.dilations), self.width
        return pa.table({
            "id": batch.column("id"), "path": batch.column("path"),
            "label": batch.column("label"), "split": batch.column("split"),
            "shape": batch.column("shape"),
            "coef": _fixed(fields["coef"], s * m, np.float64),
            "mse": _fixed(fields["mse"], s, np.float64),
            "gram": _fixed(fields["gram"], s * m * m, np.float64),
            "rhs": _fixed(fields["rhs"], s * m, np.float64),
            "sum_sq": _fixed(fields["sum_sq"], s, np.float64),
            "n_pixels": _fixed(fields["n_pixels"], s, np.int64),
            "stage": pa.array(stage, pa.string()), "reason": pa.array(reason, pa.string()),
        })


def fit_metadata(config: FitConfig, ndim: int) -> dict[str, Any]:
    """What a reader of ``fit/`` needs to rebuild the basis (written as ``_kernelbank.json``)."""
    basis = make_basis(config.basis, config.radius, ndim)
    return {"basis": config.basis.value, "radius": config.radius, "ndim": ndim,
            "dilations": list(config.dilations), "n_components": basis.n_components,
            "ridge": config.ridge, "normalize": config.normalize}


def _drop_done(batch: pa.Table, *, done: pa.Array) -> pa.Table:
    """Rows whose id is not in ``done`` (ids a crashed attempt already wrote)."""
    import pyarrow.compute as pc
    return batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=done)))


def fit_dataset(read: ReadConfig, config: FitConfig, *, skip_ids: set[str] | None = None):
    """The lazy Ray Dataset of fit rows (and error rows) for ``read``'s input.

    ``skip_ids``: record ids left out (already written by an interrupted attempt).
    """
    from dataclasses import replace
    read = replace(read, min_side=max(read.min_side, config.min_side))
    ds = read_dataset(config=read)
    if skip_ids:
        ds = ds.map_batches(_drop_done, batch_format="pyarrow",
                            fn_kwargs={"done": pa.array(sorted(skip_ids), pa.string())})
    return ds.map_batches(KernelFitter, fn_constructor_args=(config, read.ndim),
                          batch_format="pyarrow",
                          **actor_pool_args(num_gpus=config.num_gpus,
                                            max_actors=config.max_actors,
                                            threads=config.threads_per_actor,
                                            batch_size=config.batch_size))


def write_fit(read: ReadConfig, config: FitConfig, staging) -> dict[str, Any]:
    """Run the fit stage into ``staging`` (``fit/`` and ``errors/fit-*``); summary dict.

    ``staging`` is the :class:`~kernelbank.io.runs.StageWriter` of the run's fit stage.
    Ids in part files an interrupted attempt completed are skipped (and counted).
    """
    fs = staging.fs
    sink = SplitParquetSink(fs, staging.dir("fit"), staging.dir("errors"), staging.part_prefix)
    ok_parts, error_parts = staging.completed_parts()
    done = staging.completed_ids() if ok_parts or error_parts else set()
    summary: dict[str, Any] = {}
    log(f"fit: {read.url} radius={config.radius} dilations={list(config.dilations)} "
        f"basis={config.basis.value} gpus={config.num_gpus}"
        + (f"; resuming, {len(done)} records already done" if done else ""))
    with timed(summary):
        fit_dataset(read, config, skip_ids=done).write_datasink(sink)
    if done:
        sink.counts.update(count_rows(fs, ok_parts, error_parts))
    write_json(fs, join(staging.dir("fit"), FIT_META), fit_metadata(config, read.ndim))
    counts = sink.per_split_and_class()
    images = sum(sum(v.values()) for v in counts.values())
    errors = sink.errors_by_stage()
    total = images + sum(errors.values())
    summary.update({"images": images, "errors": errors, "records": total,
                    "counts": counts,
                    "images_per_second": round(total / max(summary["seconds"], 1e-9), 2)})
    log(f"fit: {images} images fitted, {sum(errors.values())} errors, "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} images/s)")
    return summary


def run_fit(read: ReadConfig, config: FitConfig, output: str, *, overwrite: bool = False
            ) -> dict[str, Any]:
    """The fit stage alone, published as a new run of ``output`` (``fit/``, ``errors/fit-*``).

    Returns the stage summary (also in the run's ``summary.json``).
    """
    from .summary import input_spec, run_alone, settings_of
    from .validation import check_classes

    def write(stage) -> dict[str, Any]:
        summary = write_fit(read, config, stage)
        summary["warnings"] = check_classes(summary, where=read.url, strict=False)
        for warning in summary["warnings"]:
            log(f"warning: {warning}")
        return summary
    spec = {"input": input_spec(read), "fit": settings_of(config)}
    return run_alone(output, "fit", spec, write, input_url=read.url, overwrite=overwrite,
                     s3_endpoint=read.s3_endpoint, resumable=True)
