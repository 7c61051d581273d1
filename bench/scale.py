"""Benchmark: ``kernelbank run`` at 10k, 100k and 1M images — rates, memory, bytes read.

    python bench/scale.py [--images 10000,100000,1000000] [--size 32] [--s3]
                          [--classes 3] [--sample 2000] [--json scale.json]

Per N, in one run of this script:

1. **Generate** N labelled PNG images straight into Parquet shards in the format
   ``kernelbank pack`` writes (:class:`kernelbank.io.pack.ShardWriter`, then
   ``_manifest.json``), streaming one row group at a time. Each class is a GMRF with its
   own isotropic kernel (:mod:`kernelbank.datasets.synthetic`); a few large periodic
   fields per class are simulated once, and every image is a distinct crop of one of them
   under one of the 8 flips/rotations (which keep an isotropic kernel's distribution):
   the ``k``-th image of a class takes the ``(a·k + b) mod M``-th (field, offset,
   flip) triple, a permutation of all ``M`` triples, so no two images coincide and 1M
   images need no 1M simulations. 80 % ``train``, 20 % ``test`` (by a hash-free stride).
   With ``--s3`` the shards are written to a moto S3 server this script starts on
   127.0.0.1 and the run reads ``s3://`` (its output stays on local disk: moto keeps
   objects in memory, and the statistics table of 1M images is gigabytes).
2. **Run** ``kernelbank run`` (fit → reduce → features → classify → report) on them as
   a child process (``python -m kernelbank.cli run``, through a two-line wrapper that
   also asks Ray for its spill totals before exiting, where the run left its Ray running:
   with the report, ``kernelbank run`` stops its embedded Ray itself, and the spill
   column says n/a), while this script samples with
   psutil every 0.2 s: the driver's RSS, the summed RSS of all Ray worker processes
   (``ray::…``), the largest single worker, Ray's own daemons (raylet, GCS…), and when
   the first ``fit/`` part file appears (time to first result).
3. **Baseline**, in this process: the first ``--sample`` images of the same shards
   read, decoded, one pass (``image_statistics``), class statistics, bank, features,
   likelihood and the streaming ridge with alpha by CV — everything the run computes,
   in one process (``bench/pipeline.py``'s ``in_process_records``).

4. **Floor**: the same shards read and PNG-decoded by one process per core, nothing else
   (:func:`read_decode_floor`). The whole command's wall time (Ray start-up and report
   included) is printed as a multiple of it: the pipeline around the math should cost
   little more than reading and decoding (target: <= 12x at 200k and 1M). Unlike the
   in-process ratio this one does not get easier when the one pass gets faster.

Printed per N: images/s of each stage and of the whole run (its ``summary.json`` seconds,
and the child's wall time with Ray start-up and the report), time to first result, peak
memory, object-store spill, bytes read / input bytes, and the ratios whole run /
baseline and fit stage / baseline read+decode+one pass. Then driver and worker memory
against the smallest N (targets: driver ≤ 1.2× from 10k to 1M, workers flat) and the
JSON of every figure (``--json``).

Absolute rates on a shared 2-core machine are noise; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

#: Child-process body: ``kernelbank run`` as the CLI runs it, then Ray's spill totals.
_CHILD = """
import json, re, sys
from kernelbank.cli import main
status = main(sys.argv[2:])
spill = {}
try:
    import ray
    from ray._private.internal_api import memory_summary
    if not ray.is_initialized():    # `kernelbank run` stopped its embedded Ray: asking
        raise RuntimeError("Ray was stopped by the run")   # would start a new one
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    for key, pattern in (("spilled_mib", r"Spilled (\\d+) MiB"),
                         ("restored_mib", r"Restored (\\d+) MiB")):
        found = re.search(pattern, text)
        spill[key] = int(found.group(1)) if found else 0
    spill["summary"] = text.strip().splitlines()[-6:]
except Exception as error:                  # the figures are optional, the run is not
    spill["error"] = f"{type(error).__name__}: {error}"
with open(sys.argv[1], "w") as handle:
    json.dump(spill, handle)
