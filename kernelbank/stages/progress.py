"""Progress a person can read in a job log: one line per stage every few seconds.

Ray Data draws per-operator bars on a terminal; when its output is not a terminal (``ray
job logs``, CI, ``nohup``) it dumps operator status lines instead, dozens per stage.
:class:`Progress` prints one kernelbank line per stage every ``interval`` seconds::

    [kernelbank] fit: 412,000/1,000,000 images (41.2%), 3,150 images/s, ETA 3m07s, 12 errors

— images done out of the total the manifest gives, the recent rate, the time left at
that rate and the error rows so far. The driver feeds it as results stream in
(:func:`track` wraps ``iter_batches``; a sink's per-task counts work the same way
through :meth:`Progress.update`).

:func:`configure_output` applies ``--quiet`` and ``--log-level``: the kernelbank and Ray
loggers get the level; Ray's own bars stay on a terminal and go off when the output is
not one (the kernelbank lines replace them) or with ``--quiet`` (which also silences the
kernelbank lines: only warnings and errors remain).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

__all__ = ["Progress", "track", "remote_progress", "driver_node_options", "configure_output",
           "configure_ray_data",
           "info_enabled", "ray_log_level", "LOG_LEVELS", "LOGGER"]

LOGGER = "kernelbank"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Seconds of history the rate (and so the ETA) is measured over.
RATE_WINDOW = 30.0


def info_enabled() -> bool:
    """Whether kernelbank's INFO lines print: the ``kernelbank`` logger's level, INFO when
    nobody set one (``--quiet`` and ``--log-level`` set it, see :func:`configure_output`)."""
    return (logging.getLogger(LOGGER).level or logging.INFO) <= logging.INFO


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts of one stage, printed as one line every ``interval`` seconds.

    Parameters
    ----------
    stage : str
        Name at the start of each line (``fit``, ``features``…).
    total : int, optional
        Records expected (the manifest's row count); without it no percentage or ETA.
    interval : float, default=5.0
        Least seconds between two lines.
    stream : file, optional
        Where lines go; default ``sys.stderr``.
    enabled : bool, optional
        Default: when ``stream`` is not a terminal (there Ray's bars show progress) and
        the ``kernelbank`` logger lets INFO through (``--quiet`` does not).
    clock : callable, optional
        Seconds as a float (``time.monotonic``); tests pass their own.

    Notes
    -----
    :meth:`update` is thread-safe and cheap: it only formats a line when one is due.
    """

    def __init__(self, stage: str, total: int | None = None, *, interval: float = 5.0,
                 stream: TextIO | None = None, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0, got {total!r}")
        self.stage, self.total, self.interval, self.clock = stage, total, interval, clock
        self.stream = stream or sys.stderr
        self.enabled = (not _interactive(self.stream) and info_enabled()) \
            if enabled is None else enabled
        self.done = 0
        self.errors = 0
        self.lines = 0
        self._start = clock()
        self._last_line = self._start
        self._history: collections.deque = collections.deque([(self._start, 0)])
        self._lock = threading.Lock()

    def rate(self) -> float:
        """Records per second over the last :data:`RATE_WINDOW` seconds (0 before any)."""
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self) -> str:
        """The current progress line (without the ``[kernelbank]`` prefix)."""
        rate = self.rate()
        text = f"{self.stage}: {self.done:,}"
        if self.total is not None:
            share = 100.0 * self.done / self.total if self.total else 100.0
            text += f"/{self.total:,} images ({share:.1f}%)"
        else:
            text += " images"
        text += f", {rate:,.0f} images/s"
        if self.total is not None and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 \
                else ", ETA unknown"
        return text + f", {self.errors:,} error{'s' if self.errors != 1 else ''}"

    def _emit(self) -> None:
        if self.enabled:
            print(f"[{LOGGER}] {self.line()}", file=self.stream, flush=True)
            self.lines += 1

    def update(self, done: int = 0, errors: int = 0) -> None:
        """Add ``done`` finished records, ``errors`` of them error rows; print when due."""
        with self._lock:
            self.done += int(done)
            self.errors += int(errors)
            now = self.clock()
            self._history.append((now, self.done))
            while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW:
                self._history.popleft()
            if now - self._last_line >= self.interval:
                self._last_line = now
                self._emit()

    def close(self) -> None:
        """Print the final line (when anything was counted since the last one)."""
        with self._lock:
            if self.lines == 0 or self._last_line != self._history[-1][0]:
                self._emit()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _count(batch: Any) -> tuple[int, int]:
    """Rows and error rows (``reason`` set) of a pyarrow, pandas or numpy-dict batch."""
    if hasattr(batch, "num_rows") and hasattr(batch, "column"):          # pyarrow.Table
        rows = batch.num_rows
        errors = batch.column("reason").is_valid() if "reason" in batch.column_names else None
        return rows, 0 if errors is None else int(errors.to_numpy(zero_copy_only=False).sum())
    reason = batch["reason"] if "reason" in batch else None
    rows = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
    return rows, 0 if reason is None else int(sum(r is not None and r == r for r in reason))


