"""Benchmark: the reader — list once, concurrent GETs, shards — against the old per-object path.

    python bench/read.py [--images 2000] [--size 64] [--concurrency 32] [--no-s3] [--no-ray]

Writes ``--images`` PNG textures (GMRF samples, two classes) to a temp folder, packs them
into Parquet shards (``kernelbank pack``), uploads both to a moto S3 server it starts on
127.0.0.1, then measures in this run (objects/s, higher is better):

* listing into a manifest: folder, shards, S3 folder;
* one read task in-process (:func:`kernelbank.io.readers.read_block`, fetch + decode of
  every record) with ``--concurrency`` GETs in flight and with 1: local folder, local
  shards, S3 folder, S3 shards;
* the whole read on Ray (:func:`read_images` consumed with ``iter_batches``) for the same
  four, against the previous reader's path on the same objects (``read_binary_files``
  through pyarrow's fsspec adapter, then the same decode) as the baseline;
* bytes read against input bytes;
* with ``--latency`` milliseconds added to every request of a local filesystem (a model of
  an object store's round trip; moto on this machine serves only ~40 GETs/s whatever the
  concurrency, so it cannot show what concurrency buys): one read task with
  ``--concurrency`` GETs in flight and with 1, against the previous reader's per-object
  requests (pyarrow's fsspec adapter: ``open_input_stream`` then read, serial).

Absolute rates on a shared machine are noise: compare the ratios printed beside them.
moto answers each request in about a millisecond on 127.0.0.1, far faster than a real
object store (~20-50 ms per small GET), so the gain from concurrency here is a lower
bound of what an object store shows.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    from kernelbank.datasets import random_stable_kernel, write_synthetic_dataset
    rng = np.random.default_rng(seed)
    kernels = {f"c{i}": random_stable_kernel(2, random_state=rng) for i in range(2)}
    write_synthetic_dataset(root, kernels, n_per_class=n // 2, shape=(size, size),
                            splits=("train",), random_state=rng)


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free port of 127.0.0.1, with test credentials in the env."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start within 30 s")
    url = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url)
    return proc, url


def upload(local: Path, url: str, endpoint: str) -> None:
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    bucket = url[len("s3://"):].split("/")[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.put(str(local) + "/", url[len("s3://"):], recursive=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class LatencyFileSystem:
    """Local files where every request (info, open, cat) first waits ``latency`` seconds."""

    def __new__(cls, latency: float):
        from fsspec.implementations.local import LocalFileSystem

        class Slow(LocalFileSystem):
            cachable = False

            def info(self, path, **kwargs):
                time.sleep(latency)
                return super().info(path, **kwargs)

            def _open(self, path, *args, **kwargs):
                time.sleep(latency)
                return super()._open(path, *args, **kwargs)

            def cat_file(self, path, start=None, end=None, **kwargs):
                time.sleep(latency)                      # one request, as one GET
                with open(path, "rb") as handle:
                    handle.seek(start or 0)
                    return handle.read() if end is None else handle.read(end - (start or 0))
        return Slow()


def with_latency(config, manifest, latency: float, concurrency: int) -> float:
    """objects/s of read_block on a filesystem with ``latency`` per request."""
    from dataclasses import replace
    from kernelbank.io.readers import read_block
    config = replace(config, fetch_concurrency=concurrency)
    _, seconds = timed(lambda: read_block(manifest, fs=LatencyFileSystem(latency), config=config))
    return manifest.num_rows / seconds


def old_with_latency(manifest, latency: float) -> float:
    """objects/s of the previous reader's per-object requests, serial, with ``latency``."""
    import pyarrow.fs as pafs
    from kernelbank.io.decode import decode_record
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(LatencyFileSystem(latency)))

    def read_all():
        for path in manifest.column("path").to_pylist():
            with fs.open_input_stream(path) as stream:
                decode_record(stream.read(), path, 2, 1)
    _, seconds = timed(read_all)
    return manifest.num_rows / seconds


def in_process(config, manifest, concurrency: int) -> tuple[float, int, int]:
    """objects/s, bytes read and errors of one read task over the whole manifest."""
    from dataclasses import replace
    from kernelbank.io.readers import read_block
    from kernelbank.io.storage import read_filesystem
    config = replace(config, fetch_concurrency=concurrency)
    fs, _ = read_filesystem(config.url, s3_endpoint=config.s3_endpoint, connections=concurrency)
    table, seconds = timed(lambda: read_block(manifest, fs=fs, config=config))
    import pyarrow.compute as pc
    return (manifest.num_rows / seconds, int(pc.sum(table["bytes_read"]).as_py()),
            int(table["reason"].is_valid().to_numpy(zero_copy_only=False).sum()))


def on_ray(config, manifest) -> float:
    from kernelbank.io.readers import read_images
    ds = read_images(manifest, config)
    rows, seconds = timed(lambda: sum(b.num_rows for b in ds.iter_batches(
        batch_size=None, batch_format="pyarrow")))
    assert rows == manifest.num_rows, (rows, manifest.num_rows)
    return rows / seconds


