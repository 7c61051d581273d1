"""Names in an output root, and the JSON helpers every stage uses to write small files.

::

    OUTPUT/_kernelbank_output.json        ownership marker: this prefix belongs to kernelbank
    OUTPUT/LATEST.json                    publication pointer → the published run (written last)
    OUTPUT/runs/<run_id>/_run.json        run marker: fingerprint, stages, what it builds on
    OUTPUT/runs/<run_id>/_lease.json      held while a driver writes the run (heartbeat)
    OUTPUT/runs/<run_id>/fit/             fit table (*.parquet) + _kernelbank.json
    OUTPUT/runs/<run_id>/banks/           bank.npz, bank.json, stats_d<dilation>.npz
    OUTPUT/runs/<run_id>/features/        feature table (*.parquet) + _kernelbank.json
    OUTPUT/runs/<run_id>/classify/        result.json (accuracy, confusion matrices)
    OUTPUT/runs/<run_id>/train/           model.pt, summary.json, checkpoints/
    OUTPUT/runs/<run_id>/errors/          <stage>-<attempt>-<task>.parquet: rejected records
    OUTPUT/runs/<run_id>/<stage>/_SUCCESS.json   stage marker (files, rows, fingerprints), last
    OUTPUT/runs/<run_id>/summary.json     counts, timings, accuracy, warnings of the run
    OUTPUT/runs/<run_id>/manifest.json    every stage of the run, wherever it lives (see runs.py)
    OUTPUT/runs/<run_id>/report/          the HTML report (written after publication)

How runs are created, resumed, published and removed is :mod:`kernelbank.io.runs`.
"""

from __future__ import annotations

import json
from typing import Any

from .atomic import read_bytes, write_bytes

__all__ = ["MARKER", "POINTER", "RUNS", "RUN_MARKER", "LEASE", "MANIFEST", "SUMMARY",
           "STAGE_MARKER", "ERRORS", "REPORT", "STAGE_FOLDERS", "STAGE_DEPENDS", "STAGE_ORDER",
           "downstream", "read_json", "write_json", "json_bytes"]

MARKER = "_kernelbank_output.json"
POINTER = "LATEST.json"
RUNS = "runs"
RUN_MARKER = "_run.json"
LEASE = "_lease.json"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
STAGE_MARKER = "_SUCCESS.json"
ERRORS = "errors"
REPORT = "report"

#: Stage name → its folder inside a run.
STAGE_FOLDERS = {"fit": "fit", "reduce": "banks", "features": "features",
                 "classify": "classify", "train": "train"}
#: Stage → the stages whose outputs it reads.
STAGE_DEPENDS: dict[str, tuple[str, ...]] = {
    "fit": (), "reduce": ("fit",), "features": ("fit", "reduce"), "classify": ("features",),
    "train": ()}
STAGE_ORDER = tuple(STAGE_FOLDERS)


def downstream(stage: str) -> set[str]:
    """Stages that read ``stage``'s output, directly or through others."""
    found: set[str] = set()
    frontier = {stage}
    while frontier:
        frontier = {s for s, deps in STAGE_DEPENDS.items() if frontier & set(deps)} - found
        found |= frontier
    return found


def json_bytes(payload: Any) -> bytes:
    """Indented UTF-8 JSON (values JSON cannot hold are written as their ``str``)."""
    return json.dumps(payload, indent=2, sort_keys=False, default=str).encode()


def write_json(fs, path: str, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (a reader never sees half a file)."""
    write_bytes(fs, path, json_bytes(payload))


def read_json(fs, path: str) -> Any:
    """Read a JSON file (``None`` when missing)."""
    data = read_bytes(fs, path)
    return None if data is None else json.loads(data)
