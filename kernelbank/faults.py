"""Fault injection for the crash tests — inert unless a test turns it on explicitly.

Production code calls :func:`fault_point` at a few named places (``fit.finish``,
``features.finish``, ``publish``, ``published``). It does nothing unless **both**
variables are set in the environment of the process:

``KERNELBANK_TESTING=1``
    the explicit test switch; without it no other variable below is read;
``KERNELBANK_FAULT_KILL_AT=<point>``
    the driver SIGKILLs itself when it reaches that point (no cleanup runs, exactly like
    ``kill -9`` or a lost node).

:func:`fit_fault_from_env` gives the fit actors' kill switch
(``KERNELBANK_FAULT_KILL_FIT_AFTER`` images, once, remembered in the file named by
``KERNELBANK_FAULT_MARKER``) under the same test switch. The configuration layer
(:mod:`kernelbank.config`) never reads any of these.
"""

from __future__ import annotations

import os
import signal

__all__ = ["TEST_FLAG_ENV", "KILL_AT_ENV", "FAULT_KILL_FIT_AFTER_ENV", "FAULT_MARKER_ENV",
           "testing", "fault_point", "fit_fault_from_env"]

TEST_FLAG_ENV = "KERNELBANK_TESTING"
KILL_AT_ENV = "KERNELBANK_FAULT_KILL_AT"
#: The fit actor calls ``os._exit`` once after this many images (tests only).
FAULT_KILL_FIT_AFTER_ENV = "KERNELBANK_FAULT_KILL_FIT_AFTER"
#: File whose existence means "the injected fault already happened" (so it happens once).
FAULT_MARKER_ENV = "KERNELBANK_FAULT_MARKER"


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
