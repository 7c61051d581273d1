"""Benchmark: the whole ``kernelbank run`` against the same work done in one process.

    python bench/pipeline.py [--images 2000] [--size 64] [--scale 4] [--quick]

Writes ``--images`` and ``--scale × --images`` labelled PNG textures (GMRF samples of
two classes, train and test splits) to a temp folder, then measures in this run:

* the baseline: in one process, read + decode every file, the one pass
  (:func:`kernelbank.core.fit.image_statistics`: own kernels, window sums, residual
  descriptors), class statistics and the pooled bank, bank features and likelihood from
  the sums, and the streaming ridge classifier (alpha by CV) — everything
  ``kernelbank run`` computes, with the pipeline's default settings; measured before and
  after the Ray runs, with torch's default threads and with one, the fastest kept;
* Ray start-up (``ray.init``), reported alone;
* ``run_pipeline`` at 1× and ``scale``×: wall time of the whole run (its own Parquet
  writes and the publication included), each stage's rate, time to first fitted batch,
  and peak resident memory of the driver plus every Ray process (sampled every 0.1 s).

Ratios printed: whole run / in-process (target ≥ 0.5) and fit stage / in-process
read + decode + one pass (target ≥ 0.7), at ``scale``×, where start-up costs weigh least.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np


def write_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` GMRF textures of two classes as ``root/{train,test}/c<i>/*.png``."""
    from kernelbank.datasets import random_stable_kernel, write_synthetic_dataset
    rng = np.random.default_rng(seed)
    kernels = {f"c{i}": random_stable_kernel(2, random_state=rng) for i in range(2)}
    write_synthetic_dataset(root, kernels, n_per_class=n // 2, shape=(size, size),
                            random_state=rng)


class PeakRSS:
    """Peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def sample() -> int:
        """Sum of VmRSS over this process and its descendants (Linux ``/proc``)."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    pass
        family, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            children = [p for p, pp in parents.items() if pp == parent and p not in family]
            family.update(children)
            frontier.extend(children)
        total = 0
        for pid in family:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
            except (OSError, StopIteration):
                pass
        return total

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def in_process(root: Path, threads: int | None = None, batch: int = 256) -> dict[str, float]:
    """Rates of read + decode + one pass, and of everything ``kernelbank run`` computes."""
    files = sorted(root.rglob("*.png"))
    return in_process_records(lambda: [f.read_bytes() for f in files],
                              ids=[str(f) for f in files],
                              labels=[f.parent.name for f in files],
                              splits=[f.parent.parent.name for f in files],
                              threads=threads, batch=batch)


def in_process_records(load: Callable[[], list[bytes]], *, ids: list[str], labels: list[str],
                       splits: list[str], threads: int | None = None, batch: int = 256,
                       config=None) -> dict[str, float]:
    """Rates of ``load()`` + decode + one pass, and of everything ``kernelbank run`` computes.

    ``load`` returns the encoded images (in the order of ``ids``); it runs inside the
    timed region, so the baseline pays for its reads as the pipeline does. ``config``: the
    run's :class:`~kernelbank.config.FitConfig` (default: the pipeline's defaults).
    """
    import torch
    from threadpoolctl import threadpool_limits
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        # NumPy's BLAS (the ridge's eigh, the fold scatters) gets the same thread count
        # as torch: its default spin-waiting threads are slower than one on a busy machine
        with threadpool_limits(threads or default):
            return _in_process(load, ids, labels, np.array(splits), batch, config)
    finally:
        torch.set_num_threads(default)


def _in_process(load, ids: list[str], labels: list[str], splits: np.ndarray, batch: int,
                config=None) -> dict[str, float]:
    import torch
    import kernelbank as kb
    from kernelbank.config import FitConfig
    from kernelbank.core.fit import image_statistics
    from kernelbank.core.ridge import StreamingRidge, fold_of
    from kernelbank.io.decode import decode_bytes
    from kernelbank.stages.common import make_basis
    config = config or FitConfig()
    basis = make_basis(config.basis, config.radius)
    start = time.perf_counter()
    images = [decode_bytes(blob, name) for blob, name in zip(load(), ids)]
    parts = []
    for i in range(0, len(images), batch):
        parts.append(image_statistics(np.stack(images[i:i + batch]), basis,
                                      dilations=config.dilations, scales=config.scales,
                                      descriptors=config.descriptors))
    one_pass = time.perf_counter()
    # reduce: class statistics of the train split, pooled bank per dilation
    train = np.nonzero(splits == "train")[0]
    stats = []
    for e, (_, d) in enumerate(parts[0].scale_index):
        sums = [p.sums[e] for p in parts]
        merged = kb.core.sums.WindowSums(torch.cat([s.cross for s in sums])[train],
                                         torch.cat([s.first for s in sums])[train],
                                         torch.cat([s.n_pixels for s in sums])[train],
                                         config.radius, d, 2)
        stats.append(kb.ClassStats.from_sums(merged, [labels[i] for i in train],
                                             basis.with_dilation(d)))
    bank = kb.KernelBank.concat([kb.KernelBank.from_stats(s, "pooled") for s in stats])
    likelihood = kb.LikelihoodClassifier.from_stats(stats, z=None)
    rows = []
    for p in parts:
        bank_values, _ = kb.bank_features_from_sums(p.sums, bank, joint=True)
        likelihood.predict_from_sums(p.sums)
        rows.append(np.concatenate([p.coef.flatten(1).numpy(), p.mse.log().numpy(),
                                    *([] if p.descriptors is None
                                      else [p.descriptors.flatten(1).numpy()]),
                                    bank_values.numpy()], 1))
    x = np.concatenate(rows)
    folds = fold_of(ids, 5)
    fold_stats = [StreamingRidge.from_block(x[(folds == k) & (splits == "train")],
                                            [labels[i] for i in np.nonzero(
                                                (folds == k) & (splits == "train"))[0]])
                  for k in range(5)]
    alpha, _ = StreamingRidge.choose_alpha(fold_stats)
    model = sum(fold_stats, StreamingRidge.empty(x.shape[1])).solve(alpha)
    scores = ((x - model["mean"]) / model["scale"]) @ model["weights"] + model["intercept"]
    predicted = np.asarray(model["classes"])[scores.argmax(1)]
    end = time.perf_counter()
    test = splits == "test"
    return {"one_pass": len(ids) / (one_pass - start), "everything": len(ids) / (end - start),
            "accuracy": float((predicted[test] == np.array(labels)[test]).mean()),
            "threads": torch.get_num_threads()}


