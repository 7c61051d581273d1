"""A stage that waits for resources the cluster does not have fails, with a message.

Ray never fails a task or an actor it cannot place: it waits, because an autoscaler may
add the node. A cluster without one (a laptop, a fixed cluster that lost its workers, a
GPU request on a CPU cluster) then hangs with no error. :class:`StallWatchdog` watches a
stage's progress count from the driver; when nothing finished for ``timeout`` seconds
while Ray reports resource demands it cannot place (the same ones for
:data:`CONFIRM_SECONDS`) and no node is being launched, the stage fails with
:class:`StageStalled`, whose message names what the stage waits for and what the cluster
has::

    features: no progress for 120 s while Ray waits for resources the cluster does not
    have: 1 task or actor needs {CPU: 1}; the cluster has 1 node (CPU 1 of which 0 free,
    GPU 0). ...

The time comes from ``KERNELBANK_STALL_SECONDS`` (default :data:`DEFAULT_STALL_SECONDS`;
``0`` turns the watchdog off and waits for ever, as Ray does). A stage that makes
progress, however slowly, never stalls; nor does one whose cluster is adding nodes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["StageStalled", "StallWatchdog", "stall_seconds", "cluster_waits",
           "DEFAULT_STALL_SECONDS", "STALL_ENV"]

STALL_ENV = "KERNELBANK_STALL_SECONDS"
#: Set (to anything) to print every progress change and every look at the cluster to
#: stderr: how to see why a stage that hangs was not failed.
DEBUG_ENV = "KERNELBANK_STALL_DEBUG"
#: Seconds without progress, while Ray reports demands it cannot place, before a stage
#: fails. Long enough for an actor's start (torch import) and a large GPU batch.
DEFAULT_STALL_SECONDS = 300.0
#: Seconds the same demands must stay unplaced, after the timeout, before a stage fails.
CONFIRM_SECONDS = 10.0
#: The signal number whose handler :meth:`StallWatchdog.interrupt` runs in the main thread.
STALL_SIGNAL = getattr(signal, "SIGUSR2", signal.SIGINT)


class StageStalled(RuntimeError):
    """A stage made no progress while Ray waited for resources the cluster does not have."""


def stall_seconds() -> float:
    """The watchdog's timeout from ``KERNELBANK_STALL_SECONDS`` (0 or less: off)."""
    raw = os.environ.get(STALL_ENV, "").strip()
    if not raw:
        return DEFAULT_STALL_SECONDS
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{STALL_ENV} must be a number of seconds (0 turns the stall "
                         f"watchdog off), got {raw!r}") from None


def _countable(bundle: dict[str, float]) -> dict[str, float]:
    """The resources a bundle asks for, less Ray's implicit node and memory ones."""
    return {k: v for k, v in bundle.items()
            if not k.startswith("node:") and k not in ("memory", "object_store_memory")}


def _resources(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(_countable(bundle).items())) + "}"


def cluster_waits() -> dict[str, Any] | None:
    """What Ray waits to place and what the cluster has, from the GCS (the data of
    ``ray status``); None when this Ray cannot tell (the watchdog then never fails).

    Returns
    -------
    dict
        ``demands``: ``[(bundle, count)]`` of tasks and actors waiting for resources;
        ``launching``: nodes an autoscaler is starting; ``nodes``: alive nodes;
        ``total`` and ``free``: the cluster's resources.
    """
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        summary = status.resource_demands
        demands = [(dict(r.bundle), int(r.count))
                   for d in summary.ray_task_actor_demand + summary.placement_group_demand
                   for r in d.bundles_by_count]
        return {"demands": demands,
                "launching": len(status.pending_launches) + len(status.pending_nodes),
                "nodes": len(status.active_nodes) + len(status.idle_nodes),
                "total": dict(status.total_resources()),
                "free": dict(status.available_resources())}
    except Exception as error:              # a private API of Ray: never fatal
        global _BLIND
        if not _BLIND:                      # say once why a stall cannot be seen
            _BLIND = True
            print(f"[kernelbank] the stall watchdog cannot read the cluster's status "
                  f"({type(error).__name__}: {error}): a stage that waits forever for "
                  "resources will not be failed", file=sys.stderr, flush=True)
        return None


#: Whether :func:`cluster_waits` has failed in this process (said once).
_BLIND = False


def _infeasible(bundle: dict[str, float], total: dict[str, float]) -> bool:
    """More of some resource than the whole cluster has (e.g. a GPU on CPU nodes)."""
    return any(v > total.get(k, 0.0) for k, v in _countable(bundle).items())


