"""Cost of the classify stage's heads on a large features table: ridge against Nyström.

Usage::

    python bench/classify_heads.py [--rows 1000000] [--features 300] [--classes 10]
                                   [--file-rows 50000] [--folder DIR] [--cpus 2]

Writes (once; reused when ``--folder`` already holds it) a synthetic features table of
``--rows`` rows and ``--features`` float32 columns in files of ``--file-rows`` rows, the
layout the feature stage writes (``id, path, label, split`` + feature columns, 80 %
train), then times, on one local Ray of ``--cpus`` CPUs, in one run:

* ``ridge (pipeline)``: :func:`kernelbank.stages.classify.classify_table` with the
  per-fold sums handed in, as ``kernelbank run`` does (the feature writes sum them);
* ``ridge (alone)``: the same with the sums computed by the stage's first pass
  (``kernelbank classify`` alone);
* ``nystroem (pipeline)``: ``--head nystroem`` (the default) with the sample handed in, as
  ``kernelbank run`` does (the feature writes gather it): fit on the sample, scoring pass;
* ``nystroem m=1024`` / ``m=512``: the same with the stage's own sample pass, at the
  default 256 rows per class and 1024 landmarks, and at 512 landmarks.

Prints seconds per head and the ratio to ``ridge (pipeline)``. The machine is shared:
ratios measured in the same run, not absolute times, are the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_table(folder: Path, rows: int, features: int, classes: int, file_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    marker = folder / "_kernelbank.json"
    spec = {"rows": rows, "features": features, "classes": classes, "file_rows": file_rows}
    if marker.exists() and json.loads(marker.read_text()).get("bench") == spec:
        return
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"f{j:03d}" for j in range(features)]
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.3, size=(classes, features)).astype(np.float32)
    for part, start in enumerate(range(0, rows, file_rows)):
        n = min(file_rows, rows - start)
        label = rng.integers(0, classes, n)
        x = rng.normal(size=(n, features)).astype(np.float32) + centres[label]
        ids = [f"img/{i:08d}.png" for i in range(start, start + n)]
        split = np.where(np.arange(start, start + n) % 5 == 4, "test", "train")
        pq.write_table(pa.table({"id": ids, "path": ids,
                                 "label": [f"c{k}" for k in label], "split": split,
                                 **{name: x[:, j] for j, name in enumerate(names)}}),
                       folder / f"part-{part:05d}.parquet")
    marker.write_text(json.dumps({"feature_names": names, "bench": spec}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--file-rows", type=int, default=50_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--runs", default="ridge (pipeline),ridge (alone),nystroem (pipeline),"
                        "nystroem m=1024,"
                        "nystroem m=512", help="comma-separated subset of the runs (the "
                        "first is the baseline of the ratios)")
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) /
                                                "kernelbank-bench-heads"))
    args = parser.parse_args(argv)
    import ray
    from kernelbank.config import ClassifyConfig
    from kernelbank.core.ridge import StreamingRidge
    from kernelbank.stages.classify import _train_file, classify_table
    from kernelbank.stages.common import map_bounded
    from kernelbank.stages.table import table_files

    folder = Path(args.folder)
    began = time.perf_counter()
    write_table(folder / "features", args.rows, args.features, args.classes, args.file_rows)
    print(f"# table: {args.rows} rows x {args.features} float32 columns, {args.classes} "
          f"classes ({time.perf_counter() - began:.0f} s to write or find)", flush=True)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        import fsspec
        fs = fsspec.filesystem("file")
        url = str(folder / "features")
        names = json.loads((folder / "features" / "_kernelbank.json").read_text())[
            "feature_names"]
        # what the feature writes hand the pipeline's classify stage (not timed: in a run
        # the feature stage sums them as it writes each file)
        train = ray.remote(num_cpus=1)(_train_file)
        folds = [StreamingRidge.empty(len(names)) for _ in range(5)]
        for parts in map_bounded(train, ((fs, p, names, 5) for p in table_files(fs, url))):
            folds = [a + b for a, b in zip(folds, parts)]
        # and the kernel head's sample, which the feature writes gather the same way
        from kernelbank.stages.classify import _kernel_sample
        sample = _kernel_sample(fs, table_files(fs, url), names,
                                ClassifyConfig().sample_per_class)
        runs = [("ridge (pipeline)", ClassifyConfig(head="ridge"), folds),
                ("ridge (alone)", ClassifyConfig(head="ridge"), None),
                ("nystroem (pipeline)", ClassifyConfig(head="nystroem"), sample),
                ("nystroem m=1024", ClassifyConfig(head="nystroem"), None),
                ("nystroem m=512", ClassifyConfig(head="nystroem", n_components=512), None)]
        wanted = args.runs.split(",")
        runs = sorted((r for r in runs if r[0] in wanted), key=lambda r: wanted.index(r[0]))
        results = {}
        for name, config, given in runs:
            start = time.perf_counter()
            summary = classify_table(url, config, predictions_dir=str(folder / "predictions" /
                                                                      name.replace(" ", "_")),
                                     gathered=given)
            results[name] = (time.perf_counter() - start, summary)
            extra = "" if config.head.value == "ridge" else \
                (f"; sample {summary['sample_rows']} rows in {summary['sample_seconds']:.1f} s, "
                 f"fit {summary['fit_seconds']:.1f} s, {summary['n_components']} landmarks")
            print(f"{name:<18} {results[name][0]:7.1f} s  test acc "
                  f"{summary['test_accuracy']:.4f}  alpha {summary['alpha']:g}{extra}",
                  flush=True)
        first = runs[0][0]
        for name, (seconds, _) in results.items():
            print(f"# {name}: {seconds / results[first][0]:.2f}x {first}")
        print(f"# machine shared: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
