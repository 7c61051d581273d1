"""What every stage shares: joining Ray, the task and actor-pool settings, progress lines,
timing."""

from __future__ import annotations

import collections
import importlib
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterable, Iterator

from ..io.storage import redact
from .progress import configure_ray_data, info_enabled, ray_log_level

__all__ = ["connect_ray", "actor_pool_args", "pool_size", "read_args",
           "read_table_files",
           "cluster_cpus", "actor_cpus", "write_stage", "log",
           "timed", "TRAIN_SPLITS", "TEST_SPLIT", "map_bounded", "make_basis", "Terminated",
           "stop_on_sigterm", "release_memory"]

#: Splits whose images build the banks and train the classifier.
TRAIN_SPLITS = ("train", "unsplit")
TEST_SPLIT = "test"


def log(message: str) -> None:
    """One progress line on stderr (visible in ``ray job logs`` too; not with ``--quiet``).

    Every URL in ``message`` goes through :func:`kernelbank.io.storage.safe_url` and the
    values of credential variables are removed, so no caller can log a secret.
    """
    if not info_enabled():
        return
    print(f"[kernelbank] {redact(message)}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """The driver received SIGTERM (``ray job stop``, ``kill``): stop, leave the run resumable."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread for the ``with`` block.

    The run writer then stops between two steps, frees its lease and leaves every
    completed stage and part file in place, so the same command resumes at once
    (``ray job stop`` gives a driver a few seconds before it sends SIGKILL).
    """
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        raise Terminated(f"received signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:                          # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    except KeyboardInterrupt as error:
        # a handler's exception raised inside a Ray wait comes out as a bare
        # KeyboardInterrupt (Ray 2.60): it was the SIGTERM all the same
        if received and not isinstance(error, Terminated):
            raise Terminated(f"received signal {received[0]}") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _import_math_layer() -> None:
    with suppress(Exception):         # an import error surfaces where the module is used
        importlib.import_module("kernelbank.core.stats")


def connect_ray(address: str | None = None, *, quiet: bool = False) -> dict[str, Any]:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start an embedded local Ray.

    An already initialised Ray (a test session, a job driver that called ``ray.init``)
    is reused as it is. The embedded Ray is started with ``address="local"``: a bare
    ``ray.init()`` would join the machine's last ``ray start`` cluster through
    ``/tmp/ray/ray_current_cluster`` and wait forever, without a message, when that
    cluster is gone.

    Returns
    -------
    dict
        ``mode`` (``"existing"``, ``"cluster"`` or ``"embedded"``), ``seconds`` it took,
        and the cluster's ``resources``.
    """
    import ray
    start = time.perf_counter()
    if ray.is_initialized():
        mode = "existing"
    else:
        # ray.init replaces the driver's SIGTERM handler with one that exits at once;
        # keep the caller's (stop_on_sigterm: stop cleanly, leave the run resumable)
        handler = signal.getsignal(signal.SIGTERM)
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=ray_log_level())
            mode = "cluster"
        else:
            # starting a local Ray is mostly waiting for its daemons: import the math
            # layer the driver needs later (torch: seconds of CPU) in the meantime
            threading.Thread(target=_import_math_layer, daemon=True).start()
            ray.init(address="local", include_dashboard=False, logging_level=ray_log_level())
            mode = "embedded"
        if callable(handler):
            with suppress(ValueError):              # not the main thread
                signal.signal(signal.SIGTERM, handler)
    seconds = time.perf_counter() - start
    resources = {k: float(v) for k, v in ray.cluster_resources().items()
                 if k in ("CPU", "GPU", "memory", "object_store_memory")}
    if not quiet and mode != "existing":
        log(f"ray {mode} ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) "
            f"ready in {seconds:.1f} s")
    return {"mode": mode, "seconds": seconds, "resources": resources}


#: Rows per call of a GPU actor when no batch size is given (the fit stage cuts them
#: into computations by pixels).
GPU_BATCH_ROWS = 4096


def cluster_cpus() -> tuple[float, float]:
    """CPUs of the cluster's alive nodes now: ``(total, largest node's)``."""
    import ray
    per_node = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return sum(per_node), max(per_node, default=0.0)


def actor_cpus(threads: int) -> float:
    """CPUs one CPU actor asks for: ``threads``, but never more than the largest node has
    (an actor no node can hold waits for ever, and so does its stage)."""
    largest = cluster_cpus()[1]
    return float(min(threads, largest)) if largest >= 1 else float(threads)


