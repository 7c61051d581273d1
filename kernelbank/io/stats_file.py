"""One ``.npz`` file (no pickle) per :class:`~kernelbank.core.stats.ClassStats`, via fsspec.

The math layer gives the arrays (:meth:`ClassStats.to_arrays` / :meth:`from_arrays`); this
module reads and writes them, so ``kernelbank.core`` holds no file I/O.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import BinaryIO

import fsspec
import numpy as np

from ..core.stats import ClassStats

__all__ = ["save_stats", "load_stats"]


def save_stats(stats: ClassStats, target: str | os.PathLike | BinaryIO,
               **storage_options) -> None:
    """Write one ``.npz`` file (no pickle) to a path, an fsspec URL or a binary file.

    The arrays are :meth:`ClassStats.to_arrays` (layout in :mod:`kernelbank.core.stats`).

    Parameters
    ----------
    target : str, path or binary file object
        ``stats_d1.npz``, ``s3://bucket/banks/stats_d1.npz``, or an open file.
    **storage_options
        Passed to ``fsspec.open`` for a URL (e.g. ``client_kwargs``).
    """
    buffer = io.BytesIO()
    np.savez(buffer, **stats.to_arrays())
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
        return ClassStats.from_arrays(arrays)
    except KeyError as error:
        raise ValueError(f"{where} lacks the array {error}: not a complete ClassStats "
                         "file") from None
    except IndexError as error:
        raise ValueError(f"{where} has fewer per-class rows than classes in its header: "
                         f"{error}") from None
