"""The fit stage: the only stage that reads pixels. One pass per image, one table row.

Ray tasks, each reading and decoding a block of records and passing it to the
:class:`StatisticsFitter` its worker process keeps (images of equal shape together,
:func:`kernelbank.core.fit.image_statistics` on the worker's device), which writes
through a :class:`~kernelbank.io.tables.PartWriter` the part files of the rows it
computed: ``fit/`` (one row per image), ``errors/`` (one row per bad record) and, when a
training stage will follow, ``fit/_pixels/`` (the decoded integer pixels, so nothing
reads the images again). The tasks return only counts and the partial class statistics
of their fits (merged on the driver for the reduce stage).

The statistics table
--------------------
``fit/*.parquet`` has one row per image; vectors are fixed-size lists with one block per
entry of ``scale_index`` (every (pyramid scale, dilation) pair, scale-major), written in
``fit/_kernelbank.json`` together with the basis, radius, ridge and the names of the
descriptors:

``id, path, label, split``  the record (``shape``: its pixel shape)
``coef``        S·m   own-kernel coefficients in the chosen basis (float64)
``mse``         S     residual mean squared error of the own kernel (float64)
``sums``        S·L   window sums of the full window (float64): for each entry the upper
                      triangle of ``cross`` (row-major, t(t+1)/2 values), ``first`` (t) and
                      ``n_pixels`` (1); t = (2r+1)^d taps incl. the centre — see
                      :mod:`kernelbank.core.sums`
``cell_sums``   S·g^d·L  the same per grid cell (only with ``grid``)
``descriptors`` S·F   residual descriptors of the own kernel (float32; only with
                      ``descriptors``)

With channels (``--channels rgb|all``: ``C > 1`` channels per image, a vector AR model
with a :class:`~kernelbank.core.basis.Basis` of ``C > 1``, see
:func:`kernelbank.core.fit.image_statistics`) the same columns hold, per entry:

``coef``        S·C·m   own vector-kernel coefficients, output-channel-major (m per
                        output channel)
``mse``         S·C     each channel's residual mean square
``covariance``  S·C(C+1)/2  the C×C residual covariance, upper triangle row-major (only
                        with channels)
``sums``        S·L     window sums with channels: t = C (2r+1)^d taps, channel-major
``cell_sums``   S·g^d·L the same per grid cell
``descriptors`` S·C·F   each channel's residual descriptors, channel-major, named
                        ``c<c>_<name>``

and ``_kernelbank.json`` records ``channels`` (``luminance``/``rgb``/``all``) and
``n_channels`` (C), which later stages read from there, never from their own options.

Every later stage is algebra on this table: banks of any method from the exact class
sums (reduce), the features of any bank whose window fits in radius ``r`` at a fitted
dilation, the likelihood classifier, and any classifier on the features. Sums are kept
in float64 because the solve of a nearly predictable image needs their digits (a float32
copy of ``cross`` changes fitted coefficients at the 1e-4 level on smooth textures);
descriptors are float32 (they are histogram shares and moments, compared to classes,
never solved with). At the default settings on 64×64 images a row is about 2.4× the image's
own bytes (see ``bytes_per_image`` in ``summary.json``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .. import faults
from ..config import Channels, FitConfig, ReadConfig
from ..io.layout import write_json
from ..io.manifest import open_manifest, save_listing
from ..io.readers import (images_from_batch, probe_channels, read_arguments, read_blocks,
                          read_saved_block)
from ..io.storage import join, redact
from ..io.tables import ACCOUNTING_COLUMNS, PartWriter, count_rows, part_name
from .common import (actor_cpus, cluster_cpus, log, make_basis,
                     map_bounded, release_memory, timed, warn_without_gpu)
from .table import (TableMeta, flat_covariance, flat_sums, list_column, packed_column,
                    table_files)

__all__ = ["StatisticsFitter", "FIT_META", "TABLE_VERSION", "fit_blocks", "fit_metadata",
           "run_fit", "warm_workers", "write_fit"]

FIT_META = "_kernelbank.json"
#: The input's listing, written once per run by the fit stage (in ``fit/``).
MANIFEST_FILE = "_inputs.parquet"
#: Folder of the decoded pixels in ``fit/`` (``cache_pixels``), part files named as the table's.
PIXEL_CACHE = "_pixels"
#: 3: the window sums are packed float64 bytes (:data:`PACKED_COLUMNS`); 2: float lists.
TABLE_VERSION = 3
#: Columns stored as one fixed-size binary value of little-endian float64 per row.
PACKED_COLUMNS = ("sums", "cell_sums")
#: Times a fit task lost with its worker or node runs again (spot preemptions; a
#: worker that crashes on the same block every time fails the stage after this many).
TASK_RETRIES = 20
#: Errors that fail a whole group on a device (a CUDA OOM is a RuntimeError) but may not
#: fail each image of it alone: the group is split and retried before rows become errors.
ISOLATED_ERRORS = (ValueError, RuntimeError, MemoryError)


class StatisticsFitter:
    """The statistics row of every decoded image of a batch (what a fit task runs).

    Parameters
    ----------
    config : FitConfig
    ndim : int
        2 for images, 3 for volumes.
    channels : int, default=1
        Channels of every image (``(C, *spatial)`` when > 1: a vector AR model).
    writer : PartWriter, optional
        When given, each batch's rows are written here (``fit/``, ``errors/`` and the
        pixel cache, one part file named by the batch's ids) and a small dict is returned
        instead of the rows: the write's ``counts``, the partial class statistics of its
        train rows (``stats``: per entry ``(scale, dilation)`` a
        :meth:`ClassStats.to_dict`, from the fits in memory), which the driver merges, the
        ``rows`` and the ``seconds`` of each step — the rows never cross the object store,
        and the reduce stage reads no table.
    meta : dict, optional
        The table's metadata (:func:`fit_metadata`), for the partial statistics.

    Notes
    -----
    Images are grouped by shape and each group is computed in chunks of at most
    ``config.batch_pixels`` values (pixels × channels) on the worker's device (CUDA only
    when the config asks for GPUs and one is visible; host batches are pinned and copied
    without blocking). A group that fails — a bad image, a singular
    solve, a CUDA or host out-of-memory — is split in halves and retried, so only images
    that fail alone become error rows (stage ``fit``). Rows that arrive as error rows
    (stage ``decode``) pass through.
    """

    def __init__(self, config: FitConfig, ndim: int = 2, channels: int = 1,
                 writer: PartWriter | None = None, meta: dict | None = None):
        import torch
        # the worker's share of CPUs for torch and for Arrow's decoding too: Arrow's pool
        # is sized by the machine's cores, and on one CPU its threads tripled the CPU
        # time of a Parquet read
        torch.set_num_threads(config.threads_per_actor)
        pa.set_cpu_count(config.threads_per_actor)
        self.torch = torch
        self.config = config
        self.device = torch.device("cuda" if config.num_gpus > 0 and torch.cuda.is_available()
                                   else "cpu")
        self.basis = make_basis(config.basis, config.radius, ndim, channels)
        self.ndim, self.channels = ndim, channels
        self.images_seen = 0
        self.writer = writer
        self.meta = None if meta is None else TableMeta.from_json(meta)

    # ------------------------------------------------------------------ computing
    def _to_device(self, images: list[np.ndarray]):
        batch = self.torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def _statistics(self, images: list[np.ndarray], ids: list[str]):
        """The one pass on one computation's images: ``(columns, fit)``, the table's
        columns and the :class:`~kernelbank.core.fit.FitResult` they came from."""
        from ..core.fit import image_statistics      # the one pass kb.image_statistics runs
        faults.group_fault(ids)
        config = self.config
        stats = image_statistics(self._to_device(images), self.basis,
                                 dilations=config.dilations, scales=config.scales,
                                 ridge=config.ridge, normalize=config.normalize,
                                 descriptors=config.descriptor_spec(self.ndim) or False,
                                 grid=config.grid)
        n = len(images)
        out = {"coef": stats.coef.reshape(n, -1).cpu().numpy(),
               "mse": stats.mse.reshape(n, -1).cpu().numpy(), "sums": flat_sums(stats.sums)}
        if self.channels > 1:
            out["covariance"] = flat_covariance(stats.covariance)
        if stats.cell_sums is not None:
            out["cell_sums"] = flat_sums(stats.cell_sums)
        if stats.descriptors is not None:
            out["descriptors"] = stats.descriptors.reshape(n, -1).cpu().numpy()
        return out, stats

    def _isolated(self, images: list[np.ndarray], rows: list[int], ids: list[str]):
        """Yield ``(rows, (columns, fit))`` for groups that worked and ``(row, reason)``
        for images that fail alone, splitting failed groups in halves."""
        try:
            yield rows, self._statistics(images, [ids[i] for i in rows])
        except ISOLATED_ERRORS as error:
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            if len(rows) == 1:
                message = str(error).replace("image 0 ", "image ").split("\n")[0]
                yield rows[0], f"{type(error).__name__}: {message}"
                return
            half = len(rows) // 2
            yield from self._isolated(images[:half], rows[:half], ids)
            yield from self._isolated(images[half:], rows[half:], ids)

    def _add_class_stats(self, partials: dict, fit, rows: list[int], splits: list[str],
                         labels: list[str]) -> None:
        """Add the class statistics of the train rows among ``rows`` (fitted as ``fit``;
        ``splits`` and ``labels`` are the batch's) to ``partials`` (per entry): from the
        fit in memory, not from the written sums."""
        import kernelbank as kb
        from .common import TRAIN_SPLITS
        train = [j for j, row in enumerate(rows) if splits[row] in TRAIN_SPLITS]
        if not train:
            return
        part = _take(fit, train)
        for index, entry in enumerate(fit.scale_index):
            stats = kb.ClassStats.from_fit(part, [labels[rows[j]] for j in train], scale=index)
            entry = tuple(entry)
            partials[entry] = partials[entry] + stats if entry in partials else stats

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

    def _chunks(self, groups: dict[tuple[int, ...], list[int]], images: list[np.ndarray]
                ) -> Iterator[list[int]]:
        """Each shape group's rows in runs of at most ``batch_pixels`` pixels (one image
        at least): one computation each."""
        for rows in groups.values():
            per_image = images[rows[0]].size
            step = max(1, self.config.batch_pixels // max(per_image, 1))
            for start in range(0, len(rows), step):
                yield rows[start:start + step]

    # ------------------------------------------------------------------ the batch
    def __call__(self, batch: pa.Table) -> pa.Table | dict[str, Any]:
        """The batch's statistics rows; with a writer, written as one part file,
        :data:`ROW_GROUP_ROWS` rows computed and written at a time (memory holds one
        slice's columns, not the block's), and the small dict of the class docstring."""
        if self.writer is None:
            return self._rows(batch, None)
        start, partials, computing = time.perf_counter(), {}, 0.0

        def slices() -> Iterator[pa.Table]:
            nonlocal computing
            for at in range(0, batch.num_rows, ROW_GROUP_ROWS):
                began = time.perf_counter()
                rows = self._rows(batch.slice(at, ROW_GROUP_ROWS), partials)
                computing += time.perf_counter() - began
                yield rows
        name = part_name(self.writer.prefix, batch.column("id").to_pylist())
        counts = self.writer.write(slices(), name)
        stats = {entry: part.to_dict() for entry, part in partials.items()}
        release_memory()
        return {"counts": dict(counts), "stats": stats, "rows": batch.num_rows,
                "seconds": {"compute": computing,
                            "write": time.perf_counter() - start - computing}}

    def _rows(self, batch: pa.Table, partials: dict | None) -> pa.Table:
        """The statistics rows of ``batch`` (the class statistics of its train rows added
        to ``partials`` when given)."""
        images = images_from_batch(batch)
        stage = batch.column("stage").to_pylist()
        reason = batch.column("reason").to_pylist()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if image is not None and reason[i] is None:
                groups.setdefault(image.shape, []).append(i)
        columns: dict[str, np.ndarray] = {}
        keep_stats = partials is not None and self.meta is not None
        if keep_stats:
            splits, labels = batch.column("split").to_pylist(), batch.column("label").to_pylist()
        done = np.zeros(len(images), dtype=bool)
        ids = batch.column("id").to_pylist()
        for rows in self._chunks(groups, images):
            for where, result in self._isolated([images[i] for i in rows], rows, ids):
                if isinstance(result, str):
                    stage[where], reason[where] = "fit", result
                    continue
                result, fit = result
                if keep_stats:
                    self._add_class_stats(partials, fit, where, splits, labels)
                for key, values in result.items():
                    if key not in columns:
                        columns[key] = np.zeros((len(images), values.shape[1]), values.dtype)
                    columns[key][where] = values
                done[where] = True
        self._maybe_fail(len(images))
        keep = ["id", "path", "label", "split", "shape"] + \
            [c for c in ACCOUNTING_COLUMNS if c in batch.column_names]
        if self.config.cache_pixels:
            keep += [c for c in ("dtype", "pixels") if c in batch.column_names]
        out = {name: batch.column(name) for name in keep}
        for key, values in columns.items():
            values[~done] = np.nan
            out[key] = packed_column(values) if key in PACKED_COLUMNS else \
                list_column(values, np.float32 if key == "descriptors" else np.float64)
        out["stage"] = pa.array(stage, pa.string())
        out["reason"] = pa.array(reason, pa.string())
        return pa.table(out)


#: The fields of a fit the class statistics read (:meth:`ClassStats.from_fit`).
_STATS_FIELDS = ("coef", "mse", "gram", "rhs", "sum_sq", "n_pixels", "covariance")


def _take(fit, rows: list[int]):
    """The images ``rows`` of a :class:`~kernelbank.core.fit.FitResult`, with the fields
    the class statistics read (the kernels, descriptors and sums are left out)."""
    import dataclasses
    import torch
    index = torch.as_tensor(rows)
    picked = {name: getattr(fit, name)[index] for name in _STATS_FIELDS
              if isinstance(getattr(fit, name), torch.Tensor)}
    return dataclasses.replace(fit, **picked, kernels=None, descriptors=None, mae=None,
                               sums=None, cell_sums=None)


def fit_metadata(config: FitConfig, ndim: int, input_url: str = "",
                 channels: Channels = Channels.LUMINANCE, n_channels: int = 1
                 ) -> dict[str, Any]:
    """What a reader of ``fit/`` needs (written as ``fit/_kernelbank.json``).

    ``channels`` is the read mode and ``n_channels`` the channel count C of every row;
    ``n_components`` and ``n_taps`` are per output channel and per channel's window.
    """
    basis = make_basis(config.basis, config.radius, ndim, n_channels)
    names: list[str] = []
    if config.descriptors:
        from ..core.residual import residual_descriptor_names
        names = residual_descriptor_names(config.descriptor_spec(ndim), ndim, n_channels)
    from ..core.sums_rows import sums_row_length
    n_taps = (2 * config.radius + 1) ** ndim
    return {"version": TABLE_VERSION, "basis": config.basis.value, "radius": config.radius,
            "ndim": ndim, "dilations": list(config.dilations), "scales": list(config.scales),
            "scale_index": [list(e) for e in config.scale_index],
            "n_components": basis.n_components, "n_taps": n_taps,
            "sums_width": sums_row_length(config.radius, ndim, channels=n_channels),
            "grid": config.grid, "ridge": config.ridge, "normalize": config.normalize,
            "descriptor_names": names, "channels": Channels(channels).value,
            "n_channels": n_channels, "input": redact(input_url)}


#: Rows per row group of a ``fit/`` part: its writer buffers one, and a feature task
#: reads and computes one at a time (a 4,096-row part in one group made the workers of
#: a million-image run a third larger than those of a small run).
ROW_GROUP_ROWS = 1024

#: The fitter each worker process keeps for the fit it serves (one at a time, by key):
#: built on the process's first batch, so torch, the basis and the compiled engines load
#: once per process, and the same warm processes then run the features stage's tasks.
_FITTERS: dict[str, StatisticsFitter] = {}


def _fitter(key: str, args: tuple) -> StatisticsFitter:
    """``StatisticsFitter(*args)``, built once per worker process for ``key`` (one fit
    stage attempt)."""
    fitter = _FITTERS.get(key)
    if fitter is None:
        _FITTERS.clear()
        fitter = _FITTERS[key] = StatisticsFitter(*args)
    return fitter


def _warm(config: FitConfig) -> int:
    """Load what a fit task needs (torch, the basis, the compiled engines' caches) in this
    worker process, by fitting two small noise images with the stage's settings."""
    side = 2 * config.radius * max(config.dilations) * max(config.scales) + 8
    images = np.random.default_rng(0).integers(0, 256, (2, side, side), dtype=np.uint8)
    StatisticsFitter(config)._statistics(list(images), ["warm-0", "warm-1"])
    return os.getpid()


def warm_workers(config: FitConfig) -> None:
    """Start loading the fit stage's worker processes now, one per CPU of the cluster, and
    return at once.

    A worker's first fit batch pays seconds of one-time loading (the torch import, the
    first call of each compiled engine); started while the driver still lists the input
    and plans the stage, that loading overlaps with the driver's work instead of
    following it. Ray reuses the same processes for the stage's tasks (and for the
    features stage's). A warm task that fails changes nothing: the stage loads the same
    modules again and reports its own errors.
    """
    import ray
    if config.num_gpus > 0:
        return                      # GPU workers start where the GPUs are, not here
    cpus = actor_cpus(config.threads_per_actor)
    count = int(cluster_cpus()[0] // cpus)
    task = ray.remote(num_cpus=cpus, max_retries=0)(_warm)
    for _ in range(count):
        task.remote(config)


@dataclass(frozen=True)
class FitJob:
    """What every task of one fit stage attempt needs (put in the object store once).

    ``manifest``: the saved listing; ``skip_ids``: records already done (a resumed run);
    ``read_kwargs``: :func:`~kernelbank.io.readers.read_arguments`; ``key`` names the
    attempt (the worker's :class:`StatisticsFitter`) and ``fitter_args`` build it.
    """

    manifest: Any
    skip_ids: pa.Array | None
    read_kwargs: dict
    key: str
    fitter_args: tuple


def _read(job: FitJob, start: int, stop: int) -> pa.Table:
    return read_saved_block(job.manifest, start, stop, skip_ids=job.skip_ids,
                            **job.read_kwargs)


def _fit(job: FitJob, rows: pa.Table, read_seconds: float = 0.0) -> dict[str, Any]:
    import ray
    result = _fitter(job.key, job.fitter_args)(rows)
    result["seconds"]["read"] = read_seconds
    result["node"] = ray.get_runtime_context().get_node_id()
    return result


def _read_and_fit(job: FitJob, start: int, stop: int) -> dict[str, Any]:
    """One CPU task: read and decode rows ``[start, stop)``, fit and write them."""
    begin = time.perf_counter()
    rows = _read(job, start, stop)
    return _fit(job, rows, time.perf_counter() - begin)


def fit_blocks(read: ReadConfig, config: FitConfig, manifest, skip_ids,
               writer: PartWriter) -> Iterator[dict[str, Any]]:
    """Run the fit of ``manifest``'s records (a saved listing) as Ray tasks; yield each
    block's result (:class:`StatisticsFitter`'s dict, plus ``node``) in order.

    Plain tasks, not a Ray Data pipeline: each task reads, decodes, fits and writes one
    read block in the worker process that keeps the stage's fitter (and, after the
    stage, serves the features stage's tasks), and returns a small dict. A Ray Data
    execution cost a small run seconds (its planning, its statistics and autoscaling
    actors, ``ray.data`` imported in every process) and a million-image run half a CPU
    on the driver's scheduling loop. At most twice as many tasks as the cluster can run
    are in flight, counted again as nodes join (a joining node gets the waiting tasks).
    A task lost with its node runs again (up to :data:`TASK_RETRIES` times; its part
    file is named by its rows, so it is written once). With GPUs each block is read by a
    CPU task and fitted by a GPU task (decoding on a GPU worker's one CPU would starve
    its GPU).
    """
    import uuid
    import ray
    read = replace(read, min_side=max(read.min_side, config.min_side))
    meta = fit_metadata(config, read.ndim, read.url, read.channels, run_channels(read))
    job = ray.put(FitJob(manifest, skip_ids, read_arguments(manifest, read), uuid.uuid4().hex,
                         (config, read.ndim, run_channels(read), writer, meta)))
    if config.num_gpus > 0:
        warn_without_gpu(config.num_gpus)
        reader = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_read)
        fitter = ray.remote(num_gpus=1, num_cpus=1, max_retries=TASK_RETRIES)(_fit)

        def submit(start: int, stop: int):
            return fitter.remote(job, reader.remote(job, start, stop))

        def in_flight() -> int:
            return 2 * config.num_gpus
    else:
        cpus = actor_cpus(config.threads_per_actor)
        task = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)(_read_and_fit)

        def submit(start: int, stop: int):
            return task.remote(job, start, stop)

        def in_flight() -> int:
            slots = max(1, int(cluster_cpus()[0] // cpus))
            return 2 * min(slots, config.max_actors or slots)
    yield from map_bounded(submit, read_blocks(manifest, read), max_in_flight=in_flight)


def run_channels(read: ReadConfig) -> int:
    """Channels of every image of the run: 1 (luminance), 3 (rgb) or the probed count."""
    if read.channels is Channels.LUMINANCE:
        return 1
    if read.channels is Channels.RGB:
        return 3
    if read.n_channels is None:
        raise ValueError("channels='all' needs the run's channel count (n_channels): probe the "
                         "input first (kernelbank.io.readers.probe_channels)")
    return read.n_channels


def _with_channel_count(read: ReadConfig, manifest) -> ReadConfig:
    """``read`` with ``n_channels`` set for ``channels='all'`` (from the first record)."""
    if read.channels is not Channels.ALL or read.n_channels is not None:
        return read
    from dataclasses import replace
    count = probe_channels(manifest, read)
    log(f"fit: --channels all: {count} channel(s), from the first decodable record; "
        "records with another count become error rows")
    return replace(read, n_channels=count)


def _inputs(read: ReadConfig, fs, path: str):
    """The input's saved manifest: the one an interrupted attempt of this run saved, else
    a new listing (streamed to the file; the driver keeps only its handle)."""
    if fs.exists(path):
        return open_manifest(fs, path)
    return save_listing(read, fs, path)


def pixel_cache_url(fit_url: str) -> str:
    """Where the fit stage keeps the decoded pixels (with ``cache_pixels``)."""
    return fit_url.rstrip("/") + "/" + PIXEL_CACHE


def write_fit(read: ReadConfig, config: FitConfig, staging, *,
              class_stats: dict | None = None) -> dict[str, Any]:
    """Run the fit stage into ``staging`` (``fit/``, ``errors/fit-*``); summary dict.

    ``staging`` is the :class:`~kernelbank.io.runs.StageWriter` of the run's fit stage.
    The input is listed once; its manifest is kept in ``fit/_inputs.parquet`` for later
    stages (pixel features, training) and resumes. Records in part files an interrupted
    attempt completed are left out of the manifest (and counted): nothing is read twice.

    ``class_stats``, when given, receives the merged class statistics of the train rows
    (``"stats"``: ``{(scale, dilation): ClassStats}``, from the actors' writes, and
    ``"partials"``: how many were merged) when this attempt fitted every row — what the
    reduce stage would compute from ``fit/``; it stays empty for a resumed stage.
    """
    fs = staging.fs
    summary: dict[str, Any] = {}
    with timed(summary):
        with timed(summary, "listing_seconds"):
            manifest = _inputs(read, fs, join(staging.dir("fit"), MANIFEST_FILE))
        read = _with_channel_count(read, manifest)
        ok_parts, error_parts = staging.completed_parts()
        done = staging.completed_ids() if ok_parts or error_parts else set()
        skip = pa.array(sorted(done), pa.string()) if done else None
        log(f"fit: {redact(read.url)} basis={config.basis.value} radius={config.radius} "
            f"dilations={list(config.dilations)} scales={list(config.scales)} "
            f"descriptors={config.descriptors} channels={read.channels.value}"
            f"{'' if read.channels is Channels.LUMINANCE else f' ({run_channels(read)})'} "
            f"gpus={config.num_gpus}"
            + (f"; resuming, {len(done)} records already done" if done else ""))
        writer = PartWriter(fs, staging.dir("fit"), staging.dir("errors"), staging.part_prefix,
                            cache_dir=join(staging.dir("fit"), PIXEL_CACHE)
                            if config.cache_pixels else None, row_group_rows=ROW_GROUP_ROWS)
        stats: dict | None = None if done else {}
        if manifest.rows > len(done):
            stats = _run_writes(fit_blocks(read, config, manifest, skip, writer), writer,
                                manifest.rows - len(done), stats, summary)
        if class_stats is not None and stats:
            class_stats.update(stats)           # "stats" and "partials"
    if done:
        writer.counts.update(count_rows(fs, ok_parts, error_parts))
    write_json(fs, join(staging.dir("fit"), FIT_META),
               fit_metadata(config, read.ndim, read.url, read.channels, run_channels(read)))
    counts = writer.per_split_and_class()
    images = sum(sum(v.values()) for v in counts.values())
    errors = writer.errors_by_stage()
    total = images + sum(errors.values())
    table_bytes = sum(fs.size(p) for p in table_files(fs, staging.dir("fit")))
    input_bytes = manifest.input_bytes
    read_totals = writer.read_totals()
    summary.update({"channels": read.channels.value, "n_channels": run_channels(read),
                    "images": images, "errors": errors, "records": total, "counts": counts,
                    "listed": manifest.rows, "input_bytes": input_bytes,
                    "bytes_read": read_totals["bytes_read"],
                    "read_retries": read_totals["read_retries"],
                    "bytes_per_image": round(table_bytes / max(images, 1), 1),
                    "images_per_second": round(total / max(summary["seconds"], 1e-9), 2)})
    log(f"fit: {images} images fitted, {sum(errors.values())} errors, "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} images/s), "
        f"{summary['bytes_per_image']:.0f} table bytes per image, "
        f"{read_totals['bytes_read'] / max(input_bytes, 1):.3f}x the input's bytes read")
    return summary