def pool_size(*, num_gpus: int, max_actors: int | None, threads: int) -> int:
    """Actors a stage's pool starts with: one per GPU asked for, else one per
    :func:`actor_cpus` CPUs the cluster has now (at most ``max_actors``, at least one)."""
    if num_gpus > 0:
        return num_gpus
    total = cluster_cpus()[0]
    start = max(1, int(total // actor_cpus(threads)))
    return min(start, max_actors) if max_actors else start


#: Ray Data's execution statistics of a stage (``Dataset.stats()``: per operator wall
#: and CPU time, rows, throughput), kept in the stage's folder beside its table.
RAY_STATS_FILE = "_ray_data_stats.txt"


def write_stage(ds, sink, fs, stage_dir: str, *, num_gpus: int, max_actors: int | None,
                threads: int) -> None:
    """Write ``ds`` through ``sink`` and keep Ray Data's statistics in ``stage_dir``.

    The pool arguments are the stage's (:func:`pool_size`). Writes are I/O (a Parquet
    encode and an upload), so they reserve no CPU: reserving one starves them behind
    actors that hold every CPU, and a stage's first part files then appear only when its
    last block is computed. At most one write per actor runs at once, so writes keep up
    with the pool without starting a worker process per block. ``ds.stats()`` goes to
    :data:`RAY_STATS_FILE` (where the stage's time went; never fatal).
    """
    from ..io.atomic import write_bytes
    from ..io.storage import join
    pool = pool_size(num_gpus=num_gpus, max_actors=max_actors, threads=threads)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=pool)
    try:
        text = ds.stats()
    except Exception as error:      # statistics are a diagnostic: a Ray change must not fail a run
        text = f"Ray Data statistics unavailable: {type(error).__name__}: {error}"
    write_bytes(fs, join(stage_dir, RAY_STATS_FILE), text.encode())


def actor_pool_args(*, num_gpus: int, max_actors: int | None, threads: int,
                    batch_size: int | None, start: int | None = None) -> dict[str, Any]:
    """``map_batches`` keyword arguments for a stage's actor pool.

    The pool starts at its size at once (:func:`pool_size`: every CPU of the cluster, or
    one actor per GPU) and grows without bound (or to ``max_actors``) onto nodes that
    join while it runs: Ray Data adds an actor when the pool is busy and the cluster has
    room for it, and on an autoscaling cluster asks the autoscaler for that room.

    Starting at full size cannot deadlock because nothing that feeds the actors needs a
    CPU of its own: reads run inside the actors (a read ``map_batches`` with the same
    resources, see :func:`read_args`, is fused into the actor by Ray Data) and writes
    reserve no CPU. What deadlocked before was ``read_parquet``: its ``ListFiles`` task
    asks for a whole CPU and is never fused, and Ray Data starts an actor pool's actors
    before any upstream task runs, so actors holding every CPU left the listing, and the
    stage, waiting for ever. Stages list their tables on the driver instead
    (:func:`read_table_files`).

    A lost node costs only its work in flight: Ray Data gives pool actors
    ``max_restarts=-1`` and ``max_task_retries=-1``, so an actor on a lost node restarts
    where there is room and its batches run again (exactly once in the output: part
    files are named by write task). They are not repeated here on purpose: any remote
    argument the read lacks would stop the read from fusing into the actor.

    GPU use is decided by the config (``num_gpus``), never by probing the cluster: an
    autoscaling cluster reports 0 GPUs until a GPU node starts. ``batch_size`` None
    gives each call a whole block; GPU actors get :data:`GPU_BATCH_ROWS` then, because
    Ray needs a number of rows for them. ``start`` overrides the starting size: a stage
    with two pools side by side (the pixel features) starts each at one actor, or they
    would ask for twice the cluster's CPUs at once.
    """
    import ray
    import ray.data
    configure_ray_data()
    if start is None:
        start = pool_size(num_gpus=num_gpus, max_actors=max_actors, threads=threads)
    if num_gpus > 0:
        batch_size = batch_size or GPU_BATCH_ROWS
        resources = {"num_gpus": 1, "num_cpus": 1}
        upper: int | None = num_gpus
        warn_without_gpu(num_gpus)
    else:
        resources = {"num_cpus": actor_cpus(threads)}
        upper = max_actors
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=upper,
                                                  initial_size=start,
                                                  max_tasks_in_flight_per_actor=2),
            "batch_size": batch_size, **resources}


def warn_without_gpu(num_gpus: int) -> None:
    import ray
    if not ray.cluster_resources().get("GPU"):
        log(f"asked for {num_gpus} GPU worker(s) but the cluster has no GPU now: an "
            "autoscaler must add GPU nodes, otherwise the stage fails after "
            "KERNELBANK_STALL_SECONDS without progress (use --num-gpus 0)")


