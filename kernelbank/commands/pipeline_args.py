"""Options shared by ``kernelbank run``, the stage subcommands and ``jobs/*.py``.

``add_pipeline_options(parser, stages)`` adds the options of the given stages;
``pipeline_config(args)`` turns parsed arguments into a :class:`PipelineConfig`.
With no ``--input`` the built-in texture patches are used (written once to
``~/.cache/kernelbank/textures``); with no ``--output``, ``runs/latest`` (a new run
replaces the published one each time; the folder is named in the log). Under
``ray job submit`` ``--output`` is required: the job's working directory is a temporary
copy that goes away with the job.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import (DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, OWN_KERNEL_FORMS, BankMethod,
                      BasisKind, Channels, ClassifierHead, ClassifyConfig, FeatureConfig,
                      FitConfig, InputFormat, PipelineConfig, ReadConfig, ReduceConfig)
from ..faults import fit_fault_from_env
from ..stages.progress import LOG_LEVELS, configure_output

__all__ = ["add_pipeline_options", "pipeline_config", "apply_output_options", "DEFAULT_OUTPUT",
           "default_input", "resolve_output"]

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
    if {"fit", "features"} & set(stages):      # features reads images only with --pixel-features
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
                    help=f"output root; each run is published into it as a new version "
                         f"(default {DEFAULT_OUTPUT}; required under `ray job submit`)")
    io.add_argument("--overwrite", action="store_true",
                    help="publish a new run over the output's published one (only in a "
                         "kernelbank output; the last runs are kept)")
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
    cluster.add_argument("--batch-size", type=int, default=None,
                         help="images per actor call (default: one read block per fit call; "
                              "64 for pixel features)")
    cluster.add_argument("--batch-pixels", type=int, default=1 << 19,
                         help="pixels per fit computation: images of one shape are fitted "
                              "together up to this many pixels (default 524288)")
    cluster.add_argument("--max-actors", type=int, default=None,
                         help="at most this many fit tasks (and pixel-feature actors) at "
                              "once (default: as many as the cluster's CPUs allow)")
    cluster.add_argument("--threads-per-actor", type=int, default=1,
                         help="torch threads (and CPUs reserved) per fit task or actor "
                              "(default 1)")
    if "fit" in stages:
        model = parser.add_argument_group("AR model (the fit stage's one pass)")
        model.add_argument("--radius", type=int, default=2, help="kernel radius (default 2)")
        model.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 3],
                           help="tap spacings, one coefficient vector each (default 1 2 3)")
        model.add_argument("--scales", type=int, nargs="+", default=[1],
                           help="anti-aliased pyramid factors (default 1)")
        model.add_argument("--basis", choices=[b.value for b in BasisKind], default="full",
                           help="AR basis (default full)")
        model.add_argument("--ridge", type=float, default=1e-6, help="per-pixel ridge of the fit")
        model.add_argument("--channels", choices=[c.value for c in Channels],
                           default="luminance",
                           help="luminance: one grey channel (default); rgb: a vector AR model "
                                "of 3 channels (grey images replicated, alpha dropped); all: "
                                "every band as stored (records with another channel count "
                                "than the first become error rows). Later stages read it "
                                "from fit/")
        model.add_argument("--no-descriptors", action="store_true",
                           help="do not store residual descriptors in the statistics table")
        model.add_argument("--no-image-patterns", action="store_true",
                           help="do not store the images' own sign patterns beside the "
                                "residual descriptors")
        model.add_argument("--stats-grid", type=int, default=None, metavar="G",
                           help="also keep window sums per cell of a GxG grid (energy maps)")
    if "reduce" in stages:
        bank = parser.add_argument_group("bank")
        bank.add_argument("--bank-method", choices=[m.value for m in BankMethod],
                          default="pooled", help="how banks are built (default pooled)")
        bank.add_argument("--n-components", type=int, default=2,
                          help="pca directions or kmeans centres per class and dilation")
    if "features" in stages:
        feats = parser.add_argument_group("features (from the statistics table)")
        feats.add_argument("--feature-groups", nargs="+", choices=FEATURE_GROUPS,
                           default=list(DEFAULT_FEATURE_GROUPS),
                           help="feature groups, of %(choices)s (default: own residual "
                                "image)")
        feats.add_argument("--all-patterns", action="store_true",
                           help="keep the residual's non-rotation-invariant patterns and "
                                "co-occurrences (default: rotation-invariant histograms only)")
        feats.add_argument("--power", type=float, default=0.5,
                           help="sign(h)|h|^power on histogram features (default 0.5, the "
                                "Hellinger map; 1: none)")
        feats.add_argument("--own-kernel", choices=OWN_KERNEL_FORMS,
                           default=FeatureConfig.own_kernel,
                           help="what the own group keeps of each own kernel: its "
                                "coefficients, their mean over the window's 8 symmetries, "
                                "or its rotation-invariant spectral descriptors (default "
                                "auto: spectrum on grey 2-D images, coefficients otherwise)")
        feats.add_argument("--pool-symmetries", dest="own_kernel", action="store_const",
                           const="symmetric", help="the same as --own-kernel symmetric")
        feats.add_argument("--no-joint", action="store_true",
                           help="leave out the joint coefficients of the bank kernels")
        feats.add_argument("--pixel-features", action="store_true",
                           help="add the bank kernels' MAE and win rate; reads every image a "
                                "second time (needs --input)")
    if "classify" in stages:
        parser.add_argument("--alpha", type=float, default=None,
                            help="ridge alpha of the classifier (default: chosen by exact "
                                 "5-fold cross-validation on the train split)")
        parser.add_argument("--head", choices=[h.value for h in ClassifierHead],
                            default=ClassifyConfig.head.value,
                            help="classifier: nystroem (RBF kernel: Nystroem landmarks + "
                                 "ridge fitted on a bounded sample of train rows per class, "
                                 "then every row scored; default) or ridge (linear, fitted "
                                 "from sums over every train row)")
        parser.add_argument("--head-sample", type=int, default=256,
                            help="--head nystroem: train rows sampled per class (default "
                                 "256)")
        parser.add_argument("--head-components", type=int, default=1024,
                            help="--head nystroem: Nystroem landmarks (default 1024)")


def resolve_output(output: str | None, overwrite: bool) -> tuple[str, bool]:
    """``(output, overwrite)`` with the default filled in (and named in the log).

    Raises
    ------
    ValueError
        With no ``output`` inside a ``ray job submit`` driver.
    """
    from ..io.output_safety import in_ray_job
    if output is not None:
        return output, overwrite
    if in_ray_job():
        raise ValueError("--output is required under `ray job submit`: the default "
                         f"{DEFAULT_OUTPUT!r} would land in the job's temporary working "
                         "directory and vanish with it; pass shared storage, e.g. "
                         "--output s3://bucket/kernelbank/run1")
    from ..stages.common import log
    log(f"no --output given: writing to {DEFAULT_OUTPUT} ({os.path.abspath(DEFAULT_OUTPUT)}), "
        "replacing its published run")
    return DEFAULT_OUTPUT, True


def apply_output_options(args: argparse.Namespace) -> None:
    """Apply ``--quiet`` and ``--log-level`` to kernelbank's and Ray's messages.

    See :func:`kernelbank.stages.progress.configure_output`.
    """
    configure_output(quiet=bool(getattr(args, "quiet", False)),
                     log_level=getattr(args, "log_level", "INFO") or "INFO")


def pipeline_config(args: argparse.Namespace, *, check_input: bool = True) -> PipelineConfig:
    """A validated :class:`PipelineConfig` from parsed arguments (missing ones default).

    ``check_input``: fail now (before Ray or the output) when the input is missing or
    empty (:func:`kernelbank.io.manifest.check_input`); off for a caller that only wants
    the settings.
    """
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    output, overwrite = resolve_output(get("output"), bool(get("overwrite", False)))
    # the features stage reads no image unless --pixel-features, which takes the fit
    # stage's input from the statistics table when --input is not given
    needs_input = hasattr(args, "input") and get("stage") != "features"
    url = get("input") or (default_input() if needs_input else "-")
    read = ReadConfig(url, s3_endpoint=get("s3_endpoint"), format=get("format", "auto"),
                      image_column=get("image_column", "image"),
                      label_column=get("label_column", "label"), ndim=get("ndim", 2),
                      channels=get("channels", "luminance"),
                      max_pixels=get("max_pixels", 64_000_000),
                      fetch_concurrency=get("read_concurrency", 32))
    if needs_input and check_input:
        from ..io.manifest import check_input as check
        check(read)                 # a missing or empty input fails before Ray or the output
    if get("train", False) and read.channels is not Channels.LUMINANCE:
        raise ValueError(f"--train with --channels {read.channels.value} is not supported: the "
                         "end-to-end model takes one channel; drop --train or use "
                         "--channels luminance")
    fit = FitConfig(radius=get("radius", 2), dilations=tuple(get("dilations", [1, 2, 3])),
                    scales=tuple(get("scales", [1])), basis=get("basis", "full"),
                    ridge=get("ridge", 1e-6), descriptors=not get("no_descriptors", False),
                    image_patterns=not get("no_image_patterns", False),
                    grid=get("stats_grid"), cache_pixels=bool(get("train", False)),
                    batch_size=get("batch_size"), batch_pixels=get("batch_pixels", 1 << 19),
                    num_gpus=get("num_gpus", 0),
                    max_actors=get("max_actors"), threads_per_actor=get("threads_per_actor", 1),
                    **fit_fault_from_env())
    reduce = ReduceConfig(method=get("bank_method", "pooled"),
                          n_components=get("n_components", 2))
    features = FeatureConfig(groups=tuple(get("feature_groups", DEFAULT_FEATURE_GROUPS)),
                             rotation_invariant=not get("all_patterns", False),
                             power=get("power", 0.5),
                             own_kernel=get("own_kernel", FeatureConfig.own_kernel),
                             joint=not get("no_joint", False),
                             pixel_features=bool(get("pixel_features", False)),
                             batch_size=get("batch_size") or 64,
                             max_actors=get("max_actors"),
                             threads_per_actor=get("threads_per_actor", 1),
                             num_gpus=get("num_gpus", 0))
    return PipelineConfig(read=read, output=output, fit=fit, reduce=reduce, features=features,
                          classify=ClassifyConfig(ridge=get("alpha"),
                                                  head=get("head", ClassifyConfig.head),
                                                  sample_per_class=get("head_sample", 256),
                                                  n_components=get("head_components", 1024)),
                          overwrite=overwrite, ray_address=get("ray_address"))