def _run_writes(results: Iterator[dict[str, Any]], writer: PartWriter, total: int,
                stats: dict | None, summary: dict[str, Any]) -> dict | None:
    """Collect the fit tasks' results (:func:`fit_blocks`; the tasks wrote their parts).

    Each result brings the counts of its part files (added to ``writer``) and its
    partial class statistics, merged per entry in arrival order (the sums are exact,
    so the order changes nothing beyond rounding): ``{"stats": merged, "partials": n}``.
    ``stats`` None (a resumed stage, whose earlier parts' statistics are not here)
    merges nothing and returns None. ``summary`` receives where the tasks' time went
    (``task_seconds``: read, compute, write) and how many ``nodes`` ran them.
    """
    import kernelbank as kb
    from .progress import Progress, stall_guard
    merged: dict = {}
    partials = 0
    seconds: dict[str, float] = {}
    nodes: set = set()
    with Progress("fit", total) as progress, stall_guard("fit") as watchdog:
        for result in results:
            writer.add(result["counts"])
            errors = sum(n for k, n in result["counts"].items() if k[0] == "error")
            progress.update(result["rows"], errors)
            watchdog.observe(progress.done)
            nodes.add(result["node"])
            for step, value in result["seconds"].items():
                seconds[step] = seconds.get(step, 0.0) + value
            if stats is None:
                continue
            partials += bool(result["stats"])
            for entry, part in result["stats"].items():
                part = kb.ClassStats.from_dict(part)
                merged[entry] = merged[entry] + part if entry in merged else part
    summary.update({"task_seconds": {k: round(v, 2) for k, v in seconds.items()},
                    "nodes": len(nodes)})
    return None if stats is None or not merged else {"stats": merged, "partials": partials}


def run_fit(read: ReadConfig, config: FitConfig, output: str, *, overwrite: bool = False
            ) -> dict[str, Any]:
    """The fit stage alone, published as a new run of ``output`` (``fit/``, ``errors/fit-*``).

    Returns the stage summary (also in the run's ``summary.json``).
    """
    from ..io.manifest import check_input
    from .summary import input_spec, run_alone, settings_of
    from .validation import check_classes
    check_input(read)               # before Ray starts and before the output is touched

    def write(stage) -> dict[str, Any]:
        summary = write_fit(read, config, stage)
        summary["warnings"] = check_classes(summary, where=read.url, strict=False)
        for warning in summary["warnings"]:
            log(f"warning: {warning}")
        return summary
    spec = {"input": input_spec(read), "fit": settings_of(config)}
    return run_alone(output, "fit", spec, write, input_url=read.url, overwrite=overwrite,
                     s3_endpoint=read.s3_endpoint, resumable=True)
