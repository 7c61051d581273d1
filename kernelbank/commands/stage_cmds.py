"""``kernelbank fit|reduce|features|classify``: one pipeline stage at a time.

Each stage reads what the previous one wrote under the same ``--output`` and replaces
only its own folders, so a stage can be rerun alone (e.g. another ``--bank-method``):

    kernelbank fit --input IMAGES --output OUT
    kernelbank reduce --output OUT --bank-method pca --overwrite
    kernelbank features --input IMAGES --output OUT
    kernelbank classify --output OUT
"""

from __future__ import annotations

import argparse
import json

from .pipeline_args import add_pipeline_options, apply_output_options, pipeline_config

_HELP = {
    "fit": "fit the AR kernel of every image (writes OUTPUT/fit/, OUTPUT/errors/)",
    "reduce": "merge per-class statistics of OUTPUT/fit/ into kernel banks (OUTPUT/banks/)",
    "features": "bank features of every image (OUTPUT/features/)",
    "classify": "train on the train split's features, score the test split",
}


def add_parser(subparsers: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Register the four stage subcommands on ``subparsers``."""
    parsers = []
    for stage, text in _HELP.items():
        parser = subparsers.add_parser(stage, help=text, description=text[0].upper() + text[1:] + ".")
        add_pipeline_options(parser, (stage,))
        parser.set_defaults(handler=main, stage=stage)
        parsers.append(parser)
    return parsers


def main(args: argparse.Namespace) -> int:
    """Run one stage and print its summary."""
    from ..stages.common import connect_ray
    apply_output_options(args)
    config = pipeline_config(args)
    connect_ray(config.ray_address)
    endpoint = config.read.s3_endpoint
    if args.stage == "fit":
        from ..stages.fit import run_fit
        summary = run_fit(config.read, config.fit, config.output, overwrite=config.overwrite)
    elif args.stage == "reduce":
        from ..stages.reduce import run_reduce
        summary = run_reduce(config.output, config.reduce, overwrite=config.overwrite,
                             s3_endpoint=endpoint)
    elif args.stage == "features":
        from ..stages.features import run_features
        summary = run_features(config.read, config.output, config.features,
                               overwrite=config.overwrite)
    else:
        from ..stages.classify import run_classify
        summary = run_classify(config.output, config.classify, s3_endpoint=endpoint)
    brief = {k: v for k, v in summary.items() if k not in ("splits", "counts")}
    print(json.dumps(brief, default=str))
    return 0