sys.exit(status)
"""


# ---------------------------------------------------------------------------- images
class TexturePool:
    """Distinct uint8 crops of a few simulated GMRF fields per class.

    Parameters
    ----------
    n_classes : int
    size : int
        Side of every image.
    fields, field_side : int
        Simulated periodic fields per class and their side.
    seed : int
    """

    FLIPS = 8

    def __init__(self, n_classes: int, size: int, fields: int = 4, field_side: int = 512,
                 seed: int = 0):
        from kernelbank.datasets import random_stable_kernel, simulate_gmrf
        from kernelbank.datasets.synthetic import _to_uint8
        rng = np.random.default_rng(seed)
        self.size, self.fields, self.side = size, fields, field_side
        self.names = [f"c{i}" for i in range(n_classes)]
        self.textures = []
        for _ in self.names:
            kernel = random_stable_kernel(2, random_state=rng)
            samples = simulate_gmrf(kernel, (field_side, field_side), n=fields, random_state=rng)
            # the fields are periodic: wrapping them by size-1 makes every crop a slice
            self.textures.append(np.stack([np.pad(_to_uint8(s), (0, size - 1), mode="wrap")
                                           for s in samples]))
        self.capacity = fields * field_side * field_side * self.FLIPS
        self.stride = self._coprime(int(rng.integers(self.capacity // 3, self.capacity)))
        self.shift = int(rng.integers(self.capacity))

    def _coprime(self, a: int) -> int:
        while np.gcd(a, self.capacity) != 1:
            a += 1
        return a

    def image(self, label: int, k: int) -> np.ndarray:
        """The ``k``-th image of class ``label``: distinct for every ``k < capacity``."""
        if k >= self.capacity:
            raise ValueError(f"class {label} has {self.capacity} distinct crops; asked for "
                             f"image {k}: use more or larger fields")
        index = (self.stride * k + self.shift) % self.capacity
        index, flip = divmod(index, self.FLIPS)
        index, x = divmod(index, self.side)
        field, y = divmod(index, self.side)
        crop = self.textures[label][field, y:y + self.size, x:x + self.size]
        if flip & 4:
            crop = crop.T
        return np.ascontiguousarray(np.rot90(crop, flip & 3))


def png_bytes(image: np.ndarray, level: int = 6) -> bytes:
    """A greyscale 8-bit PNG of ``image`` (IHDR, one IDAT, IEND; rows unfiltered).

    Written directly (zlib and CRCs) because PIL's per-image overhead, not compression,
    dominates at 32×32, and a million images are generated here; decoders read it as
    any PNG (checked on the first image of every dataset).
    """
    height, width = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = np.zeros((height, width + 1), np.uint8)          # filter byte 0 on every row
    rows[:, 1:] = image
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b""))


def generate_shards(fs, root: str, n: int, pool: TexturePool, *, shard_mb: float = 256,
                    group_rows: int = 1024, test_every: int = 5) -> dict:
    """Write ``n`` images (classes in turn, every ``test_every``-th in ``test``) as shards.

    Streaming: one row group (``group_rows`` images) in memory at a time; a new shard
    starts when the current one holds ``shard_mb`` of images. Returns ``_manifest.json``.
    """
    from kernelbank.io.pack import ShardWriter, write_shards_manifest
    from kernelbank.io.storage import join
    start = time.perf_counter()
    fs.makedirs(root, exist_ok=True)
    n_classes = len(pool.names)
    shards: list[dict] = []
    done = 0
    while done < n:
        name = f"shard-{len(shards):06d}.parquet"
        with ShardWriter(fs, join(root, name)) as shard:
            while done < n and shard.image_bytes < shard_mb * 2 ** 20:
                rows = range(done, min(n, done + group_rows))
                labels = [i % n_classes for i in rows]
                splits = ["test" if (i // n_classes) % test_every == test_every - 1 else "train"
                          for i in rows]
                ids = [f"{s}/{pool.names[c]}/{i:08d}.png" for i, c, s in zip(rows, labels, splits)]
                images = [png_bytes(pool.image(c, i // n_classes)) for i, c in zip(rows, labels)]
                shard.write(ids, ids, [pool.names[c] for c in labels], splits, images)
                done = rows.stop
        shards.append({"path": name, **shard.entry})
    return write_shards_manifest(fs, root, shards, source="bench/scale.py (GMRF crops)",
                                 shard_mb=shard_mb, group_rows=group_rows,
                                 image_size=pool.size, classes=len(pool.names),
                                 seconds=round(time.perf_counter() - start, 3))


def _reusable(fs, root: str, n: int, args) -> dict | None:
    """The shards a previous ``--keep`` run generated with the same settings, if any."""
    from kernelbank.io.storage import join
    try:
        manifest = json.loads(fs.cat_file(join(root, "_manifest.json")))
    except FileNotFoundError:
        return None
    same = (manifest.get("rows") == n and manifest.get("shard_mb") == args.shard_mb
            and manifest.get("group_rows") == args.group_rows
            and manifest.get("image_size") == args.size
            and manifest.get("classes") == args.classes)
    return dict(manifest, reused=True) if same else None


def read_sample(fs, root: str, manifest: dict, count: int) -> tuple[list, list, list, list]:
    """The first ``count`` records of the shards: ``(ids, labels, splits, images)``."""
    import pyarrow.parquet as pq
    from kernelbank.io.storage import join
    ids, labels, splits, images = [], [], [], []
    for entry in manifest["shards"]:
        with fs.open(join(root, entry["path"]), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                ids += table.column("id").to_pylist()
                labels += table.column("label").to_pylist()
                splits += table.column("split").to_pylist()
                images += table.column("image").to_pylist()
                if len(ids) >= count:
                    return ids[:count], labels[:count], splits[:count], images[:count]
    return ids, labels, splits, images


# ---------------------------------------------------------------------------- the floor
def _read_decode_units(root: str, s3_endpoint: str | None, units: list[tuple[str, int]]
                       ) -> int:
    """Read the given (shard, row group) units and PNG-decode every image; images done."""
    import pyarrow.parquet as pq
    from kernelbank.io.decode import decode_bytes
    from kernelbank.io.storage import join, resolve
    fs, _ = resolve(root if s3_endpoint is None else f"s3://{root}", s3_endpoint=s3_endpoint)
    done = 0
    for shard in sorted({u[0] for u in units}):
        with fs.open(join(root, shard), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            for _, group in (u for u in units if u[0] == shard):
                column = parquet.read_row_group(group, columns=["id", "image"])
                for name, data in zip(column.column("id").to_pylist(),
                                      column.column("image").to_pylist()):
                    decode_bytes(data, name)
                    done += 1
    return done


def read_decode_floor(fs, root: str, manifest: dict, s3_endpoint: str | None,
                      processes: int | None = None) -> dict:
    """The read + decode floor: the same shards read and PNG-decoded by one process per
    core (row groups dealt round-robin), nothing else — no Ray, no fit, no writes.

    Whatever the pipeline does around its math, it cannot beat this; the whole run is
    reported as a multiple of it.
    """
    import pyarrow.parquet as pq
    from concurrent.futures import ProcessPoolExecutor
    from kernelbank.io.storage import join
    processes = processes or os.cpu_count() or 1
    units = []
    for entry in manifest["shards"]:
        with fs.open(join(root, entry["path"]), "rb") as handle:
            groups = pq.ParquetFile(handle).num_row_groups
        units += [(entry["path"], g) for g in range(groups)]
    shares = [units[k::processes] for k in range(processes)]
    start = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:       # process start-up counts, as a run's
        images = sum(pool.map(_read_decode_units, [root] * processes,
                              [s3_endpoint] * processes, shares))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "images": images, "processes": processes,
            "images_per_second": round(images / max(seconds, 1e-9), 1)}


# ---------------------------------------------------------------------------- measuring
class TreeMemory:
    """Peak RSS of a process tree, sampled in a thread with psutil.

    ``driver`` is the root process; ``workers`` the summed RSS of its descendants whose
    command line starts with ``ray::`` (task and actor workers), ``worker_max`` the
    largest of them; ``daemons`` every other descendant (raylet, GCS, log monitor…).
    Also records when a file matching ``first_glob`` first exists (seconds from start).
    """

    def __init__(self, pid: int, first_glob: tuple[Path, str] | None = None,
                 interval: float = 0.2):
        import psutil
        self.root = psutil.Process(pid)
        self.interval, self.first_glob = interval, first_glob
        self.peak = {"driver": 0, "workers": 0, "worker_max": 0, "daemons": 0, "total": 0}
        # CPU seconds by what a process was doing when they were spent: a Ray worker's
        # title (ray::MapWorker(...), ray::Write, ray::IDLE…) changes with its task
        self.largest_worker = ""        # what the largest Ray worker ran at its peak
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self._last_cpu: dict[int, float] = {}
        self.first_result_s: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil
        try:
            driver = self.root.memory_info().rss
            self._count_cpu(self.root, "driver")
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        workers, worker_max, daemons = 0, 0, 0
        worker_max_name = ""
        for child in children:
            try:
                rss = child.memory_info().rss
                name = " ".join(child.cmdline()[:1])
                self._count_cpu(child, _cpu_category(name))
            except psutil.Error:
                continue
            if name.startswith("ray::"):
                workers += rss
                if rss > worker_max:
                    worker_max, worker_max_name = rss, _cpu_category(name)
            else:
                daemons += rss
        now = {"driver": driver, "workers": workers, "worker_max": worker_max,
               "daemons": daemons, "total": driver + workers + daemons}
        if worker_max > self.peak["worker_max"]:
            self.largest_worker = worker_max_name
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
        self.samples += 1

    def _count_cpu(self, process, category: str) -> None:
        times = process.cpu_times()
        used = times.user + times.system
        self.cpu[category] += used - self._last_cpu.get(process.pid, 0.0)
        self._last_cpu[process.pid] = used

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            if self.first_result_s is None and self.first_glob is not None:
                base, pattern = self.first_glob
                if any(p.name[0] not in "_." for p in base.glob(pattern)):
                    self.first_result_s = time.perf_counter() - self._start
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {**{f"{k}_peak_mib": round(v / 2 ** 20, 1) for k, v in self.peak.items()},
                "largest_worker": self.largest_worker}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per category, largest first."""
        return {k: round(v, 1) for k, v in sorted(self.cpu.items(), key=lambda kv: -kv[1])}