def old_path(url: str, endpoint: str | None, n: int) -> float:
    """The previous reader: read_binary_files (HEADs per object, serial GETs) + decode."""
    import ray.data
    from kernelbank.io.decode import decode_record
    from kernelbank.io.storage import ray_filesystem, resolve
    fs, path = resolve(url, s3_endpoint=endpoint)

    def decode(batch):
        return {"ok": np.array([decode_record(d, p, 2, 1)[1] is None
                                for d, p in zip(batch["bytes"], batch["path"])])}
    ds = ray.data.read_binary_files(path, filesystem=ray_filesystem(fs), include_paths=True,
                                    file_extensions=["png"]).map_batches(decode)
    rows, seconds = timed(lambda: sum(len(b["ok"]) for b in ds.iter_batches()))
    assert rows == n, (rows, n)
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shard-mb", type=float, default=4.0)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--latency", type=float, default=20.0,
                        help="ms per request of the simulated object store (0: skip)")
    args = parser.parse_args()

    from kernelbank.config import ReadConfig
    from kernelbank.io.manifest import list_inputs
    from kernelbank.io.pack import pack_images
    work = Path(tempfile.mkdtemp(prefix="kb-bench-read-"))
    write_images(work / "folder", args.images, args.size)
    packed, pack_s = timed(lambda: pack_images(str(work / "folder"), str(work / "shards"),
                                               shard_mb=args.shard_mb))
    print(f"{args.images} PNG images {args.size}x{args.size}, {packed['bytes'] / 2**20:.1f} MiB; "
          f"packed into {len(packed['shards'])} shards in {pack_s:.1f} s "
          f"({args.images / pack_s:.0f} images/s)")
    inputs = {"local folder": ReadConfig(str(work / "folder")),
              "local shards": ReadConfig(str(work / "shards"))}
    moto = None
    if not args.no_s3:
        moto, endpoint = start_moto()
        upload(work / "folder", "s3://bench/folder", endpoint)
        upload(work / "shards", "s3://bench/shards", endpoint)
        inputs["S3 folder"] = ReadConfig("s3://bench/folder", s3_endpoint=endpoint)
        inputs["S3 shards"] = ReadConfig("s3://bench/shards", s3_endpoint=endpoint)
    try:
        manifests = {}
        print("\nlisting into a manifest")
        for name, config in inputs.items():
            manifests[name], seconds = timed(lambda: list_inputs(config))
            print(f"  {name:13s} {seconds:6.2f} s  {args.images / seconds:9.0f} objects/s")
        print(f"\none read task in-process: fetch + decode (objects/s; concurrency "
              f"{args.concurrency} vs 1)")
        for name, config in inputs.items():
            fast, read, errors = in_process(config, manifests[name], args.concurrency)
            slow, _, _ = in_process(config, manifests[name], 1)
            print(f"  {name:13s} {fast:8.0f} vs {slow:8.0f}  ratio {fast / slow:5.2f}   "
                  f"bytes read / input {read / packed['bytes']:.3f}   errors {errors}")
        if args.latency > 0:
            latency = args.latency / 1000
            folder = manifests["local folder"].slice(0, min(args.images, 400))
            shards = manifests["local shards"]
            print(f"\nsimulated object store, {args.latency:g} ms per request, one read task "
                  f"(objects/s)")
            fast = with_latency(inputs["local folder"], folder, latency, args.concurrency)
            slow = with_latency(inputs["local folder"], folder, latency, 1)
            old = old_with_latency(folder.slice(0, 100), latency)
            packed_rate = with_latency(inputs["local shards"], shards, latency, args.concurrency)
            print(f"  folder, concurrency {args.concurrency:3d}   {fast:8.0f}   "
                  f"ratio to previous reader {fast / old:6.1f}")
            print(f"  folder, concurrency   1   {slow:8.0f}   ratio to previous reader "
                  f"{slow / old:6.1f}")
            print(f"  folder, previous reader  {old:8.0f}")
            print(f"  shards, concurrency {args.concurrency:3d}   {packed_rate:8.0f}   "
                  f"ratio to previous reader {packed_rate / old:6.1f}")
        if not args.no_ray:
            import ray
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            on_ray(inputs["local folder"], manifests["local folder"])        # warm-up
            print("\non Ray (2 CPUs): read_images vs the previous reader (read_binary_files)")
            for name, config in inputs.items():
                new = on_ray(config, manifests[name])
                if "folder" in name:
                    old = old_path(config.url, config.s3_endpoint, args.images)
                    print(f"  {name:13s} {new:8.0f} objects/s vs {old:8.0f}  ratio "
                          f"{new / old:5.2f}")
                else:
                    base = on_ray(inputs["local folder"], manifests["local folder"])
                    print(f"  {name:13s} {new:8.0f} objects/s vs local folder {base:8.0f}  "
                          f"ratio {new / base:5.2f}")
            ray.shutdown()
    finally:
        if moto is not None:
            moto.terminate()


if __name__ == "__main__":
    main()
