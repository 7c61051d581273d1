"""Who is writing a run right now: a lease file with a heartbeat.

A driver that creates or resumes a run holds ``runs/<id>/_lease.json`` (its attempt id,
host, process id and start time, and a heartbeat it refreshes every
:data:`HEARTBEAT_S` seconds with a compare-and-swap). Another driver may take the run
over, or delete it, only when the lease is stale:

* on the same host, as soon as the holder's process is gone (its id is dead or belongs
  to a process started at another time) — a crashed or SIGKILLed run is resumable at
  once;
* from another host, when the heartbeat is older than the holder's ``timeout_s``
  (:data:`LEASE_TIMEOUT_S` by default).

Taking over is itself a compare-and-swap on the lease, so of two drivers that find the
same stale run only one gets it. A holder whose refresh fails (someone took its lease
because it stalled longer than the timeout) marks itself ``lost`` and must stop writing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .atomic import read_versioned, remove_tree, replace_if
from .layout import json_bytes

__all__ = ["Lease", "LeaseBusy", "holder_alive", "HEARTBEAT_S", "LEASE_TIMEOUT_S"]

HEARTBEAT_S = 30.0
LEASE_TIMEOUT_S = 300.0


class LeaseBusy(RuntimeError):
    """The run is held by a live driver."""


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), else ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(info: dict[str, Any] | None, *, now: float | None = None) -> bool:
    """Whether the lease ``info`` (content of a lease file) belongs to a live driver."""
    if not info:
        return False
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return False
        started = _process_start(pid)
        return started is None or info.get("pid_start") in (None, started)
    age = (now if now is not None else time.time()) - float(info.get("heartbeat", 0))
    return age <= float(info.get("timeout_s", LEASE_TIMEOUT_S))


def _describe(attempt: str, timeout_s: float) -> dict[str, Any]:
    return {"attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "heartbeat": time.time(),
            "timeout_s": timeout_s}


@dataclass
class Lease:
    """A held lease (see the module docstring); create with :meth:`acquire`."""

    fs: Any
    path: str
    attempt: str
    timeout_s: float = LEASE_TIMEOUT_S
    token: str | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def acquire(cls, fs, path: str, attempt: str, *,
                timeout_s: float = LEASE_TIMEOUT_S) -> "Lease":
        """Hold the lease at ``path``: create it, or take it over from a dead holder.

        Raises
        ------
        LeaseBusy
            When a live driver holds it, or another driver took it over first.
        """
        current = read_versioned(fs, path)
        info = json.loads(current.data) if current.data else None
        if info and holder_alive(info):
            raise LeaseBusy(f"held by attempt {info.get('attempt')} (pid {info.get('pid')} on "
                            f"{info.get('host')}, heartbeat {time.time() - info['heartbeat']:.0f}"
                            " s ago)")
        lease = cls(fs, path, attempt, timeout_s)
        lease.token = replace_if(fs, path, json_bytes(_describe(attempt, timeout_s)),
                                 current.token)
        if lease.token is None:
            raise LeaseBusy("another driver took it over at the same moment")
        return lease

    @staticmethod
    def holder(fs, path: str) -> dict[str, Any] | None:
        """The content of the lease file at ``path`` (``None`` when there is none)."""
        data = read_versioned(fs, path).data
        return json.loads(data) if data else None

    def refresh(self) -> bool:
        """Renew the heartbeat; ``False`` (and :attr:`lost`) when the lease was taken."""
        with self._lock:
            if self.lost:
                return False
            token = replace_if(self.fs, self.path,
                               json_bytes(_describe(self.attempt, self.timeout_s)), self.token)
            if token is None:
                self.lost = True
                return False
            self.token = token
            return True

    def start_heartbeat(self, interval_s: float = HEARTBEAT_S) -> None:
        """Refresh the lease every ``interval_s`` seconds in a daemon thread."""
        def beat():
            while not self._stop.wait(interval_s):
                try:
                    if not self.refresh():
                        return
                except Exception:        # a failed heartbeat is retried at the next beat
                    continue
        self._thread = threading.Thread(target=beat, name="kernelbank-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.lost:
                return
            if read_versioned(self.fs, self.path).token == self.token:
                remove_tree(self.fs, self.path)
            self.lost = True
