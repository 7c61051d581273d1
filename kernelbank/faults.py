"""Fault injection for the crash tests — inert unless a test turns it on explicitly.

Production code calls :func:`fault_point` at a few named places (``fit.finish``,
``features.finish``, ``publish``, ``published``). It does nothing unless **both**
variables are set in the environment of the process:

``KERNELBANK_TESTING=1``
    the explicit test switch; without it no other variable below is read;
``KERNELBANK_FAULT_KILL_AT=<point>``
    the driver SIGKILLs itself when it reaches that point (no cleanup runs, exactly like
    ``kill -9`` or a lost node).

:func:`group_fault` makes a fit group fail the way a device running out of memory or a
numerical error would (``KERNELBANK_FAULT_GROUP_LIMIT``, ``KERNELBANK_FAULT_POISON_IDS``),
so the tests can watch a failed group being split and retried, or last at least
``KERNELBANK_FAULT_GROUP_DELAY`` seconds, as large images would (the cluster tests need
batches in flight when a node dies or joins).

:func:`fit_fault_from_env` gives the fit actors' kill switch
(``KERNELBANK_FAULT_KILL_FIT_AFTER`` images, once, remembered in the file named by
``KERNELBANK_FAULT_MARKER``) under the same test switch. The configuration layer
(:mod:`kernelbank.config`) never reads any of these.
"""

from __future__ import annotations

import os
import signal

__all__ = ["TEST_FLAG_ENV", "KILL_AT_ENV", "FAULT_KILL_FIT_AFTER_ENV", "FAULT_MARKER_ENV",
           "GROUP_LIMIT_ENV", "POISON_IDS_ENV", "GROUP_DELAY_ENV", "testing", "fault_point",
           "fit_fault_from_env", "group_fault"]

TEST_FLAG_ENV = "KERNELBANK_TESTING"
KILL_AT_ENV = "KERNELBANK_FAULT_KILL_AT"
#: The fit actor calls ``os._exit`` once after this many images (tests only).
FAULT_KILL_FIT_AFTER_ENV = "KERNELBANK_FAULT_KILL_FIT_AFTER"
#: File whose existence means "the injected fault already happened" (so it happens once).
FAULT_MARKER_ENV = "KERNELBANK_FAULT_MARKER"
#: A fit group of more images than this fails like a device out of memory (tests only).
GROUP_LIMIT_ENV = "KERNELBANK_FAULT_GROUP_LIMIT"
#: Comma-separated record ids whose group always fails, alone too (tests only).
POISON_IDS_ENV = "KERNELBANK_FAULT_POISON_IDS"
#: Seconds every fit group takes at least (tests only): slow batches without big data.
GROUP_DELAY_ENV = "KERNELBANK_FAULT_GROUP_DELAY"


def testing() -> bool:
    """Whether the explicit test switch is on in this process."""
    return os.environ.get(TEST_FLAG_ENV) == "1"


def fault_point(name: str) -> None:
    """SIGKILL this process if a test asked for a crash at ``name`` (no-op otherwise)."""
    if testing() and os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fit_fault_from_env() -> dict:
    """``fault_kill_after``/``fault_marker`` for :class:`~kernelbank.config.FitConfig`
    from the environment, only under the test switch (``{}`` otherwise)."""
    after = os.environ.get(FAULT_KILL_FIT_AFTER_ENV) if testing() else None
    if not after:
        return {}
    return {"fault_kill_after": int(after), "fault_marker": os.environ.get(FAULT_MARKER_ENV)}


def group_fault(ids: list[str]) -> None:
    """Raise as a failing device would for the fit group of record ``ids`` (tests only).

    A group larger than ``KERNELBANK_FAULT_GROUP_LIMIT`` raises ``RuntimeError`` ("out of
    memory"); a group holding an id of ``KERNELBANK_FAULT_POISON_IDS`` raises
    ``RuntimeError`` whatever its size. ``KERNELBANK_FAULT_GROUP_DELAY`` seconds pass
    first.
    """
    if not testing():
        return
    delay = os.environ.get(GROUP_DELAY_ENV)
    if delay:
        import time
        time.sleep(float(delay))
    limit = os.environ.get(GROUP_LIMIT_ENV)
    if limit and len(ids) > int(limit):
        raise RuntimeError(f"CUDA out of memory (injected: group of {len(ids)} > {limit})")
    poison = {p for p in os.environ.get(POISON_IDS_ENV, "").split(",") if p}
    bad = sorted(poison.intersection(ids))
    if bad:
        raise RuntimeError(f"injected failure of record {bad[0]}")
