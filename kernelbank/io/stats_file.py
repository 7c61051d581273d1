"""One ``.npz`` file (no pickle) per :class:`~kernelbank.core.stats.ClassStats`, via fsspec.

The archive holds plain arrays, so ``numpy.load(path, allow_pickle=False)`` reads it
without kernelbank::

    header_json      uint8 UTF-8 JSON: format, version, scale, reservoir_size, seed,
                     class names (in order), basis description, or null when empty
    basis_regressors (M, C t) float64  basis_selection (C, m) int64  basis_targets (C,)
                     int64 (files written before bases had channels hold one channel's
                     basis_offsets (n_taps, ndim) and basis_weights (m, n_taps) instead)
    n, n_pixels      (K,) int64, K classes
    sum_coef (K, k)  sum_outer (K, k, k)  sum_gram (K, M, M)  sum_rhs (K, M, C)
    sum_sq (K, C, C)  sum_mse, sum_mse_sq (K,)                                  float64
    sample           (S, k) float64, every class's reservoir rows one class after another
    sample_priority  (S,) uint64                sample_count   (K,) int64

(``k = C m``; the sums are those of :mod:`kernelbank.core.stats`.) Version 1 files kept
a grey class's ``G (m, m)``, ``h (m,)`` and ``Σx² ()`` instead of its
``A = [[G, h], [hᵀ, Σx²]]``; they are read into today's format.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import BinaryIO

import fsspec
import numpy as np

from ..core.stats import ClassStats

__all__ = ["save_stats", "load_stats", "stats_to_arrays", "stats_from_arrays"]

FORMAT = "kernelbank.class_stats"
VERSION = 2
_PER_CLASS = ("n", "n_pixels", "sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq",
              "sum_mse", "sum_mse_sq")
_BASIS_ARRAYS = ("regressors", "selection", "targets")


def stats_to_arrays(stats: ClassStats) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file of ``stats`` (layout in the module docstring)."""
    plain = stats.to_dict()
    basis = plain["basis"]
    header = {"format": FORMAT, "version": VERSION, "scale": stats.scale,
              "reservoir_size": stats.reservoir_size, "seed": stats.seed,
              "classes": stats.classes,
              "basis": None if basis is None else
              {key: value for key, value in basis.items() if key not in _BASIS_ARRAYS}}
    arrays = {"header_json": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    width = 0
    if basis is not None:
        arrays["basis_regressors"] = basis["regressors"].astype(np.float64)
        arrays["basis_selection"] = basis["selection"].astype(np.int64)
        arrays["basis_targets"] = basis["targets"].astype(np.int64)
        width = basis["selection"].size                          # k = C m
    parts = [plain["classes"][name] for name in stats.classes]
    for key in _PER_CLASS:
        arrays[key] = np.array([part[key] for part in parts],
                               dtype=np.int64 if key in ("n", "n_pixels") else np.float64)
    arrays["sample"] = np.concatenate([p["sample"] for p in parts] + [np.empty((0, width))])
    arrays["sample_priority"] = np.concatenate(
        [p["sample_priority"] for p in parts] + [np.empty(0, np.uint64)]).astype(np.uint64)
    arrays["sample_count"] = np.array([len(p["sample"]) for p in parts], dtype=np.int64)
    return arrays


def stats_from_arrays(arrays) -> ClassStats:
    """Inverse of :func:`stats_to_arrays` (a dict or an open ``numpy.load`` archive)."""
    header = json.loads(bytes(np.asarray(arrays["header_json"], np.uint8)).decode())
    if header.get("format") != FORMAT or header.get("version") not in (1, VERSION):
        raise ValueError(f"not kernelbank class statistics: format {header.get('format')!r} "
                         f"version {header.get('version')!r}, expected {FORMAT!r} "
                         f"version {VERSION}")
    if header["basis"] is None:
        return ClassStats.empty(int(header["reservoir_size"]), int(header["seed"]))
    names = _BASIS_ARRAYS if "basis_regressors" in arrays else \
        ("offsets", "weights")       # one channel, written before bases had channels
    per_class = {key: np.asarray(arrays[key]) for key in _PER_CLASS}
    if per_class["sum_rhs"].ndim == 2:          # version 1, grey: G, h, Σx² → A
        g, h, s = per_class["sum_gram"], per_class["sum_rhs"][..., None], per_class["sum_sq"]
        gram = np.block([[g, h], [np.swapaxes(h, -1, -2), s[..., None, None]]])
        m = g.shape[-1]
        per_class.update(sum_gram=gram, sum_rhs=gram[..., m:], sum_sq=gram[..., m:, m:])
    ends = np.cumsum(np.asarray(arrays["sample_count"], np.int64))
    classes = {}
    for i, name in enumerate(header["classes"]):
        start = 0 if i == 0 else int(ends[i - 1])
        classes[str(name)] = {**{key: values[i] for key, values in per_class.items()},
                              "sample": arrays["sample"][start:ends[i]],
                              "sample_priority": arrays["sample_priority"][start:ends[i]]}
    return ClassStats.from_dict({
        "version": 1, "scale": header["scale"], "reservoir_size": header["reservoir_size"],
        "seed": header["seed"], "classes": classes,
        "basis": {**header["basis"], **{name: arrays[f"basis_{name}"] for name in names}}})


def save_stats(stats: ClassStats, target: str | os.PathLike | BinaryIO,
               **storage_options) -> None:
    """Write one ``.npz`` file (no pickle) to a path, an fsspec URL or a binary file.

    Parameters
    ----------
    stats : ClassStats
    target : str, path or binary file object
        ``stats_d1.npz``, ``s3://bucket/banks/stats_d1.npz``, or an open file.
    **storage_options
        Passed to ``fsspec.open`` for a URL (e.g. ``client_kwargs``).
    """
    buffer = io.BytesIO()
    np.savez(buffer, **stats_to_arrays(stats))
    if hasattr(target, "write"):
        target.write(buffer.getvalue())
        return
    with fsspec.open(os.fspath(target), "wb", **storage_options) as handle:
        handle.write(buffer.getvalue())


def load_stats(source: str | os.PathLike | BinaryIO, **storage_options) -> ClassStats:
    """Read a file written by :func:`save_stats`; refuses pickles and object arrays.

    Raises
    ------
    ValueError
        When ``source`` is not a class-statistics ``.npz`` (a pickle, an archive
        holding object arrays, another format or version).
    """
    if hasattr(source, "read"):
        data = source.read()
        where = getattr(source, "name", "the given file")
    else:
        where = os.fspath(source)
        with fsspec.open(where, "rb", **storage_options) as handle:
            data = handle.read()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{where} is not a kernelbank ClassStats .npz file (pickled data "
                         f"and object arrays are refused): {error}") from error
    if "header_json" not in arrays:
        raise ValueError(f"{where} is not a kernelbank ClassStats .npz file: no header_json")
    try:
        return stats_from_arrays(arrays)
    except KeyError as error:
        raise ValueError(f"{where} lacks the array {error}: not a complete ClassStats "
                         "file") from None
    except IndexError as error:
        raise ValueError(f"{where} has fewer per-class rows than classes in its header: "
                         f"{error}") from None
