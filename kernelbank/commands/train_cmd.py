"""``kernelbank train`` and ``kernelbank predict``: the end-to-end model on Ray Train.

    kernelbank train [--input URL] [--output URL] [--init-bank URL] [--workers N]
                     [--epochs E] [--lr LR] [--validation-fraction F] [--use-gpu] ...
    kernelbank predict MODEL IMAGE [IMAGE ...] [--device cpu|cuda]

``train`` needs no option: it trains on the built-in texture patches (the default
input of ``kernelbank run``) and publishes a run of ``runs/latest`` with
``train/{model.pt,summary.json}`` (printed at the end). ``predict`` prints one
``<image>\t<class>`` line per image.
"""

from __future__ import annotations

import argparse
import sys

from .pipeline_args import DEFAULT_OUTPUT, resolve_output


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` (shared with ``jobs/train_end_to_end.py``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--input", default=None,
                      help="images URL (folder or Parquet, with train/test splits); "
                           "default: the built-in texture patches, as for 'kernelbank run'")
    data.add_argument("--output", default=None,
                      help="output URL; publishes a run with train/ that reuses the other "
                           f"stages of its published run (default {DEFAULT_OUTPUT}; required "
                           "under `ray job submit`)")
    data.add_argument("--overwrite", action="store_true",
                      help="replace the train/ stage the published run already has")
    data.add_argument("--classes", default=None, type=lambda s: tuple(s.split(",")),
                      help="comma-separated classes to use (default: all in the train split)")
    data.add_argument("--s3-endpoint", default=None,
                      help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    model = parser.add_argument_group("model")
    model.add_argument("--init", choices=("gabor", "random", "bank"), default="gabor",
                       help="initial kernels (default gabor; --init-bank implies bank)")
    model.add_argument("--init-bank", default=None, help="URL of a saved KernelBank to start from")
    model.add_argument("--radius", type=int, default=2, help="kernel radius (default 2)")
    model.add_argument("--basis", choices=("isotropic", "full"), default="isotropic",
                       help="kernel basis (default isotropic: rotation-invariant kernels)")
    model.add_argument("--dilations", type=_int_list, default=(1, 2, 4),
                       help="comma-separated dilations (default 1,2,4)")
    model.add_argument("--n-kernels", type=int, default=8, help="kernels per dilation (default 8)")
    model.add_argument("--grid", type=int, default=2,
                       help="residual-energy pooling grid (default 2)")
    model.add_argument("--hidden", type=int, default=64,
                       help="MLP hidden width, 0 = linear (default 64)")
    model.add_argument("--norm", choices=("batch", "layer"), default="batch",
                       help="feature normalisation before the head (default batch)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    train.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    train.add_argument("--batch-size", type=int, default=32,
                       help="global batch, split over the workers (default 32)")
    train.add_argument("--weight-decay", type=float, default=0.0,
                       help="Adam weight decay (default 0)")
    train.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="learning rate per epoch (default cosine decay)")
    train.add_argument("--seed", type=int, default=0,
                       help="random_state: model, batch order, validation split (default 0)")
    train.add_argument("--validation-fraction", type=float, default=0.2,
                       help="share of each class's train images the epoch is chosen on, "
                            "unless the input has a val split (default 0.2); the test split "
                            "is scored once, after training")
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    ray_group.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    ray_group.add_argument("--cpus-per-worker", type=float, default=0.5,
                           help="CPUs reserved per worker; leave some for data reading "
                                "(default 0.5)")
    ray_group.add_argument("--storage-path", default=None,
                           help="checkpoint storage URL (default OUTPUT/train/runs)")
    ray_group.add_argument("--run-name", default="end_to_end",
                           help="run name; rerunning a name resumes its latest checkpoint")
    ray_group.add_argument("--ray-address", default=None,
                           help="cluster to join (default: RAY_ADDRESS or an embedded local Ray)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` and ``predict`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "train", help="train the end-to-end model (learnable bank + classifier) with Ray Train",
        description="Learn a kernel bank, residual metrics and an MLP classifier jointly with "
                    "Ray Train; export the epoch with the best validation accuracy to "
                    "OUTPUT/train/model.pt and score it once on the test split.")
    add_train_arguments(parser)
    parser.set_defaults(handler=main)

    predict = subparsers.add_parser(
        "predict", help="classify images with an exported end-to-end model",
        description="Print '<image>\\t<class>' for each image.")
    predict.add_argument("model", help="model file written by 'kernelbank train' (path or URL)")
    predict.add_argument("images", nargs="+",
                         help="image files (paths or URLs; PNG/JPEG/TIFF/.npy)")
    predict.add_argument("--device", default="cpu", help="torch device (default cpu)")
    predict.set_defaults(handler=predict_main)
    return parser


def config_from_args(args: argparse.Namespace):
    """A :class:`~kernelbank.stages.train.TrainConfig` from parsed ``train`` options."""
    from ..stages.train import TrainConfig
    return TrainConfig(
        output=args.output, input=args.input, init=args.init, init_bank=args.init_bank,
        workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, norm=args.norm,
        radius=args.radius, basis=args.basis,
        dilations=args.dilations, n_kernels=args.n_kernels, grid=args.grid, hidden=args.hidden,
        classes=args.classes, storage_path=args.storage_path,
        run_name=args.run_name, random_state=args.seed, s3_endpoint=args.s3_endpoint,
        validation_fraction=args.validation_fraction)


def main(args: argparse.Namespace) -> int:
    """Train, print the per-epoch metrics and where the model went."""
    args.output, overwrite = resolve_output(args.output, bool(getattr(args, "overwrite", False)))
    if args.input is None:                  # the same built-in data as `kernelbank run`
        from .pipeline_args import default_input
        args.input = default_input()
    config = config_from_args(args)
    from ..stages.common import connect_ray
    from ..stages.train import run_train
    connect_ray(args.ray_address)
    summary = run_train(config, overwrite=overwrite)
    for h in summary["epochs"]:
        print(f"epoch {h['epoch']}: loss {h['loss']:.4f}  train acc {h['train_accuracy']:.3f}  "
              f"validation acc {h['validation_accuracy']:.3f}  {h['images_per_s']:.0f} images/s")
    validation = summary["validation"]
    print(f"epoch {summary['best_epoch']} chosen by validation accuracy "
          f"{summary['validation_accuracy']:.3f} ({validation['images']} images, "
          f"{validation.get('source')}); test accuracy {summary['test_accuracy']:.3f} "
          f"(scored once); model: {summary['checkpoint']}")
    return 0


def _read_image(url: str):
    import fsspec
    from ..io.decode import decode_bytes
    with fsspec.open(url, "rb") as f:
        return decode_bytes(f.read(), url)


def predict_main(args: argparse.Namespace) -> int:
    """Load the model, classify every image, print one tab-separated line per image."""
    from ..nn import load_model
    model = load_model(args.model, map_location=args.device)
    images = [_read_image(url) for url in args.images]
    too_small = [(url, im.shape) for url, im in zip(args.images, images)
                 if min(im.shape) < model.min_image_size]
    if too_small:
        url, shape = too_small[0]
        raise ValueError(f"image {url} has shape {shape}; this model needs a side of at least "
                         f"{model.min_image_size} pixels")
    for url, label in zip(args.images, model.predict(images)):
        print(f"{url}\t{label}")
    sys.stdout.flush()
    return 0
