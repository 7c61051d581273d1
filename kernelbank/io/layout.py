"""The output layout of a run, and how a run replaces an old one without mixing them.

::

    OUTPUT/fit/*.parquet         one row per fitted image (coefficients, MSE, normal equations)
    OUTPUT/fit/_kernelbank.json  basis and fit settings of the table
    OUTPUT/banks/bank.npz        the kernel bank (+ bank.json, stats_d<dilation>.json)
    OUTPUT/features/*.parquet    one row per image, one named column per feature
    OUTPUT/errors/*.parquet      rejected records: id, path, label, split, stage, reason
    OUTPUT/summary.json          counts, timings, throughput, test accuracy

A run never writes into ``OUTPUT`` directly. It builds everything in a sibling
``OUTPUT.partial-<id>`` and :meth:`Staging.commit` swaps it in at the end: on a local
disk with two renames; on object stores, which cannot rename a prefix, by deleting the
old files and copying the new ones with ``summary.json`` last — so an output is complete
exactly when its ``summary.json`` exists. An existing output is only replaced with
``overwrite=True``; otherwise :func:`Staging.open` refuses before any work starts.
A single stage (``kernelbank fit …``) stages its own folders the same way and replaces
only them (and its own ``errors/<stage>-*.parquet`` files).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from .storage import is_local, join, resolve

__all__ = ["Staging", "read_json", "write_json", "SUMMARY"]

SUMMARY = "summary.json"


def write_json(fs, path: str, payload: Any) -> None:
    """Write ``payload`` as indented JSON."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)


def read_json(fs, path: str) -> Any:
    """Read a JSON file (``None`` when missing)."""
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def _has_files(fs, path: str) -> bool:
    return fs.exists(path) and bool(fs.find(path))


@dataclass
class Staging:
    """Where a run or stage writes before its output is swapped in.

    Attributes
    ----------
    fs : fsspec.AbstractFileSystem
    final : str
        The output root (protocol-free).
    path : str
        The staging root; stage folders go below it with the same names as in ``final``.
    owned : tuple of str
        What the commit replaces in ``final``: ``("*",)`` for a whole run, else folder
        names and ``errors/<stage>-`` prefixes.
    """

    fs: Any
    final: str
    path: str
    owned: tuple[str, ...]

    @classmethod
    def open(cls, url: str, *, owned: Sequence[str] = ("*",), overwrite: bool = False,
             s3_endpoint: str | None = None) -> "Staging":
        """Check ``url`` and create a fresh staging area for it.

        Raises
        ------
        FileExistsError
            When the output (or, for a stage, the folder it writes) already holds files
            and ``overwrite`` is false.
        """
        fs, final = resolve(url, s3_endpoint=s3_endpoint)
        owned = tuple(owned)
        if not overwrite:
            taken = [final] if owned == ("*",) else \
                [join(final, o) for o in owned if not o.endswith("-")]
            busy = [p for p in taken if _has_files(fs, p)]
            if busy:
                raise FileExistsError(
                    f"output {url!r} already holds results ({busy[0]}); pass --overwrite "
                    "(overwrite=True) to replace them, or choose another --output")
        tag = uuid.uuid4().hex[:8]
        staging = f"{final}.partial-{tag}" if owned == ("*",) else \
            join(final, f".partial-{'-'.join(o.strip('/-').replace('/', '_') for o in owned)}-{tag}")
        fs.makedirs(staging, exist_ok=True)
        return cls(fs, final, staging, owned)

    def dir(self, name: str) -> str:
        """Staging path of an output folder (``fit``, ``errors``, …)."""
        return join(self.path, name)

    def commit(self) -> None:
        """Replace the owned parts of the final output with the staged files."""
        fs = self.fs
        if self.owned == ("*",):
            if is_local(fs):
                old = f"{self.final}.old-{uuid.uuid4().hex[:8]}"
                if os.path.exists(self.final):
                    os.rename(self.final, old)
                os.rename(self.path, self.final)
                if os.path.exists(old):
                    fs.rm(old, recursive=True)
                return
            if fs.exists(self.final):
                fs.rm(self.final, recursive=True)
        else:
            for item in self.owned:
                if item.endswith("-"):         # e.g. "errors/fit-": this stage's error files
                    folder, prefix = item.rsplit("/", 1)
                    old = [p for p in (fs.find(join(self.final, folder))
                                       if fs.exists(join(self.final, folder)) else [])
                           if p.rsplit("/", 1)[-1].startswith(prefix)]
                    if old:
                        fs.rm(old)
                elif fs.exists(join(self.final, item)):
                    fs.rm(join(self.final, item), recursive=True)
        staged = sorted(fs.find(self.path)) if fs.exists(self.path) else []
        staged.sort(key=lambda p: p.endswith("/" + SUMMARY))     # summary last
        for src in staged:
            dst = join(self.final, src[len(self.path):].lstrip("/"))
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            fs.mv(src, dst)
        if fs.exists(self.path):
            fs.rm(self.path, recursive=True)

    def abort(self) -> None:
        """Remove the staging area (the final output is untouched)."""
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
