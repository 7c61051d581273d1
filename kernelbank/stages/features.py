"""The feature stage: features of every image from the statistics table — no pixels.

``fit/*.parquet`` → :class:`TableFeaturizer` (CPU tasks; the bank and the class
statistics go to the object store once) → ``features/*.parquet``. Per image, in groups
named by prefix:

``ar_s<scale>_d<dilation>_spec_r<i>_h<k>``
                                      rotation-invariant spectral descriptors of the
                                      own kernel (``own_kernel`` spectrum, the default
                                      on grey 2-D tables; :mod:`kernelbank.core.spectrum`)
``ar_s<scale>_d<dilation>_c<j>``      or its coefficients in the chosen basis
                                      (``_sym<k>``: their orbit means, ``symmetric``)
``ar_s<scale>_d<dilation>_log_mse``   log residual MSE of the own kernel
``res_s<scale>_d<dilation>_<name>``   residual descriptors of the own kernel (with
                                      ``rotation_invariant``: the ri histograms only)
``img_s<scale>_d<dilation>_<name>``   the image's own sign patterns at that dilation
``<kernel>_log_mse``, ``_log_var``, ``_gain``, ``_log_energy_<cell>``
                                      each bank kernel, from the window sums
``joint_<kernel>``                    joint coefficients of each dilation's bank kernels

With channels (a table of ``C > 1`` channels, read from ``fit/_kernelbank.json``) the
own-kernel group is per output channel ``ar_<entry>_ch<c>_c<j>`` and
``ar_<entry>_ch<c>_log_mse``, plus the residual correlation of each channel pair
``ar_<entry>_corr_c<a>_c<b>``; descriptors are ``res_<entry>_c<c>_<name>``; bank
features are per (kernel, output channel) ``<kernel>_c<c>_log_mse`` …; the likelihood
uses each class's ``C × C`` residual covariance.

Histogram columns (sign patterns, co-occurrences) go through ``sign(h) |h|^power``
(``power`` 0.5: the Hellinger map, under which a linear model compares histograms as a
χ²-like kernel does; chosen by CV in ``bench/accuracy.py``).

then ``likelihood_prediction`` (the class whose pooled AR models explain the image
best, also from the sums). Which groups a run computes is the feature config's
``groups``; logs turn the ratios between kernels that separate classes into the
differences a linear model sees. ``features/_kernelbank.json`` lists the columns.

Feature values are float32 (half of float64's bytes; a standardised linear model needs no
more digits). Without pixel features the stage is one Ray task per statistics file:
the task reads only the columns its groups need, writes its own part file (named by its
input file, so a retried task rewrites it) and returns its counts and, when the
classifier follows, the per-fold ridge sums of its train rows
(:class:`~kernelbank.core.ridge.StreamingRidge`), so the classify stage solves without
a first pass over the table.

MAE and the win rate of a bank kernel need the pixels: ``pixel_features=True``
(``--pixel-features``) adds them by reading and decoding the images a second time
(:func:`kernelbank.bank_features` on actors); the default run reads every image once.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import FeatureConfig, ReadConfig
from ..io.layout import write_json
from ..io.readers import images_from_batch, read_dataset
from ..io.storage import join, resolve, storage_options, url_of
from ..io.tables import PartWriter, table_rows
from .common import (actor_pool_args, log, read_table_files, release_memory, timed,
                     write_stage)
from .progress import remote_progress
from .reduce import BANK_FILE, load_fit_meta, stats_file
from .table import TableMeta, column_array, covariance_of_rows, sums_of_rows, table_files

__all__ = ["TableFeaturizer", "PixelFeaturizer", "load_bank_and_stats", "run_features",
           "write_features", "PREDICTION", "feature_names", "descriptor_columns"]

PREDICTION = "likelihood_prediction"
#: Rows a feature task computes at a time.
SLICE_ROWS = 1024
_POSITIVE = ("mse", "var", "mae")
_FLOOR = 1e-12


def _entry_tag(scale: int, dilation: int) -> str:
    return f"s{scale}_d{dilation}"


def _log_name(name: str) -> str:
    """``k03_brick_d2_mse`` → ``k03_brick_d2_log_mse``."""
    head, _, stat = name.rpartition("_")
    if "_energy_" in name:
        head, _, cell = name.partition("_energy_")
        return f"{head}_log_energy_{cell}"
    return f"{head}_log_{stat}"


def _is_positive(name: str) -> bool:
    return name.rpartition("_")[2] in _POSITIVE or "_energy_" in name


def _channel_pairs(channels: int) -> list[tuple[int, int]]:
    """Channel pairs ``a < b`` (row-major): the residual correlations' order."""
    return [(a, b) for a in range(channels) for b in range(a + 1, channels)]


