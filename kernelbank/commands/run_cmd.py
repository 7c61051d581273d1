"""``kernelbank run``: the whole pipeline (fit → reduce → features → classify) on Ray.

    kernelbank run                                   # built-in textures -> runs/latest
    kernelbank run --input s3://bucket/images --output s3://bucket/run1 \\
                   --radius 4 --dilations 1 2 3 --bank-method pca --ray-address auto

Prints one line per stage (Ray Data shows per-operator progress while it runs) and
where the outputs are; exits 0 when the run completed, even if some records were bad
(they are in ``OUTPUT/errors/`` and counted in ``OUTPUT/summary.json``). Then writes
the report ``OUTPUT/report/index.html`` and prints its path as the last line
(``--no-report`` skips it; ``kernelbank report OUTPUT`` writes it later).
"""

from __future__ import annotations

import argparse

from .pipeline_args import add_pipeline_options, apply_output_options, pipeline_config


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``run`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "run", help="run the whole distributed pipeline (fit, reduce, features, classify)",
        description="Read images, fit AR kernels on Ray actors, merge per-class banks, "
                    "compute bank features and classify; writes OUTPUT/{fit,banks,features,"
                    "errors}/ and OUTPUT/summary.json.")
    add_pipeline_options(parser)
    parser.add_argument("--no-report", action="store_true",
                        help="skip writing OUTPUT/report/index.html (see `kernelbank report`)")
    parser.add_argument("--train", action="store_true",
                        help="also train the end-to-end model as a final stage (OUTPUT/train/; "
                             "`kernelbank train` has all its options)")
    parser.add_argument("--train-epochs", type=int, default=10, metavar="E",
                        help="epochs of the end-to-end stage with --train (default 10)")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the pipeline and print where its outputs are."""
    from ..stages.pipeline import run_pipeline
    apply_output_options(args)
    config = pipeline_config(args)
    summary = run_pipeline(config)
    acc = summary["test_accuracy"]
    print(f"wrote {summary['output']}: {summary['images']} images, {summary['errors']} errors, "
          f"test_accuracy={'n/a' if acc is None else f'{acc:.4f}'}; see "
          f"{summary['output'].rstrip('/')}/summary.json")
    if getattr(args, "train", False):
        from ..stages.train import TrainConfig, run_train
        trained = run_train(TrainConfig(output=summary["output"], input=config.read.url,
                                        s3_endpoint=config.read.s3_endpoint,
                                        epochs=args.train_epochs))
        print(f"end-to-end model: test_accuracy={trained['test_accuracy']:.4f}; "
              f"{trained['checkpoint']}")
    if not getattr(args, "no_report", False):
        from ..report import write_report
        print(write_report(summary["output"], s3_endpoint=getattr(args, "s3_endpoint", None)))
    return 0