def _cpu_category(command: str) -> str:
    """``ray::<task or actor>`` for Ray workers (what they run when sampled, ``ray::IDLE``
    between tasks), the program's name for Ray's daemons."""
    if command.startswith("ray::"):
        return command.split(" ")[0]
    return Path(command.split(" ")[0]).name or command


def fit_config(run_args: list[str]):
    """The fit settings ``kernelbank run <run_args>`` would use, parsed by its own parser."""
    import argparse
    from kernelbank.commands.pipeline_args import add_pipeline_options, pipeline_config
    parser = argparse.ArgumentParser()
    add_pipeline_options(parser)
    known, _ = parser.parse_known_args(["--input", "unused", "--output", "unused", *run_args])
    return pipeline_config(known, check_input=False).fit


def run_kernelbank(input_url: str, output: Path, env: dict, log_path: Path,
                   run_args: list[str] = ()) -> dict:
    """``kernelbank run`` in a child process: its summary, memory, spill and timings."""
    spill_file = output.parent / f"{output.name}.spill.json"
    command = [sys.executable, "-c", _CHILD, str(spill_file), "run", "--input", input_url,
               "--output", str(output), "--overwrite", *run_args]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemory(child.pid, first_glob=(output, "runs/*/fit/*.parquet"))
        status = child.wait()
    wall = time.perf_counter() - start
    peaks = memory.stop()
    cpu = memory.cpu_seconds()
    if status != 0:
        raise RuntimeError(f"kernelbank run exited with {status}; see {log_path}")
    run_id = json.loads((output / "LATEST.json").read_text())["run_id"]
    summary = json.loads((output / "runs" / run_id / "summary.json").read_text())
    spill = json.loads(spill_file.read_text()) if spill_file.exists() else {}
    return {"summary": summary, "wall_s": wall, "first_result_s": memory.first_result_s,
            "memory": peaks, "cpu_seconds": cpu, "spill": spill, "samples": memory.samples}


