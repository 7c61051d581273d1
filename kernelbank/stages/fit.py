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
from ..io.layout import Staging, write_json
from ..io.readers import images_from_batch, read_dataset
from ..io.storage import join
from ..io.tables import SplitParquetSink
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


def fit_dataset(read: ReadConfig, config: FitConfig):
    """The lazy Ray Dataset of fit rows (and error rows) for ``read``'s input."""
    from dataclasses import replace
    read = replace(read, min_side=max(read.min_side, config.min_side))
    ds = read_dataset(config=read)
    return ds.map_batches(KernelFitter, fn_constructor_args=(config, read.ndim),
                          batch_format="pyarrow",
                          **actor_pool_args(num_gpus=config.num_gpus,
                                            max_actors=config.max_actors,
                                            threads=config.threads_per_actor,
                                            batch_size=config.batch_size))


def write_fit(read: ReadConfig, config: FitConfig, staging: Staging) -> dict[str, Any]:
    """Run the fit stage into ``staging`` (``fit/`` and ``errors/fit-*``); summary dict."""
    fs = staging.fs
    sink = SplitParquetSink(fs, staging.dir("fit"), staging.dir("errors"), "fit")
    summary: dict[str, Any] = {}
    log(f"fit: {read.url} radius={config.radius} dilations={list(config.dilations)} "
        f"basis={config.basis.value} gpus={config.num_gpus}")
    with timed(summary):
        fit_dataset(read, config).write_datasink(sink)
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
    """The fit stage alone: ``OUTPUT/fit/`` and ``OUTPUT/errors/fit-*.parquet``.

    Returns the stage summary (also merged into ``OUTPUT/summary.json``).
    """
    from .summary import run_staged
    staging = Staging.open(output, owned=("fit", "errors/fit-"), overwrite=overwrite,
                           s3_endpoint=read.s3_endpoint)
    return run_staged(staging, "fit", lambda: write_fit(read, config, staging))