def read_args(pool: dict[str, Any]) -> dict[str, Any]:
    """Remote arguments for a read ``map_batches`` that feeds the compute ``pool``
    (:func:`actor_pool_args`): the same resources, so that Ray Data
    fuses the read into the compute instead of running it as tasks that need CPUs of
    their own. GPU compute is the exception: its reads stay CPU tasks (decoding on the GPU
    worker's one CPU would starve the GPU), which needs CPUs beside the GPU workers."""
    if pool.get("num_gpus"):
        return {}
    return {"num_cpus": pool["num_cpus"]}


def _read_parquet_files(paths, *, fs, columns=None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    tables = [pq.read_table(p, filesystem=fs, columns=columns)
              for p in paths.column("path").to_pylist()]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def read_table_files(files: list[str], fs, *, pool: dict[str, Any] | None = None,
                     columns: list[str] | None = None):
    """A lazy Ray Dataset of Parquet ``files`` listed on the driver, one block per file.

    ``ray.data.read_parquet`` lists its paths in a ``ListFiles`` task that asks for a
    whole CPU and never fuses with what follows; behind an actor pool that holds every
    CPU it never runs (the one-CPU hang of the feature stage). Here each file is read by
    a ``map_batches`` call with the pool's resources (:func:`read_args`), which Ray Data
    fuses into the pool's actors: no task of its own, nothing to wait for.

    ``fs`` is an fsspec or pyarrow filesystem (pickled to the readers).
    """
    import pyarrow as pa
    import ray.data
    configure_ray_data()
    if not files:
        raise ValueError("no Parquet files to read: the stage's input table is empty")
    blocks = [pa.table({"path": [f]}) for f in files]
    return ray.data.from_blocks(blocks).map_batches(        # see io.readers.read_images
        _read_parquet_files, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
        fn_kwargs={"fs": fs, "columns": columns}, **read_args(pool or {"num_cpus": 1}))


def map_bounded(task: Callable, items: Iterable, *,
                max_in_flight: int | Callable[[], int] | None = None) -> Iterator[Any]:
    """Results of ``task.remote(*item)`` for every item, in the order of ``items``.

    At most ``max_in_flight`` tasks are submitted and not yet collected (default: twice
    the cluster's CPUs; a callable is asked again before each submission, so a cluster
    that grows gets more), and the driver holds one result at a time, so merging the
    partial results of a table of any number of files takes a few results' memory on
    the driver and in the object store (submitting every task at once and collecting
    with one ``ray.get`` holds them all). Results come in submission order, so a merge
    adds them in the same order on every run. ``task`` may also be a plain function
    that submits and returns an object reference.
    """
    import ray
    if max_in_flight is None:
        max_in_flight = lambda: 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # noqa: E731
    limit = max_in_flight if callable(max_in_flight) else lambda: max_in_flight
    submit = getattr(task, "remote", task)
    pending: collections.deque = collections.deque()
    for item in items:
        while pending and len(pending) >= max(1, limit()):
            yield ray.get(pending.popleft())
        pending.append(submit(*item))
    while pending:
        yield ray.get(pending.popleft())


def release_memory(slack: int = 32 << 20) -> None:
    """Hand memory freed by a finished task back to the operating system once the process
    holds ``slack`` bytes more than after the last time: Arrow's pool, and the C heap
    where glibc's ``malloc_trim`` exists (as Dask's workers do).

    Freed blocks otherwise stay with the process, and a worker's resident size crept up
    over hundreds of tasks (a million-image run's workers ended a fifth larger than a
    small run's). Not after every task: the next task would fault the returned pages
    in again.
    """
    import ctypes
    import ctypes.util
    import pyarrow as pa
    global _TRIM, _KEPT
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):       # not glibc (macOS, musl): nothing to trim
            _TRIM = False
    if not _TRIM or _resident() < _KEPT + slack:
        return
    pa.default_memory_pool().release_unused()
    _TRIM(0)
    _KEPT = _resident()


def _resident() -> int:
    """This process's resident bytes (Linux: ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 1 << 62                          # unknown: trim every time


#: glibc's ``malloc_trim`` once looked up (``False`` where there is none), and the
#: resident bytes after the last trim.
_TRIM = None
_KEPT = 0


def make_basis(kind: str, radius: int, ndim: int = 2, channels: int = 1):
    """The fit basis at dilation 1 (``isotropic`` or ``full``); a
    :class:`~kernelbank.core.basis.Basis` of ``C`` channels when ``channels > 1``."""
    import kernelbank as kb
    builder = kb.Basis.isotropic if getattr(kind, "value", kind) == "isotropic" else kb.Basis.full
    return builder(radius=radius, ndim=ndim, channels=channels)


@contextmanager
def timed(record: dict[str, Any], key: str = "seconds") -> Iterator[None]:
    """Store the wall time of the ``with`` block in ``record[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record[key] = round(time.perf_counter() - start, 3)
