"""``OUTPUT/summary.json``: what a run or a single stage did, merged per stage."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..io.layout import SUMMARY, read_json, write_json
from ..io.storage import join, redact

__all__ = ["update_summary", "scrub", "run_staged"]


def scrub(value: Any) -> Any:
    """``value`` with credential strings removed from every string inside it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def update_summary(fs, root: str, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Set ``stages[stage]`` in ``root/summary.json`` (created when missing); returns it."""
    path = join(root, SUMMARY)
    current = read_json(fs, path) or {"stages": {}}
    current.setdefault("stages", {})[stage] = scrub(summary)
    current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(fs, path, current)
    return current


def run_staged(staging, stage: str, write: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``write()`` into ``staging``, commit it (abort on any error), record ``stage``.

    Returns the stage summary, also merged into ``summary.json`` of the final output.
    """
    try:
        summary = write()
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    update_summary(staging.fs, staging.final, stage, summary)
    return summary
