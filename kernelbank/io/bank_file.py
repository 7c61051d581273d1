"""One self-describing file per kernel bank: an ``.npz`` archive read and written via fsspec.

The archive holds plain arrays (no pickle):

``kernels``             (M, *window) float64, or (M, C, C, *window) for vector kernels
``dilations``           (M,) int64
``class_index``         (M,) int64
``explained_variance``  (M,) float64, present only when the bank has it
``metadata_json``       uint8 bytes of a UTF-8 JSON object: format version, method,
                        class names, radius, ndim, channels and the bank's own metadata

so ``numpy.load(path, allow_pickle=False)`` can read it without kernelbank.
"""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np

from ..core.bank import KernelBank

__all__ = ["save_bank", "load_bank"]

FORMAT = "kernelbank.bank"
VERSION = 1


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_bank(bank: KernelBank, url: str, **storage_options) -> None:
    """Write ``bank`` to ``url`` (local path or any fsspec URL, e.g. ``s3://b/bank.npz``)."""
    header = {"format": FORMAT, "version": VERSION, "method": bank.method,
              "class_names": bank.class_names, "radius": bank.radius, "ndim": bank.ndim,
              "channels": bank.channels,
              "kernel_names": bank.kernel_names,
              "kernel_methods": bank.kernel_methods, "metadata": _jsonable(bank.metadata)}
    arrays = {"kernels": bank.kernels.numpy(), "dilations": bank.dilations.numpy(),
              "class_index": bank.class_index.numpy(),
              "metadata_json": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    if bank.explained_variance is not None:
        arrays["explained_variance"] = bank.explained_variance.numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with fsspec.open(url, "wb", **storage_options) as f:
        f.write(buffer.getvalue())


def load_bank(url: str, **storage_options) -> KernelBank:
    """Read a bank written by :func:`save_bank`."""
    with fsspec.open(url, "rb", **storage_options) as f:
        data = f.read()
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        header = json.loads(bytes(archive["metadata_json"]).decode())
    except Exception as error:  # not an npz, or no header
        raise ValueError(f"{url} is not a kernelbank bank file: {error}") from error
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"{url} has format {header.get('format')!r} version "
                         f"{header.get('version')!r}; expected {FORMAT!r} version {VERSION}")
    ev = archive["explained_variance"] if "explained_variance" in archive.files else None
    return KernelBank(archive["kernels"], archive["dilations"], archive["class_index"],
                      header["class_names"], header["method"], ev, header["metadata"],
                      header["kernel_methods"], int(header.get("channels", 1)))
