"""``OUTPUT/summary.json``: what a run or a single stage did, merged per stage."""

from __future__ import annotations

import time
from typing import Any

from ..io.layout import SUMMARY, read_json, write_json
from ..io.storage import join, redact

__all__ = ["update_summary", "scrub"]


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
