"""``kernelbank report OUTPUT``: an offline HTML page of a run, with its pictures.

    kernelbank report runs/latest        # -> runs/latest/runs/<run_id>/report/index.html
    kernelbank report s3://bucket/run1 --samples-per-class 3

The report is of the run the output publishes (``OUTPUT/LATEST.json``) and is written
into that run's prefix.

Shows the dataset (counts, sizes, errors), every class's kernel bank, residual and
best-kernel maps of a few test images, accuracy, confusion matrix, per-class
precision/recall, timings per stage, and for end-to-end runs the learning curves and
learned kernels. Prints the path of ``index.html``.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "report", help="write the published run's report/index.html: banks, residual maps, "
                       "results, timings",
        description="Draw a run's outputs (kernel banks, residual maps of test images, "
                    "confusion matrix, per-stage timings, learning curves) into an offline "
                    "HTML page OUTPUT/runs/<run_id>/report/index.html with its PNGs.")
    parser.add_argument("output", metavar="OUTPUT",
                        help="output of `kernelbank run` or `kernelbank train` "
                             "(local path, s3://, gs://)")
    parser.add_argument("--samples-per-class", type=int, default=2,
                        help="test images per class drawn with their maps (default 2)")
    parser.add_argument("--max-classes", type=int, default=12,
                        help="classes that get sample images (default 12)")
    parser.add_argument("--max-error-rows", type=int, default=50,
                        help="error rows listed; all are counted (default 50)")
    parser.add_argument("--s3-endpoint", metavar="URL", default=None,
                        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the report and print where it is."""
    from ..report import write_report
    print(write_report(args.output, s3_endpoint=args.s3_endpoint,
                       samples_per_class=args.samples_per_class,
                       max_classes=args.max_classes, max_error_rows=args.max_error_rows))
    return 0