def ray_run(root: Path, out: Path) -> dict[str, float]:
    """The whole pipeline (default settings), its per-stage rates and peak memory."""
    from kernelbank.config import PipelineConfig, ReadConfig
    from kernelbank.io.manifest import save_listing
    from kernelbank.io.storage import read_filesystem
    from kernelbank.io.tables import PartWriter
    from kernelbank.stages.fit import fit_blocks
    from kernelbank.stages.pipeline import run_pipeline
    read = ReadConfig(str(root))
    config = PipelineConfig(read=read, output=str(out), overwrite=True)
    start = time.perf_counter()
    scratch = out.parent / f"{out.name}-first"
    fs, _ = read_filesystem(str(scratch))
    manifest = save_listing(read, fs, str(scratch / "_inputs.parquet"))
    writer = PartWriter(fs, str(scratch / "fit"), str(scratch / "errors"), "first")
    next(fit_blocks(read, config.fit, manifest, None, writer))
    first = time.perf_counter() - start
    with PeakRSS() as memory:
        begin = time.perf_counter()
        summary = run_pipeline(config)
        seconds = time.perf_counter() - begin
    n = summary["images"]
    return {"images": n, "seconds": seconds, "rate": n / seconds, "first_result_s": first,
            "stages": {k: v.get("images_per_second") for k, v in summary["stages"].items()},
            "fit_rate": summary["stages"]["fit"]["images_per_second"],
            "accuracy": summary["test_accuracy"], "peak_rss_gib": memory.peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="200 images, scale 2")
    args = parser.parse_args()
    if args.quick:
        args.images, args.scale = 200, 2
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "x1", Path(tmp) / f"x{args.scale}"
        write_images(small, args.images, args.size)
        write_images(large, args.images * args.scale, args.size, seed=1)
        before = max((in_process(large, t) for t in (None, 1)), key=lambda r: r["everything"])
        import ray
        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - start
        ray.data.DataContext.get_current().enable_progress_bars = False
        one = ray_run(small, Path(tmp) / "out1")
        big = ray_run(large, Path(tmp) / f"out{args.scale}")
        cpus = ray.cluster_resources().get("CPU", 0)
        ray.shutdown()
        after = max((in_process(large, t) for t in (None, 1)), key=lambda r: r["everything"])
    base = max(before, after, key=lambda r: r["everything"])
    print(f"machine: {os.cpu_count()} cores, ray CPUs {cpus:g}; {args.size}x{args.size} images, "
          "default recipe (full r2, dilations 1-3, residual descriptors, pooled bank)")
    print(f"ray start-up                          {startup:8.2f} s")
    print(f"in-process read+decode+one pass       {base['one_pass']:8.1f} images/s "
          f"({base['threads']} torch threads; before/after {before['one_pass']:.1f}/"
          f"{after['one_pass']:.1f})")
    print(f"in-process everything run computes    {base['everything']:8.1f} images/s "
          f"(before/after {before['everything']:.1f}/{after['everything']:.1f}); "
          f"test accuracy {base['accuracy']:.3f}")
    for label, r in (("1x", one), (f"{args.scale}x", big)):
        stages = ", ".join(f"{k} {v:.0f}/s" for k, v in r["stages"].items() if v)
        print(f"kernelbank run {label:>4} ({r['images']:6d} images) {r['rate']:8.1f} images/s "
              f"whole run; stages: {stages}; first result {r['first_result_s']:.2f} s; "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB; accuracy {r['accuracy']:.3f}")
    print(f"ratio whole run / in-process everything ({args.scale}x): "
          f"{big['rate'] / base['everything']:.2f}  (target >= 0.5)")
    print(f"ratio fit stage / in-process read+decode+one pass ({args.scale}x): "
          f"{big['fit_rate'] / base['one_pass']:.2f}  (target >= 0.7)")
    print(f"peak memory {args.scale}x / 1x: "
          f"{big['peak_rss_gib'] / max(one['peak_rss_gib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