# ---------------------------------------------------------------------------- one point
def measure(n: int, args, pool: TexturePool, work: Path, s3_endpoint: str | None) -> dict:
    """Generate, run and baseline one dataset of ``n`` images; every figure as a dict."""
    from kernelbank.io.storage import resolve
    from pipeline import in_process_records
    if s3_endpoint:
        input_url = f"s3://kb-scale/n{n}"
        fs, root = resolve(input_url, s3_endpoint=s3_endpoint)
        if not fs.exists("kb-scale"):
            fs.mkdir("kb-scale")
    else:
        input_url = str(work / f"shards-{n}")
        fs, root = resolve(input_url)
    from kernelbank.io.decode import decode_bytes
    if not np.array_equal(decode_bytes(png_bytes(pool.image(0, 0)), "x.png"), pool.image(0, 0)):
        raise RuntimeError("the PNG encoder does not round-trip")
    start = time.perf_counter()
    manifest = _reusable(fs, root, n, args) if args.reuse else None
    if manifest is None:
        manifest = generate_shards(fs, root, n, pool, shard_mb=args.shard_mb,
                                   group_rows=args.group_rows)
        generated = time.perf_counter() - start
    else:
        generated = manifest.get("seconds", 0.0)
    print(f"[scale] {n} images: {manifest['bytes'] / 2**20:.1f} MiB in "
          f"{len(manifest['shards'])} shards, generated in {generated:.1f} s"
          + (" (reused)" if args.reuse and manifest.get("reused") else ""), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + os.environ.get("PYTHONPATH", "").split(
            os.pathsep)).rstrip(os.pathsep))
    output = work / f"out-{n}"
    shutil.rmtree(output, ignore_errors=True)   # a fresh run: never resume an earlier attempt
    floor = read_decode_floor(fs, root, manifest, s3_endpoint)
    print(f"[scale] {n} images: read + decode floor {floor['seconds']:.1f} s "
          f"({floor['images_per_second']:,.0f} images/s, {floor['processes']} processes)",
          flush=True)
    run = run_kernelbank(input_url, output, env, work / f"run-{n}.log", args.run_args)
    summary = run["summary"]
    ids, labels, splits, images = read_sample(fs, root, manifest, min(n, args.sample))
    base = max((in_process_records(lambda: list(images), ids=ids, labels=labels,
                                   splits=splits, threads=t, config=fit_config(args.run_args))
                for t in (None, 1)),
               key=lambda r: r["everything"])
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)
        if s3_endpoint:
            fs.rm(root, recursive=True)
        else:
            shutil.rmtree(input_url, ignore_errors=True)
    stages = {k: {"seconds": v.get("seconds"), "images_per_second": v.get("images_per_second")}
              for k, v in summary["stages"].items()}
    fit = summary["stages"]["fit"]
    images_done = summary["images"]
    return {
        "images": n, "fitted": images_done, "errors": summary["errors"],
        "input": "s3 (moto, 127.0.0.1)" if s3_endpoint else "local disk",
        "input_mib": round(manifest["bytes"] / 2 ** 20, 2), "shards": len(manifest["shards"]),
        "generate_s": round(generated, 2),
        "stages": stages, "run_seconds": summary["seconds"], "child_wall_s": round(run["wall_s"], 2),
        "ray_startup_s": round(summary.get("ray", {}).get("seconds", 0.0), 2),
        "rate_run": round(images_done / summary["seconds"], 1),
        "rate_wall": round(images_done / run["wall_s"], 1),
        "first_result_s": None if run["first_result_s"] is None
        else round(run["first_result_s"], 2),
        "memory": run["memory"], "cpu_seconds": run["cpu_seconds"], "spill": run["spill"],
        "bytes_read": fit.get("bytes_read"), "input_bytes": fit.get("input_bytes"),
        "read_ratio": round(fit.get("bytes_read", 0) / max(fit.get("input_bytes", 1), 1), 4),
        "fit_bytes_per_image": fit.get("bytes_per_image"),
        "test_accuracy": summary.get("test_accuracy"),
        "baseline": {"sample": len(ids), "one_pass": round(base["one_pass"], 1),
                     "everything": round(base["everything"], 1), "threads": base["threads"],
                     "accuracy": base["accuracy"]},
        "ratio_run": round(images_done / summary["seconds"] / base["everything"], 3),
        "ratio_fit": round(fit["images_per_second"] / base["one_pass"], 3),
        "floor": floor,
        "floor_multiple_wall": round(run["wall_s"] / max(floor["seconds"], 1e-9), 2),
        "floor_multiple_run": round(summary["seconds"] / max(floor["seconds"], 1e-9), 2),
    }


