"""``kernelbank datasets``: write the built-in datasets as image folders.

    kernelbank datasets textures OUT [--patch-size 64]
    kernelbank datasets synthetic OUT [--classes 4 --per-class 20 --size 64]

Both write ``OUT/<split>/<class>/<name>.png`` (uint8 greyscale) and print one line
with the number of images per split and class.
"""

from __future__ import annotations

import argparse

import numpy as np


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``datasets`` and its two subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "datasets", help="write a built-in dataset (real textures or synthetic GMRF textures)",
        description="Write a built-in dataset as OUT/<split>/<class>/*.png.")
    kinds = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    textures = kinds.add_parser(
        "textures", help="patches of the texture photographs scikit-image ships",
        description="Cut the scikit-image texture photographs into non-overlapping square "
                    "patches; train and test come from disjoint parts of each photograph.")
    textures.add_argument("out", help="output folder (created if missing)")
    textures.add_argument("--patch-size", type=int, default=64, help="patch side in pixels (default 64)")
    textures.add_argument("--test-fraction", type=float, default=0.3,
                          help="share of each photograph's width used for test (default 0.3)")
    textures.add_argument("--gap", type=int, default=None,
                          help="minimum pixels between train and test patches "
                               "(default patch size // 4)")

    synthetic = kinds.add_parser(
        "synthetic", help="Gaussian Markov random field textures from random known kernels",
        description="Draw one random stable symmetric kernel per class and simulate "
                    "conditional AR (GMRF) textures with it.")
    synthetic.add_argument("out", help="output folder (created if missing)")
    synthetic.add_argument("--classes", type=int, default=4, help="number of classes (default 4)")
    synthetic.add_argument("--per-class", type=int, default=20, help="images per class and split (default 20)")
    synthetic.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synthetic.add_argument("--radius", type=int, default=2, help="kernel radius (default 2)")
    synthetic.add_argument("--max-response", type=float, default=0.9,
                           help="max over frequency of each kernel's response K̂, in (0, 1); "
                                "closer to 1 gives more structured textures (default 0.9)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    parser.set_defaults(handler=main)
    return parser


def _format_counts(counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for split, per_class in counts.items():
        inner = ", ".join(f"{name}={n}" for name, n in per_class.items())
        parts.append(f"{split} {sum(per_class.values())} ({inner})")
    return "; ".join(parts)


def main(args: argparse.Namespace) -> int:
    """Write the requested dataset and print a one-line summary."""
    if args.dataset == "textures":
        from ..datasets import write_textures
        summary = write_textures(args.out, patch_size=args.patch_size,
                                 test_fraction=args.test_fraction, gap=args.gap)
    else:
        from ..datasets import random_stable_kernel, write_synthetic_dataset
        if args.classes < 1 or args.per_class < 1:
            raise ValueError(f"--classes and --per-class must be >= 1, got {args.classes} and "
                             f"{args.per_class}")
        rng = np.random.default_rng(args.seed)
        kernels = {f"gmrf{i}": random_stable_kernel(args.radius, max_response=args.max_response,
                                                    random_state=rng)
                   for i in range(args.classes)}
        summary = write_synthetic_dataset(args.out, kernels, n_per_class=args.per_class,
                                          shape=(args.size, args.size), random_state=rng)
    print(f"wrote {summary['root']}: {_format_counts(summary['counts'])}")
    return 0
