"""``kernelbank pack``: turn a folder tree of images into Parquet shards.

    kernelbank pack IMAGES SHARDS [--shard-mb 256]
    kernelbank pack s3://bucket/images s3://bucket/shards --shard-mb 512

Millions of small objects cost a request each on every read; a few hundred shards of
encoded images cost one request per row group. ``kernelbank run --input SHARDS`` then
reads the shards (detected by their ``_manifest.json``) and gives the same records, ids
and labels as the folder. See :mod:`kernelbank.io.pack` for the shard layout.
"""

from __future__ import annotations

import argparse

from ..config import InputFormat


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``pack`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "pack", help="pack an image folder (local or object store) into Parquet shards",
        description="Stream the images under INPUT into Parquet shards of encoded bytes with "
                    "id, path, label and split columns, and a _manifest.json written last.")
    parser.add_argument("input", metavar="INPUT",
                        help="image folder (root/<class>/… or root/<split>/<class>/…), Parquet "
                             "or tar files; local path, s3://, gs://")
    parser.add_argument("output", metavar="OUTPUT", help="folder for the shards (new or empty)")
    parser.add_argument("--shard-mb", type=float, default=256,
                        help="target megabytes of encoded images per shard (default 256)")
    parser.add_argument("--group-rows", type=int, default=1024,
                        help="images per Parquet row group, the unit a reader fetches "
                             "(default 1024)")
    parser.add_argument("--format", choices=[f.value for f in InputFormat], default="auto",
                        help="input layout (default: auto)")
    parser.add_argument("--image-column", default="image", help="Parquet input's image column")
    parser.add_argument("--label-column", default="label", help="Parquet input's label column")
    parser.add_argument("--read-concurrency", type=int, default=32, metavar="N",
                        help="GETs in flight (default 32)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier pack output at OUTPUT (nothing else is deleted)")
    parser.add_argument("--s3-endpoint", metavar="URL", default=None,
                        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Pack and print one line: images, shards, bytes, errors."""
    from ..config import ReadConfig
    from ..io.pack import pack_images
    from ..stages.progress import Progress
    config = ReadConfig(args.input, s3_endpoint=args.s3_endpoint, format=args.format,
                        image_column=args.image_column, label_column=args.label_column,
                        fetch_concurrency=args.read_concurrency)
    progress = Progress("pack", enabled=False if args.quiet else None)
    result = pack_images(args.input, args.output, shard_mb=args.shard_mb, config=config,
                         overwrite=args.overwrite, group_rows=args.group_rows,
                         on_listed=lambda n: setattr(progress, "total", n),
                         on_rows=progress.update)
    progress.close()
    print(f"packed {result['rows']} images ({result['bytes'] / 2**20:.1f} MiB) into "
          f"{len(result['shards'])} shards under {args.output}; {result['errors']} records "
          f"could not be packed; {result['seconds']:.1f} s")
    return 0
