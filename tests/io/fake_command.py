"""A Ray-free stand-in for a kernelbank command: the real run writer, two tiny stages.

Run as ``python -m tests.io.fake_command OUTPUT --value V [...]`` by the crash and
concurrency tests. It writes a run of OUTPUT through :class:`kernelbank.io.runs.RunWriter`
exactly as the pipeline does: a resumable ``fit`` stage of ``--parts`` Parquet part files
(ids ``<value>-<i>``; ids already written by an interrupted attempt are skipped), then a
``reduce`` stage with one JSON file summing them, then publishes. Fault points
(``fake.part<k>``, ``fit.finish``, ``reduce.finish``, ``publish``, ``published``) let a
test SIGKILL it anywhere (``KERNELBANK_TESTING=1 KERNELBANK_FAULT_KILL_AT=<point>``).

Prints one JSON line: ``run_id``, ``resumed``, ``written`` (ids this attempt wrote).
Exit status 3 when the publication was refused (another run published first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa

from kernelbank import faults
from kernelbank.io.layout import write_json
from kernelbank.io.runs import PublishConflict, RunWriter
from kernelbank.io.storage import join
from kernelbank.io.tables import write_table

ROWS_PER_PART = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--value", type=int, default=1)
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--ready", help="file created once the stages are written")
    parser.add_argument("--hold", help="wait for this file to exist before publishing")
    parser.add_argument("--no-overwrite", action="store_true")
    args = parser.parse_args(argv)
    run = RunWriter.open(args.output, {"fit": {"value": args.value, "parts": args.parts},
                                       "reduce": {"value": args.value}},
                         overwrite=not args.no_overwrite, command="fake")
    written: list[str] = []

    def fit(stage) -> dict:
        done = stage.completed_ids()
        for part in range(args.parts):
            ids = [f"{args.value}-{part * ROWS_PER_PART + j}" for j in range(ROWS_PER_PART)]
            if set(ids) <= done:
                continue
            table = pa.table({"id": ids, "value": [args.value] * len(ids)})
            name = f"{stage.part_prefix}-{part:06d}.parquet"
            write_table(table, stage.fs, join(stage.path, name))
            written.extend(ids)
            faults.fault_point(f"fake.part{part}")
        return {"images": args.parts * ROWS_PER_PART}

    def reduce(stage) -> dict:
        import pyarrow.parquet as pq
        total = 0
        for path in sorted(stage.fs.find(run.stage_path("fit"))):
            if path.endswith(".parquet"):
                with stage.fs.open(path, "rb") as handle:
                    total += sum(pq.read_table(handle).column("value").to_pylist())
        write_json(stage.fs, join(stage.path, "total.json"), {"total": total})
        return {"total": total}

    try:
        with run:
            stages = {"fit": run.stage("fit").run_once(fit, resumable=True),
                      "reduce": run.stage("reduce").run_once(reduce)}
            if args.ready:
                Path(args.ready).touch()
            while args.hold and not Path(args.hold).exists():
                time.sleep(0.05)
            run.publish({"stages": stages})
    except PublishConflict as error:
        print(json.dumps({"run_id": run.run_id, "refused": str(error)}))
        return 3
    print(json.dumps({"run_id": run.run_id, "resumed": run.resumed, "written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