# ---------------------------------------------------------------------------- report
def print_table(points: list[dict]) -> None:
    rows = [
        ("images", lambda p: f"{p['images']:,}"),
        ("input", lambda p: f"{p['input_mib']:.0f} MiB, {p['shards']} shards"),
        ("generate (s)", lambda p: f"{p['generate_s']:.0f}"),
        *[(f"{s} images/s", (lambda s: lambda p: f"{p['stages'][s]['images_per_second']:,.0f}"
                             f" ({p['stages'][s]['seconds']:.0f} s)")(s))
          for s in ("fit", "reduce", "features", "classify")],
        ("whole run images/s", lambda p: f"{p['rate_run']:,.0f} ({p['run_seconds']:.0f} s)"),
        ("with start-up+report", lambda p: f"{p['rate_wall']:,.0f} ({p['child_wall_s']:.0f} s)"),
        ("first result (s)", lambda p: "n/a" if p["first_result_s"] is None
         else f"{p['first_result_s']:.1f}"),
        ("driver peak RSS MiB", lambda p: f"{p['memory']['driver_peak_mib']:,.0f}"),
        ("workers peak RSS MiB", lambda p: f"{p['memory']['workers_peak_mib']:,.0f}"),
        ("largest worker MiB", lambda p: f"{p['memory']['worker_max_peak_mib']:,.0f}"),
        ("largest worker ran", lambda p: p["memory"].get("largest_worker", "")[-22:]),
        ("ray daemons MiB", lambda p: f"{p['memory']['daemons_peak_mib']:,.0f}"),
        ("spilled MiB", lambda p: str(p["spill"].get("spilled_mib", "n/a"))),
        ("bytes read / input", lambda p: f"{p['read_ratio']:.4f}"),
        ("fit table bytes/image", lambda p: f"{p['fit_bytes_per_image']:,.0f}"),
        ("test accuracy", lambda p: f"{p['test_accuracy']:.3f}"),
        ("baseline everything/s", lambda p: f"{p['baseline']['everything']:,.0f} "
         f"(n={p['baseline']['sample']})"),
        ("baseline 1-pass/s", lambda p: f"{p['baseline']['one_pass']:,.0f}"),
        ("read+decode floor (s)", lambda p: f"{p['floor']['seconds']:.1f} "
         f"({p['floor']['images_per_second']:,.0f}/s)"),
        ("whole command / floor", lambda p: f"{p['floor_multiple_wall']:.1f}x (<= 12)"),
        ("run (summary) / floor", lambda p: f"{p['floor_multiple_run']:.1f}x"),
        ("ratio run/baseline", lambda p: f"{p['ratio_run']:.2f} (>= 0.5)"),
        ("ratio fit/1-pass", lambda p: f"{p['ratio_fit']:.2f} (>= 0.7)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, cell in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(p):>22}" for p in points))
    for p in points:
        total = sum(p["cpu_seconds"].values())
        top = ", ".join(f"{k} {v:,.0f} s ({v / max(total, 1e-9):.0%})"
                        for k, v in list(p["cpu_seconds"].items())[:8])
        print(f"CPU seconds, {p['images']:,} images ({total:,.0f} s in all, "
              f"{os.cpu_count() * p['child_wall_s']:,.0f} core-seconds of wall): {top}")
    first = points[0]
    for p in points[1:]:
        d = p["memory"]["driver_peak_mib"] / max(first["memory"]["driver_peak_mib"], 1e-9)
        w = p["memory"]["worker_max_peak_mib"] / max(first["memory"]["worker_max_peak_mib"], 1e-9)
        print(f"{p['images']:,} vs {first['images']:,}: driver peak x{d:.2f} (target <= 1.2), "
              f"largest worker x{w:.2f} (target flat)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="10000,100000,1000000",
                        help="comma-separated dataset sizes (default 10000,100000,1000000)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="shards on a moto S3 server")
    parser.add_argument("--sample", type=int, default=2000,
                        help="images in the in-process baseline (default 2000)")
    parser.add_argument("--shard-mb", type=float, default=256)
    parser.add_argument("--group-rows", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where shards and outputs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep shards and outputs")
    parser.add_argument("--reuse", action="store_true",
                        help="use the shards a previous --keep run left in --workdir when "
                             "they have the same size, classes and sharding")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--run-args", type=shlex.split, default=[],
                        help="extra `kernelbank run` options, e.g. \"--radius 1 --dilations 1 "
                             "--no-descriptors\" (the in-process baseline uses the same fit "
                             "settings); default: the pipeline's defaults")
    args = parser.parse_args()
    sizes = [int(s) for s in args.images.split(",") if s.strip()]
    from read import start_moto
    moto, endpoint = start_moto() if args.s3 else (None, None)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kb-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    pool = TexturePool(args.classes, args.size)
    points = []
    try:
        for n in sizes:
            points.append(measure(n, args, pool, work, endpoint))
            print(json.dumps(points[-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"machine": machine(), "points": points},
                                                indent=1))
    finally:
        if moto is not None:
            moto.terminate()
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}; {args.size}x{args.size} PNG, {args.classes} GMRF classes, "
          + (f"`kernelbank run {' '.join(args.run_args)}`" if args.run_args else
             "default `kernelbank run` (full r2, dilations 1-3, descriptors, pooled bank, report)"))
    print_table(points)


def machine() -> str:
    import psutil
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


if __name__ == "__main__":
    main()