def _correlations(covariance: np.ndarray) -> np.ndarray:
    """(n, pairs) residual correlations of covariances (n, C, C); 0 where a channel's
    residual vanishes."""
    pairs = _channel_pairs(covariance.shape[-1])
    if not pairs:
        return np.zeros((len(covariance), 0))
    a, b = np.array(pairs).T
    diag = np.diagonal(covariance, axis1=-2, axis2=-1)
    scale = np.sqrt(np.maximum(diag[:, a] * diag[:, b], 0))
    return np.where(scale > _FLOOR, covariance[:, a, b] / np.maximum(scale, _FLOOR), 0.0)


def descriptor_columns(meta: TableMeta, config: FeatureConfig
                       ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Which of one entry's stored descriptors the groups keep, in order.

    Returns the indices of the residual descriptors, of the image patterns (``img_…``),
    their feature-name stems (``res_<entry>_`` / ``img_<entry>_`` come first) and
    which of them are histogram bins (they get the power map). A table written before
    image patterns existed (or with ``--no-image-patterns``) has none: the ``image``
    group then adds nothing (the stage logs it).
    """
    names = list(meta.descriptor_names)
    is_image = np.array([n.startswith("img_") for n in names], dtype=bool)
    keep = np.zeros(len(names), dtype=bool)
    if "residual" in config.groups:
        keep |= ~is_image
    if "image" in config.groups:
        keep |= is_image
    if config.rotation_invariant:    # nri patterns and co-occurrences follow the grid's axes
        keep &= np.array([not re.search(r"(^|_)(cooc_|(lbp|ltp_up|ltp_lo)_nri_)", n)
                          for n in names], dtype=bool)
    res, img = np.flatnonzero(keep & ~is_image), np.flatnonzero(keep & is_image)
    stems = [names[i] for i in res] + [names[i][4:] for i in img]
    histogram = np.array([bool(re.search(r"(^|_)(lbp|ltp|cooc)_", n)) for n in stems],
                         dtype=bool)
    return res, img, stems, histogram


def own_kernel_form(meta: TableMeta, config: FeatureConfig) -> str:
    """The form of the own kernels that ``config.own_kernel`` gives on this table
    (``auto`` resolved); a form the table cannot give raises, naming the option."""
    simple = meta.ndim == 2 and meta.n_channels == 1
    if config.own_kernel == "auto":
        return "spectrum" if simple else "coefficients"
    if config.own_kernel in ("symmetric", "spectrum") and not simple or \
            config.own_kernel == "symmetric" and meta.basis != "full":
        raise ValueError(f"own_kernel={config.own_kernel!r} needs a one-channel 2-D table"
                         + (" of a full basis" if config.own_kernel == "symmetric" else "")
                         + f", got basis={meta.basis!r}, ndim={meta.ndim}, channels="
                         f"{meta.n_channels}; use --own-kernel coefficients (or auto)")
    return config.own_kernel


def _basis_kernels(meta: TableMeta) -> np.ndarray:
    """(m, h, w) kernel of each basis coefficient at dilation 1: a coefficient means the
    same taps, spread by the dilation, in every entry."""
    import torch
    eye = torch.eye(meta.n_components, dtype=torch.float64)
    return meta.basis_at(1).to_kernels(eye).numpy()


def own_kernel_map(meta: TableMeta, form: str):
    """Coefficients (n, m) -> the ``form`` of the own kernels, or None
    (``coefficients``: kept as they are)."""
    if form == "spectrum":
        from ..core.spectrum import spectral_invariants, spectrum_operator
        operator = spectrum_operator(_basis_kernels(meta))
        return lambda coef: spectral_invariants(coef, operator)
    if form == "symmetric":
        pool = symmetry_pooling(_basis_kernels(meta))
        return lambda coef: coef @ pool
    return None


def symmetry_pooling(kernels: np.ndarray) -> np.ndarray:
    """(m, orbits) averaging matrix of full-basis coefficients (one tap each: ``kernels``)
    over the 8 symmetries of the square window (orbits ``{(±a, ±b), (±b, ±a)}``, by
    ``(max, min)``)."""
    r = kernels.shape[-1] // 2
    keys = []
    for kernel in kernels:
        (y,), (x,) = np.nonzero(kernel)
        keys.append((max(abs(y - r), abs(x - r)), min(abs(y - r), abs(x - r))))
    orbits = sorted(set(keys))
    pool = np.zeros((len(keys), len(orbits)))
    for j, key in enumerate(keys):
        pool[j, orbits.index(key)] = 1.0 / keys.count(key)
    return pool


def _own_names(meta: TableMeta, form: str) -> list[str]:
    """Column-name suffixes of one entry's own kernel in ``form`` (after ``ar_<entry>``)."""
    if form == "spectrum":
        from ..core.spectrum import spectral_invariant_names
        return spectral_invariant_names("")            # "_spec_r<i>_h<k>"
    if form == "symmetric":
        return [f"_sym{k}" for k in range(symmetry_pooling(_basis_kernels(meta)).shape[1])]
    width = max(2, len(str(meta.n_components - 1)))
    outputs = [f"_ch{c}" for c in range(meta.n_channels)] if meta.n_channels > 1 else [""]
    return [f"{o}_c{j:0{width}d}" for o in outputs for j in range(meta.n_components)]


def feature_names(meta: TableMeta, bank, config: FeatureConfig) -> list[str]:
    """Column names of the feature table for ``config.groups``, in order."""
    from ..core.features import bank_feature_names_from_sums
    names: list[str] = []
    groups = config.groups
    own = _own_names(meta, own_kernel_form(meta, config)) if "own" in groups else []
    for scale, dilation in meta.scale_index:
        tag = _entry_tag(scale, dilation)
        if "own" in groups:
            outputs = [f"_ch{c}" for c in range(meta.n_channels)] if meta.n_channels > 1 \
                else [""]
            names += [f"ar_{tag}{suffix}" for suffix in own]
            names += [f"ar_{tag}{o}_log_mse" for o in outputs]
            names += [f"ar_{tag}_corr_c{a}_c{b}" for a, b in _channel_pairs(meta.n_channels)]
        res, _, stems, _ = descriptor_columns(meta, config)
        names += [f"{'res' if k < len(res) else 'img'}_{tag}_{n}" for k, n in enumerate(stems)]
    if "bank" in groups:
        bank_names = bank_feature_names_from_sums(bank, grid=meta.grid, joint=config.joint)
        names += [_log_name(n) if _is_positive(n) else n for n in bank_names]
    return names


class TableFeaturizer:
    """Ray Data task body: feature rows of a block of the statistics table.

    Parameters
    ----------
    bank : KernelBank or ObjectRef to one
    stats : dict of (scale, dilation) to ClassStats (or an ObjectRef to it)
        Merged class statistics, for the likelihood classifier.
    meta : TableMeta
    config : FeatureConfig
    """

    def __init__(self, bank, stats, meta: TableMeta, config: FeatureConfig):
        import ray
        import torch
        import kernelbank as kb
        torch.set_num_threads(config.threads_per_actor)
        pa.set_cpu_count(config.threads_per_actor)      # see StatisticsFitter
        self.bank = ray.get(bank) if isinstance(bank, ray.ObjectRef) else bank
        stats = ray.get(stats) if isinstance(stats, ray.ObjectRef) else stats
        entries = [e for e in meta.scale_index if e in stats]
        self.classifier = kb.LikelihoodClassifier.from_stats(
            [stats[e] for e in entries], z=None, normalize=meta.normalize) if entries else None
        self.meta, self.config = meta, config
        self.names = feature_names(meta, self.bank, config)
        self.own_form = own_kernel_map(meta, own_kernel_form(meta, config)) \
            if "own" in config.groups else None

    def _columns(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        from ..core.features import bank_features_from_sums
        meta, groups, n = self.meta, self.config.groups, table.num_rows
        s, c = meta.n_entries, meta.n_channels
        parts = []
        coef = column_array(table, "coef").reshape(n, s, -1)
        log_mse = np.log(np.maximum(column_array(table, "mse"), _FLOOR)).reshape(n, s, c)
        covariance = covariance_of_rows(column_array(table, "covariance"), meta) \
            if c > 1 and "own" in groups else None
        res, img, _, histogram = descriptor_columns(meta, self.config)
        desc = column_array(table, "descriptors").reshape(n, s, -1) \
            if len(res) + len(img) else None
        for e in range(s):
            if "own" in groups:
                own = coef[:, e] if self.own_form is None else self.own_form(coef[:, e])
                parts += [own, log_mse[:, e]]
                if covariance is not None:
                    parts.append(_correlations(covariance[:, e]))
            if desc is not None:
                kept = desc[:, e][:, np.concatenate([res, img])].astype(np.float64)
                if self.config.power != 1:
                    kept[:, histogram] = np.sign(kept[:, histogram]) * \
                        np.abs(kept[:, histogram]) ** self.config.power
                parts.append(kept)
        # packed: the bank features and the class scores are quadratic forms of the sums,
        # read from the rows' triangles without a T × T matrix per image and entry
        sums = sums_of_rows(column_array(table, "sums"), meta, packed=True)
        if "bank" in groups:
            cells = [] if meta.grid is None else \
                sums_of_rows(column_array(table, "cell_sums"), meta, cells=True, packed=True)
            values, names = bank_features_from_sums(sums + cells, self.bank,
                                                    joint=self.config.joint,
                                                    ridge=self.config.ridge)
            values = values.cpu().numpy()
            positive = np.array([_is_positive(v) for v in names], dtype=bool)
            values[:, positive] = np.log(np.maximum(values[:, positive], _FLOOR))
            parts.append(values)
        predicted = [""] * n
        if self.classifier is not None:
            predicted = [str(p) for p in self.classifier.predict_from_sums(sums)]
        return np.concatenate(parts, 1) if parts else np.zeros((n, 0)), predicted

    def __call__(self, table: pa.Table) -> pa.Table:
        values, predicted = self._columns(table)
        # float32: features are standardised and fed to a linear model, never solved with
        # (half the bytes to write, read and score; see the module docstring)
        values = np.ascontiguousarray(values.T, dtype=np.float32)
        columns = {c: table.column(c) for c in ("id", "path", "label", "split")}
        columns.update({name: pa.array(values[j]) for j, name in enumerate(self.names)})
        columns[PREDICTION] = pa.array(predicted, pa.string())
        columns["stage"] = pa.nulls(table.num_rows, pa.string())
        columns["reason"] = pa.nulls(table.num_rows, pa.string())
        return pa.table(columns)


class PixelFeaturizer:
    """Ray Data actor: the pixel-only bank features (MAE, win rate) of decoded images.

    Used only with ``pixel_features=True``: it reads the images a second time.
    """

    def __init__(self, bank, config: FeatureConfig, normalize: bool):
        import ray
        import torch
        import kernelbank as kb
        torch.set_num_threads(config.threads_per_actor)
        self.torch, self.kb = torch, kb
        self.bank = ray.get(bank) if isinstance(bank, ray.ObjectRef) else bank
        self.normalize = normalize
        names = kb.core.features.bank_feature_names(self.bank, grid=1)
        self.keep = [i for i, n in enumerate(names) if n.endswith(("_mae", "_win"))]
        self.names = [_log_name(names[i]) if names[i].endswith("_mae") else names[i]
                      for i in self.keep]

    def _features(self, images: list[np.ndarray]) -> np.ndarray:
        feats, _ = self.kb.bank_features(images, self.bank, grid=1, normalize=self.normalize)
        return feats.cpu().numpy()[:, self.keep]

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = images_from_batch(batch)
        values = np.full((len(images), len(self.names)), np.nan)
        stage: list[str | None] = [None] * len(images)
        reason: list[str | None] = [None] * len(images)
        good = [i for i, image in enumerate(images) if image is not None]
        for i in set(range(len(images))) - set(good):
            stage[i], reason[i] = "features", "not decodable (see the fit stage's errors)"
        try:
            if good:
                values[good] = self._features([images[i] for i in good])
        except ValueError:          # one bad image: find it, keep the others
            for i in good:
                try:
                    values[i] = self._features([images[i]])[0]
                except ValueError as error:
                    stage[i], reason[i] = "features", str(error).replace("image 0 ", "image ")
        mae = np.array([n.endswith("_log_mae") for n in self.names])
        values[:, mae] = np.log(np.maximum(values[:, mae], _FLOOR))
        columns = {"id": batch.column("id")}
        columns.update({name: pa.array(values[:, j]) for j, name in enumerate(self.names)})
        columns["stage"] = pa.array(stage, pa.string())
        columns["reason"] = pa.array(reason, pa.string())
        return pa.table(columns)


#: Per worker process: the featurizer of the stage being run (bank, class statistics and
#: likelihood classifier built once per process, not once per file).
_FEATURIZERS: dict[str, TableFeaturizer] = {}


def _table_columns(meta: TableMeta, config: FeatureConfig) -> list[str]:
    """The statistics table's columns the feature groups read (column projection)."""
    groups = config.groups
    columns = ["id", "path", "label", "split", "coef", "mse", "sums"]
    if meta.n_channels > 1 and "own" in groups:
        columns.append("covariance")
    if ("residual" in groups or "image" in groups) and meta.descriptor_names:
        columns.append("descriptors")
    if "bank" in groups and meta.grid is not None:
        columns.append("cell_sums")
    return columns


def _features_of_file(key: str, featurizer_args: tuple, fs_in, path: str, writer,
                      wanted: tuple[str, int] | None) -> dict[str, Any]:
    """One statistics file's feature rows, written as one part file; counts and what the
    classifier needs of them.

    ``featurizer_args`` holds the bank and class statistics as object references; the
    featurizer is built once per worker process (:data:`_FEATURIZERS`, keyed by the
    stage attempt ``key``). ``wanted`` (:func:`kernelbank.stages.classify.head_input`):
    also return the head's input from the train rows — the linear head's per-fold sums
    or the kernel head's sample — computed from the float32 values the file holds (what
    a scoring pass reads).
    """
    import pyarrow.parquet as pq
    from ..io.atomic import retried
    from ..io.tables import part_name
    import time
    start = time.perf_counter()
    featurizer = _FEATURIZERS.get(key)
    if featurizer is None:
        _FEATURIZERS.clear()
        featurizer = _FEATURIZERS[key] = TableFeaturizer(*featurizer_args)
    seconds = {"setup": time.perf_counter() - start}

    columns = _table_columns(featurizer.meta, featurizer.config)
    seconds["read"] = seconds["compute"] = 0.0
    outs = []
    # one row group, and at most SLICE_ROWS rows, at a time: a 4,096-row file read and
    # computed whole made its worker the largest of a million-image run
    with retried(lambda: fs_in.open(path, "rb")) as handle:
        parquet = retried(lambda: pq.ParquetFile(handle))
        for group in range(parquet.num_row_groups):
            start = time.perf_counter()
            table = retried(lambda: parquet.read_row_group(group, columns=columns))
            seconds["read"] += time.perf_counter() - start
            start = time.perf_counter()
            outs += [featurizer(table.slice(at, SLICE_ROWS))
                     for at in range(0, table.num_rows, SLICE_ROWS)]
            seconds["compute"] += time.perf_counter() - start
    out = pa.concat_tables(outs) if outs else featurizer(
        parquet.schema_arrow.empty_table().select(columns))
    start = time.perf_counter()
    counts = writer.write(out, part_name(writer.prefix, [path.rsplit("/", 1)[-1]]))
    seconds["write"] = time.perf_counter() - start
    gathered = None
    if wanted:
        from .classify import gather_head_input
        start = time.perf_counter()
        gathered = gather_head_input(out, featurizer.names, wanted)
        seconds["head_input"] = time.perf_counter() - start
    rows = out.num_rows
    del out
    release_memory()
    return {"counts": dict(counts), "rows": rows, "head_input": gathered, "seconds": seconds}


def _write_file_by_file(files: list[str], fs_fit, writer, featurizer_args: tuple,
                        config: FeatureConfig, wanted: tuple[str, int] | None, total: int,
                        task_seconds: dict):
    """Run :func:`_features_of_file` on every file (bounded in flight); the head's input
    of all the files, merged (None unless ``wanted``).

    ``task_seconds`` receives the tasks' summed seconds per step (setup, read, compute,
    write, head_input): where the stage's time went."""
    import ray
    from .classify import merge_head_input
    from .common import map_bounded
    from .progress import Progress
    task = ray.remote(num_cpus=config.threads_per_actor)(_features_of_file)
    merged = None
    with Progress("features", total) as progress:
        for result in map_bounded(task, ((writer.prefix, featurizer_args, fs_fit, p, writer,
                                          wanted) for p in files)):
            writer.add(result["counts"])
            for step, value in result["seconds"].items():
                task_seconds[step] = round(task_seconds.get(step, 0.0) + value, 3)
            progress.update(result["rows"], sum(n for k, n in result["counts"].items()
                                                if k[0] == "error"))
            if result["head_input"] is not None:
                merged = merge_head_input(merged, result["head_input"], wanted)
    return merged


def load_bank_and_stats(banks_url: str, *, s3_endpoint: str | None = None):
    """The bank and the merged class statistics (per entry) written by the reduce stage.

    Both are read as plain arrays and JSON (``allow_pickle=False``): a file planted in
    the output can be malformed but never runs code.
    """
    from ..io.bank_file import load_bank
    from ..io.layout import read_json
    from ..io.stats_file import load_stats
    fs, path = resolve(banks_url, s3_endpoint=s3_endpoint)
    if not fs.exists(join(path, BANK_FILE)):
        raise FileNotFoundError(f"no bank at {banks_url!r}: run the reduce stage first")
    bank_url = url_of(fs, join(path, BANK_FILE))
    bank = load_bank(bank_url, **storage_options(bank_url, s3_endpoint))
    info = read_json(fs, join(path, "bank.json")) or {}
    entries = info.get("entries") or [(1, d) for d in dict.fromkeys(bank.dilations.tolist())]
    stats = {}
    for scale, dilation in entries:
        url = url_of(fs, join(path, stats_file(scale, dilation)))
        stats[(int(scale), int(dilation))] = load_stats(url, **storage_options(url,
                                                                            s3_endpoint))
    return bank, stats


def write_features(fit_url: str, banks_url: str, config: FeatureConfig, staging, *,
                   read: ReadConfig | None = None, s3_endpoint: str | None = None,
                   head_input: tuple[str, int] | None = None, gathered: dict | None = None
                   ) -> dict[str, Any]:
    """Run the feature stage into ``staging`` (``features/`` and ``errors/features-*``).

    ``read`` is needed only with ``config.pixel_features`` (the second read).
    ``head_input`` and ``gathered``: when both are given (and no pixel features), the
    writes also gather what the classifier's head needs of the train rows
    (:func:`kernelbank.stages.classify.head_input`: per-fold sums or a sample), and
    ``gathered["head_input"]`` receives it (see
    :func:`kernelbank.stages.classify.classify_table`).
    """
    import ray
    bank, stats = load_bank_and_stats(banks_url, s3_endpoint=s3_endpoint)
    fs_fit, fit_path = resolve(fit_url, s3_endpoint=s3_endpoint)
    meta = load_fit_meta(fs_fit, fit_path, fit_url)
    names = feature_names(meta, bank, config)
    if "image" in config.groups and not len(descriptor_columns(meta, config)[1]):
        log(f"features: warning: {fit_url} holds no image patterns (a table written before "
            "they existed, or without descriptors or image patterns): the 'image' group "
            "adds no columns; rerun the fit stage to get them")
    summary: dict[str, Any] = {"own_kernel": own_kernel_form(meta, config)
                               if "own" in config.groups else None}
    log(f"features: {fit_url} (no pixels) with {len(bank)} kernels, groups="
        f"{','.join(config.groups)}{' + pixel features (second read)' if config.pixel_features else ''}")
    files = table_files(fs_fit, fit_path)
    if not config.pixel_features:
        writer = PartWriter(staging.fs, staging.dir("features"), staging.dir("errors"),
                            staging.part_prefix)
        wanted = head_input if gathered is not None else None
        steps: dict[str, float] = {}
        with timed(summary):
            merged = _write_file_by_file(files, fs_fit, writer,
                                         (ray.put(bank), ray.put(stats), meta, config),
                                         config, wanted, table_rows(fs_fit, files), steps)
        summary.update({"files": len(files), "task_seconds": steps})
        if merged is not None:
            gathered["head_input"] = merged
        return _finish(staging, config, names, writer, summary)
    from ..io.tables import SplitParquetSink        # imports ray.data: only on this path
    with timed(summary), remote_progress("features", table_rows(fs_fit, files)) as counter:
        sink = SplitParquetSink(staging.fs, staging.dir("features"), staging.dir("errors"),
                                staging.part_prefix, counter=counter)
        # statistics rows are small and the features are algebra on them: CPU actors,
        # whole blocks per call, however many GPUs the pixel stages use
        pool = actor_pool_args(num_gpus=0, max_actors=config.max_actors,
                               threads=config.threads_per_actor, batch_size=None,
                               start=1 if config.pixel_features else None)
        # listed here, read inside the actors (read_parquet's listing task can starve)
        ds = read_table_files(files, fs_fit, pool=pool)
        ds = ds.map_batches(TableFeaturizer,
                            fn_constructor_args=(ray.put(bank), ray.put(stats), meta, config),
                            batch_format="pyarrow", **pool)
        if config.pixel_features:
            read = read or _fit_input(fs_fit, fit_path, fit_url, s3_endpoint)
            # the images are decoded as the fit stage decoded them (its table says how)
            read = replace(read, channels=meta.channels,
                           n_channels=meta.n_channels if meta.channels == "all" else None)
            pixel = _pixel_features(read, bank, config, meta)
            names = names + pixel.schema().names[1:-2]
            ds = _join_on_id(ds, pixel)
        write_stage(ds, sink, staging.fs, staging.dir("features"), num_gpus=0,
                    max_actors=config.max_actors, threads=config.threads_per_actor)
    return _finish(staging, config, names, sink, summary)


def _finish(staging, config: FeatureConfig, names: list[str], sink, summary: dict
            ) -> dict[str, Any]:
    """The stage's ``_kernelbank.json`` and summary (counts from the writes)."""
    write_json(staging.fs, join(staging.dir("features"), "_kernelbank.json"),
               {"feature_names": names, "prediction_column": PREDICTION,
                "groups": list(config.groups), "own_kernel": summary["own_kernel"],
                "joint": config.joint,
                "pixel_features": config.pixel_features})
    counts = sink.per_split_and_class()
    images = sum(sum(v.values()) for v in counts.values())
    errors = sink.errors_by_stage()
    summary.update({"images": images, "errors": errors, "counts": counts,
                    "n_features": len(names), "reads_images": bool(config.pixel_features),
                    "images_per_second": round(images / max(summary["seconds"], 1e-9), 2)})
    log(f"features: {images} images x {len(names)} features, {sum(errors.values())} errors, "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} images/s)")
    return summary


def _fit_input(fs, fit_path: str, fit_url: str, s3_endpoint: str | None) -> ReadConfig:
    """The fit stage's input, from the statistics table's metadata."""
    from ..io.layout import read_json
    from .fit import FIT_META
    url = (read_json(fs, join(fit_path, FIT_META)) or {}).get("input")
    if not url:
        raise ValueError(f"pixel features read the images again, but {fit_url!r} does not "
                         "record its input; pass --input")
    meta = load_fit_meta(fs, fit_path, fit_url)
    return ReadConfig(url, s3_endpoint=s3_endpoint, ndim=meta.ndim)


def _pixel_features(read: ReadConfig, bank, config: FeatureConfig, meta: TableMeta):
    import ray
    read = replace(read, min_side=max(read.min_side, 2 * bank.max_reach + 1))
    return read_dataset(config=read).map_batches(
        PixelFeaturizer, fn_constructor_args=(ray.put(bank), config, meta.normalize),
        batch_format="pyarrow",
        **actor_pool_args(num_gpus=config.num_gpus, max_actors=config.max_actors,
                          threads=config.threads_per_actor, batch_size=config.batch_size,
                          start=1))


def _join_on_id(table_ds, pixel_ds):
    """Statistics features joined with the pixel features of the same records."""
    pixel_ds = pixel_ds.rename_columns({"stage": "pixel_stage", "reason": "pixel_reason"})
    joined = table_ds.join(pixel_ds, join_type="left_outer", num_partitions=4, on=("id",))

    def merge_errors(batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc
        stage = pc.coalesce(batch.column("stage"), batch.column("pixel_stage"))
        reason = pc.coalesce(batch.column("reason"), batch.column("pixel_reason"))
        batch = batch.drop_columns(["stage", "reason", "pixel_stage", "pixel_reason"])
        return batch.append_column("stage", stage).append_column("reason", reason)
    return joined.map_batches(merge_errors, batch_format="pyarrow")


def run_features(output: str, config: FeatureConfig, *, read: ReadConfig | None = None,
                 overwrite: bool = False, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The feature stage alone: reads the published ``fit/`` and ``banks/``, publishes a run
    with ``features/`` — no image is read unless ``config.pixel_features``."""
    from .summary import input_spec, run_alone, settings_of
    spec = {"features": settings_of(config)}
    if config.pixel_features and read is not None:
        spec["input"] = input_spec(read)
    return run_alone(output, "features", spec,
                     lambda stage: write_features(stage.run.stage_url("fit"),
                                                  stage.run.stage_url("reduce"), config, stage,
                                                  read=read, s3_endpoint=s3_endpoint),
                     input_url=read.url if read is not None else None, overwrite=overwrite,
                     s3_endpoint=s3_endpoint)
