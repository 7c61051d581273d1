"""A ``kernelbank run`` driver for the multi-node tests (test_cluster.py), run as its own
process against a ``ray.cluster_utils.Cluster``: the test process kills and adds nodes.

    python -m tests.stages.cluster_driver --block-rows 8 -- [kernelbank run options]

The same options as ``kernelbank run``; ``--block-rows`` cuts the input into small read
blocks (many batches in flight, so a node lost mid-stage holds some of them). Prints the
run's summary as JSON on a line of its own (:data:`SUMMARY`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


#: Prefix of the summary line (Ray may print its own lines after it).
SUMMARY = "cluster_driver summary: "


def main(argv: list[str] | None = None) -> int:
    from kernelbank.commands.pipeline_args import (add_pipeline_options, apply_output_options,
                                                   pipeline_config)
    from kernelbank.stages.pipeline import run_pipeline
    own = argparse.ArgumentParser()
    own.add_argument("--block-rows", type=int, default=8)
    own.add_argument("rest", nargs=argparse.REMAINDER)
    mine = own.parse_args(argv)
    parser = argparse.ArgumentParser()
    add_pipeline_options(parser)
    args = parser.parse_args([a for a in mine.rest if a != "--"])
    apply_output_options(args)
    config = pipeline_config(args)
    config = replace(config, read=replace(config.read, block_rows=mine.block_rows))
    summary = run_pipeline(config)
    out = {k: summary[k] for k in ("run_id", "images", "errors", "test_accuracy", "seconds")}
    out["stage_seconds"] = {k: v.get("seconds") for k, v in summary["stages"].items()}
    print(SUMMARY + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