def describe_wait(stage: str, seconds: float, waits: dict[str, Any]) -> str:
    """The stall message: what the stage waits for, what the cluster has, what to do."""
    needs = "; ".join(f"{n} task{'s' if n != 1 else ''} or actor{'s' if n != 1 else ''} "
                      f"need{'s' if n == 1 else ''} {_resources(b)}" for b, n in waits["demands"])
    total, free = waits["total"], waits["free"]
    have = ", ".join(f"{k} {total.get(k, 0):g} of which {free.get(k, 0):g} free"
                     for k in ("CPU", "GPU"))
    nodes = waits["nodes"]
    return (f"{stage}: no progress for {seconds:.0f} s while Ray waits for resources the "
            f"cluster does not have: {needs}; the cluster has {nodes} node"
            f"{'s' if nodes != 1 else ''} ({have}). Add nodes with these resources (or let "
            "an autoscaler add them), ask for fewer (--num-gpus, --threads-per-actor, "
            "--max-actors), then rerun the same command: completed work is kept. "
            f"{STALL_ENV}=0 waits instead of failing.")


class StallWatchdog:
    """Fails a stage that makes no progress while Ray cannot place what it waits for.

    Parameters
    ----------
    stage : str
        Name in the message.
    timeout : float, optional
        Seconds without progress before the cluster is asked (default
        :func:`stall_seconds`; 0 or less: never fail).
    waits : callable, optional
        Returns the cluster's state as :func:`cluster_waits` does (tests pass their own).
    clock : callable, optional

    Notes
    -----
    The driver's progress thread calls :meth:`observe` with the stage's count and
    :meth:`check` after it; :meth:`check` returns the stall message once, when due. The
    thread that runs the stage learns of it through :meth:`interrupt` (a
    ``KeyboardInterrupt`` in the main thread, turned into :class:`StageStalled` by
    :func:`kernelbank.stages.progress.remote_progress`).
    """

    def __init__(self, stage: str, timeout: float | None = None, *,
                 waits: Callable[[], dict[str, Any] | None] = cluster_waits,
                 clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.timeout = stall_seconds() if timeout is None else float(timeout)
        self.waits, self.clock = waits, clock
        self.message: str | None = None
        self._seen: int | None = None
        self._since = clock()
        self._first: tuple[float, list] | None = None   # (when, demands) first seen stalled

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def observe(self, done: int) -> None:
        """The stage's progress count now; a change restarts the clock."""
        if done != self._seen:
            self._debug(f"progress {self._seen} -> {done}")
            self._seen, self._since, self._first = done, self.clock(), None

    def _debug(self, what: str) -> None:
        if os.environ.get(DEBUG_ENV):
            print(f"[kernelbank] stall watchdog ({self.stage}): {what}", file=sys.stderr,
                  flush=True)

    def check(self) -> str | None:
        """The stall message when the stage has stalled (once), else None.

        Stalled: no progress for ``timeout`` seconds, and the same resource demands
        unplaced for :data:`CONFIRM_SECONDS` more with no node being launched (a task
        that waits a moment for a worker process is not a stall).
        """
        if not self.enabled or self.message is not None:
            return None
        now = self.clock()
        if now - self._since < self.timeout:
            return None
        waits = self.waits()
        self._debug(f"no progress for {now - self._since:.1f} s; cluster: {waits}")
        if waits is None or not waits["demands"] or waits["launching"]:
            self._first = None              # slow, or the cluster is growing: not a hang
            return None
        if self._first is None:
            self._first = (now, waits["demands"])
            return None
        # a demand no node of the cluster could ever hold (a GPU where there is none)
        # lasts whatever its count does; others must be the same demands as at first sight
        lasting = [d for d in waits["demands"]
                   if d in self._first[1] or _infeasible(d[0], waits["total"])]
        if not lasting:
            self._first = (now, waits["demands"])
            return None
        if now - self._first[0] < CONFIRM_SECONDS:
            return None
        self.message = describe_wait(self.stage, now - self._since,
                                     dict(waits, demands=lasting))
        return self.message

    def catch(self) -> Callable[[], None]:
        """Make :meth:`interrupt` raise ``KeyboardInterrupt`` in this (the main) thread
        once the stage has stalled; returns what undoes it.

        The interrupt is :data:`STALL_SIGNAL` simulated by :func:`_thread.interrupt_main`
        (no signal reaches the process), not SIGINT: a process started with SIGINT
        ignored (a background job of a shell, a supervisor's child) ignores a simulated
        SIGINT too, and its stalled stage hung instead of failing.
        """
        def on_stall(signum, frame) -> None:
            if self.message is not None:
                raise KeyboardInterrupt
        try:
            previous = signal.signal(STALL_SIGNAL, on_stall)
        except ValueError:                  # not the main thread: nothing to interrupt
            return lambda: None
        # a handler installed from C reads as None, which signal.signal refuses back
        return lambda: signal.signal(STALL_SIGNAL, signal.SIG_DFL if previous is None
                                     else previous)

    @staticmethod
    def interrupt() -> bool:
        """Interrupt the main thread (where the stage runs, after :meth:`catch`); False
        when this is it."""
        if threading.current_thread() is threading.main_thread():
            return False
        import _thread
        _thread.interrupt_main(STALL_SIGNAL)
        return True
