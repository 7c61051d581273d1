"""Merged class statistics as one ``.npz`` archive — plain arrays and JSON, never a pickle.

``save_stats(stats, fs, path)`` writes what :meth:`kernelbank.ClassStats.to_dict` holds:
the scalars and class names as a UTF-8 JSON header (``header_json``, uint8 bytes) and
every array under ``basis/<name>`` or ``class<i>/<name>`` (``i`` indexes the header's
class list, so any class name is safe). ``load_stats`` reads it with
``numpy.load(..., allow_pickle=False)``: a planted file can be malformed, but it can
never run code.

Interim format: once :class:`kernelbank.ClassStats` has its own ``save``/``load``
(``.npz``, ``allow_pickle=False``), these two functions should defer to it.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from .atomic import read_bytes, write_bytes

__all__ = ["save_stats", "load_stats", "STATS_FORMAT"]

STATS_FORMAT = "kernelbank.class_stats"
_VERSION = 1


def _split(value: dict, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """``value`` with its arrays moved into ``arrays`` (replaced by their key)."""
    plain = {}
    for key, item in value.items():
        if isinstance(item, np.ndarray):
            arrays[f"{prefix}/{key}"] = item
            plain[key] = {"__array__": f"{prefix}/{key}"}
        elif isinstance(item, np.generic):
            plain[key] = item.item()
        else:
            plain[key] = item
    return plain


def _join(value: dict, archive) -> dict:
    return {key: archive[item["__array__"]] if isinstance(item, dict) and "__array__" in item
            else item for key, item in value.items()}


def save_stats(stats, fs, path: str) -> None:
    """Write :class:`kernelbank.ClassStats` ``stats`` to ``path`` on ``fs`` (atomically)."""
    d = stats.to_dict()
    arrays: dict[str, np.ndarray] = {}
    names = list(d["classes"])
    header = {"format": STATS_FORMAT, "file_version": _VERSION,
              "stats": {k: v for k, v in d.items() if k not in ("basis", "classes")},
              "basis": None if d["basis"] is None else _split(d["basis"], "basis", arrays),
              "class_names": names,
              "classes": [_split(d["classes"][n], f"class{i}", arrays)
                          for i, n in enumerate(names)]}
    arrays["header_json"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(fs, path, buffer.getvalue())


def load_stats(fs, path: str) -> Any:
    """Read a file written by :func:`save_stats` (never unpickles).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When it is not such a file (not an npz, object arrays, wrong header).
    """
    import kernelbank as kb
    data = read_bytes(fs, path)
    if data is None:
        raise FileNotFoundError(f"no class statistics at {path}")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        header = json.loads(bytes(archive["header_json"]).decode())
        if header.get("format") != STATS_FORMAT or header.get("file_version") != _VERSION:
            raise ValueError(f"format {header.get('format')!r} version "
                             f"{header.get('file_version')!r}")
        d = dict(header["stats"])
        d["basis"] = None if header["basis"] is None else _join(header["basis"], archive)
        d["classes"] = {name: _join(part, archive)
                        for name, part in zip(header["class_names"], header["classes"])}
        return kb.ClassStats.from_dict(d)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise ValueError(f"{path} is not a kernelbank class-statistics file "
                         f"({STATS_FORMAT} v{_VERSION}): {error}") from error
