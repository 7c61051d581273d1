"""Options shared by ``kernelbank run``, the stage subcommands and ``jobs/*.py``.

``add_pipeline_options(parser, stages)`` adds the options of the given stages;
``pipeline_config(args)`` turns parsed arguments into a :class:`PipelineConfig`.
With no ``--input`` the built-in texture patches are used (written once to
``~/.cache/kernelbank/textures``); with no ``--output``, ``runs/latest`` (replaced on
every run).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import (BankMethod, BasisKind, ClassifyConfig, FeatureConfig, FitConfig,
                      InputFormat, PipelineConfig, ReadConfig, ReduceConfig)
from ..stages.progress import LOG_LEVELS, configure_output

__all__ = ["add_pipeline_options", "pipeline_config", "apply_output_options", "DEFAULT_OUTPUT",
           "default_input"]

DEFAULT_OUTPUT = "runs/latest"
TEXTURES_CACHE = Path.home() / ".cache" / "kernelbank" / "textures"


def default_input() -> str:
    """The built-in texture patches, written to the cache folder on first use."""
    from ..datasets import ensure_textures
    return str(ensure_textures(os.environ.get("KERNELBANK_TEXTURES", TEXTURES_CACHE))["root"])


def add_pipeline_options(parser: argparse.ArgumentParser,
                         stages: tuple[str, ...] = ("fit", "reduce", "features", "classify")
                         ) -> None:
    """Add the input/output/Ray options and those of ``stages`` to ``parser``."""
    io = parser.add_argument_group("input and output")
    if {"fit", "features"} & set(stages):
        io.add_argument("--input", metavar="URL",
                        help="image folder (root/<class>/… or root/<split>/<class>/…), Parquet "
                             "or .npy volumes; local path, s3://, gs://. Default: the built-in "
                             "texture patches")
        io.add_argument("--format", choices=[f.value for f in InputFormat], default="auto",
                        help="input layout (default: auto)")
        io.add_argument("--image-column", default="image", help="Parquet image column")
        io.add_argument("--label-column", default="label", help="Parquet label column")
        io.add_argument("--ndim", type=int, choices=(2, 3), default=2,
                        help="2 for images, 3 for .npy volumes (default 2)")
        io.add_argument("--max-pixels", type=int, default=64_000_000, metavar="N",
                        help="records with more pixels (or voxels) become error rows, "
                             "checked before decoding (default 64000000)")
        io.add_argument("--read-concurrency", type=int, default=32, metavar="N",
                        help="GETs in flight per read task (default 32)")
    io.add_argument("--output", metavar="URL", default=None,
                    help=f"output root (default {DEFAULT_OUTPUT}, replaced on every run)")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an existing output (built aside, then swapped in)")
    io.add_argument("--s3-endpoint", metavar="URL", default=None,
                    help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL); credentials "
                         "come from the standard AWS variables, profiles or instance roles")
    output = parser.add_argument_group("messages")
    output.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and errors (no progress lines or bars)")
    output.add_argument("--log-level", choices=LOG_LEVELS, default="INFO", type=str.upper,
                        help="kernelbank's and Ray's log level (default INFO)")
    cluster = parser.add_argument_group("Ray")
    cluster.add_argument("--ray-address", default=None,
                         help="cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)")
    cluster.add_argument("--num-gpus", type=int, default=0,
                         help="GPUs for the fit and feature actors (one each); 0 = CPU (default)")
    cluster.add_argument("--batch-size", type=int, default=64, help="images per actor call")
    cluster.add_argument("--max-actors", type=int, default=None,
                         help="upper bound of each autoscaling CPU actor pool "
                              "(default: cluster CPUs / threads)")
    cluster.add_argument("--threads-per-actor", type=int, default=1,
                         help="torch threads (and CPUs reserved) per actor (default 1)")
    if {"fit", "features"} & set(stages):
        model = parser.add_argument_group("AR model")
        model.add_argument("--radius", type=int, default=4, help="kernel radius (default 4)")
        model.add_argument("--dilations", type=int, nargs="+", default=[1],
                           help="tap spacings, one coefficient vector each (default 1)")
        model.add_argument("--basis", choices=[b.value for b in BasisKind], default="isotropic",
                           help="AR basis (default isotropic)")
        model.add_argument("--ridge", type=float, default=1e-6, help="per-pixel ridge of the fit")
    if "reduce" in stages:
        bank = parser.add_argument_group("bank")
        bank.add_argument("--bank-method", choices=[m.value for m in BankMethod],
                          default="pooled", help="how banks are built (default pooled)")
        bank.add_argument("--n-components", type=int, default=2,
                          help="pca directions or kmeans centres per class and dilation")
    if "features" in stages:
        parser.add_argument("--grid", type=int, default=2,
                            help="cells per axis of the residual-energy features (default 2)")
    if "classify" in stages:
        parser.add_argument("--alpha", type=float, default=1.0,
                            help="ridge alpha of the classifier (default 1.0)")


def apply_output_options(args: argparse.Namespace) -> None:
    """Apply ``--quiet`` and ``--log-level`` to kernelbank's and Ray's messages.

    See :func:`kernelbank.stages.progress.configure_output`.
    """
    configure_output(quiet=bool(getattr(args, "quiet", False)),
                     log_level=getattr(args, "log_level", "INFO") or "INFO")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """A validated :class:`PipelineConfig` from parsed arguments (missing ones default)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    output, overwrite = get("output"), bool(get("overwrite", False))
    if output is None:
        output, overwrite = DEFAULT_OUTPUT, True
    url = get("input") or (default_input() if hasattr(args, "input") else "-")
    read = ReadConfig(url, s3_endpoint=get("s3_endpoint"), format=get("format", "auto"),
                      image_column=get("image_column", "image"),
                      label_column=get("label_column", "label"), ndim=get("ndim", 2),
                      max_pixels=get("max_pixels", 64_000_000),
                      fetch_concurrency=get("read_concurrency", 32))
    fit = FitConfig(radius=get("radius", 4), dilations=tuple(get("dilations", [1])),
                    basis=get("basis", "isotropic"), ridge=get("ridge", 1e-6),
                    batch_size=get("batch_size", 64), num_gpus=get("num_gpus", 0),
                    max_actors=get("max_actors"), threads_per_actor=get("threads_per_actor", 1),
                    **FitConfig.fault_from_env())
    reduce = ReduceConfig(method=get("bank_method", "pooled"),
                          n_components=get("n_components", 2))
    features = FeatureConfig(grid=get("grid", 2), batch_size=get("batch_size", 64),
                             max_actors=get("max_actors"),
                             threads_per_actor=get("threads_per_actor", 1),
                             num_gpus=get("num_gpus", 0))
    return PipelineConfig(read=read, output=output, fit=fit, reduce=reduce, features=features,
                          classify=ClassifyConfig(ridge=get("alpha", 1.0)),
                          overwrite=overwrite, ray_address=get("ray_address"))