def track(batches: Iterable, progress: Progress) -> Iterator:
    """Yield ``batches`` unchanged, counting rows and error rows into ``progress``.

    Examples
    --------
    >>> with Progress("fit", total=manifest.num_rows) as progress:          # doctest: +SKIP
    ...     for batch in track(ds.iter_batches(batch_format="pyarrow"), progress):
    ...         write(batch)
    """
    for batch in batches:
        rows, errors = _count(batch)
        progress.update(rows, errors)
        yield batch


def _counter_class() -> type:
    """The counter actor's class: finished rows reported by write tasks, polled by the
    driver. Made here, not at module level, so that Ray ships it by value: its worker
    then imports nothing of kernelbank (whose package import brings in torch, seconds of
    start-up for a counter)."""
    class Counter:
        def __init__(self):
            self.done = self.errors = 0

        def add(self, done: int, errors: int) -> None:
            self.done += int(done)
            self.errors += int(errors)

        def totals(self) -> tuple[int, int]:
            return self.done, self.errors
    return Counter


def driver_node_options() -> dict[str, Any]:
    """Actor options that keep a bookkeeping actor on the driver's node.

    A counter placed by Ray's default policy may land on any node, and a lost worker node
    (a spot preemption) then takes it along. On the driver's node it lives as long as the
    driver does. Hard affinity: Ray 2.60 placed a soft-affinity actor on another node of
    a three-node cluster (seen here); the driver's node is alive while the driver is.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "max_restarts": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


@contextlib.contextmanager
def stall_guard(stage: str, stall_timeout: float | None = None) -> Iterator[Any]:
    """The stall watchdog of a stage, checked every second by a driver thread.

    Yields the :class:`~kernelbank.stages.watchdog.StallWatchdog`: call its ``observe``
    with the stage's count whenever it changes (``timeout = 0`` switches it off, as when
    the count can no longer be known). A stage that makes no progress while Ray cannot
    place what it waits for raises :class:`~kernelbank.stages.watchdog.StageStalled` out
    of the ``with`` block (the main thread, blocked in Ray, is interrupted).
    """
    from .watchdog import StageStalled, StallWatchdog
    watchdog = StallWatchdog(stage, stall_timeout)
    if not watchdog.enabled:
        yield watchdog
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(1.0):
            if watchdog.check() is not None:
                watchdog.interrupt()        # once: a second one could cut the cleanup short
                return
    thread = threading.Thread(target=loop, name=f"kernelbank-{stage}-watchdog", daemon=True)
    release = watchdog.catch()
    thread.start()
    try:
        yield watchdog
    except KeyboardInterrupt as error:
        # SIGTERM's Terminated is a KeyboardInterrupt subclass and passes unchanged
        if watchdog.message is not None and type(error) is KeyboardInterrupt:
            raise StageStalled(watchdog.message) from None
        raise
    finally:
        stop.set()
        thread.join()
        release()


#: Seconds the driver waits for the counter's last totals at the end of a stage.
POLL_TIMEOUT = 10.0


@contextlib.contextmanager
def remote_progress(stage: str, total: int | None = None, *, interval: float = 5.0,
                    stall_timeout: float | None = None) -> Iterator[Any]:
    """Progress lines and the stall watchdog of a stage whose rows are counted in Ray
    tasks (a sink's writes).

    Yields a counter actor handle (``None`` when lines are off and the watchdog too):
    tasks call ``counter.add.remote(done, errors)``; a driver thread polls it every
    second, prints through :class:`Progress` and feeds the
    :class:`~kernelbank.stages.watchdog.StallWatchdog` (``stall_timeout`` seconds,
    default ``KERNELBANK_STALL_SECONDS``).

    Bookkeeping never fails a run: the counter lives on the driver's node
    (:func:`driver_node_options`), and should it still be lost, the stage goes on
    without progress lines (one line says so). A stalled stage raises
    :class:`~kernelbank.stages.watchdog.StageStalled` out of the ``with`` block.
    """
    progress = Progress(stage, total, interval=interval)
    with stall_guard(stage, stall_timeout) as watchdog:
        if not progress.enabled and not watchdog.enabled:
            yield None
            return
        import ray
        counter = ray.remote(**driver_node_options())(_counter_class()).remote()
        stop = threading.Event()
        seen = [0, 0]
        lost: list[BaseException] = []
        asked: list[Any] = []           # the totals call in flight (a slow counter is fine)

        def poll(wait: float = 0.0) -> None:
            if lost:
                return
            if not asked:
                asked.append(counter.totals.remote())
            ready, _ = ray.wait(asked, timeout=wait)
            if not ready:
                return                  # still starting, or busy: ask again later
            try:
                done, errors = ray.get(asked.pop())
            except Exception as error:  # the counter's node is gone, or Ray is
                lost.append(error)
                watchdog.timeout = 0    # progress is unknown from here: never call it a stall
                if progress.enabled:
                    print(f"[{LOGGER}] {stage}: progress counter lost "
                          f"({type(error).__name__}); no more progress lines for this "
                          "stage, the stage goes on", file=progress.stream, flush=True)
                return
            progress.update(done - seen[0], errors - seen[1])
            seen[:] = [done, errors]
            watchdog.observe(done)

        def loop() -> None:
            while not stop.wait(min(1.0, interval)):
                poll()
        thread = threading.Thread(target=loop, name=f"kernelbank-{stage}-progress",
                                  daemon=True)
        thread.start()
        try:
            yield counter
        finally:
            stop.set()
            thread.join()
            poll(wait=POLL_TIMEOUT)     # the call in flight, then a fresh one: the totals
            poll(wait=POLL_TIMEOUT)     # after the stage's last write
            progress.close()
            with contextlib.suppress(Exception):
                ray.kill(counter)


def configure_output(*, quiet: bool = False, log_level: str = "INFO",
                     stream: TextIO | None = None) -> bool:
    """Apply ``--quiet`` / ``--log-level`` to kernelbank's and Ray's output.

    Parameters
    ----------
    quiet : bool, default=False
        Only warnings and errors: no kernelbank progress lines, no Ray bars.
    log_level : {"DEBUG", "INFO", "WARNING", "ERROR"}, default="INFO"
    stream : file, optional
        The output progress goes to; default ``sys.stderr``.

    Returns
    -------
    bool
        Whether kernelbank progress lines will be printed (:class:`Progress`'s default).
    """
    level = str(log_level).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if quiet:
        level = "WARNING" if level in ("DEBUG", "INFO") else level
    numeric = getattr(logging, level)
    logging.getLogger(LOGGER).setLevel(numeric)
    interactive = _interactive(stream or sys.stderr)
    _RAY_DATA_OUTPUT["bars"] = interactive and not quiet
    logging.getLogger("ray").setLevel(ray_log_level())
    if "ray.data" in sys.modules:
        configure_ray_data()
    return not interactive and info_enabled()


#: What :func:`configure_output` decided for Ray Data, applied by :func:`configure_ray_data`.
_RAY_DATA_OUTPUT = {"bars": True}


def configure_ray_data() -> None:
    """Apply :func:`configure_output`'s levels and bars to Ray Data; called by the code
    paths that build Ray Data pipelines (pixel features, training), after importing it.

    Not at start-up: ``import ray.data`` costs a second of CPU, and the default run
    (fit, reduce, features from the table, classify) uses plain Ray tasks only. Importing
    Ray Data configures its loggers, so this comes after."""
    import ray.data
    ray_level = ray_log_level()
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):     # the console, not Ray's log file
            handler.setLevel(ray_level)
    ray.data.DataContext.get_current().enable_progress_bars = _RAY_DATA_OUTPUT["bars"]


def ray_log_level() -> int:
    """The level for Ray's console messages: kernelbank's, never below INFO (Ray's DEBUG
    is not ours to ask for); pass it as ``ray.init(logging_level=...)``."""
    return max(logging.getLogger(LOGGER).level or logging.INFO, logging.INFO)
