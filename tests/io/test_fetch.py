"""Concurrent, retried fetching (no Ray): the retry rules, and real GETs against moto S3
through a throttling proxy on 127.0.0.1."""

from __future__ import annotations

import errno
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelbank.config import ReadConfig
from kernelbank.io.fetch import RangeFile, RetryPolicy, call_with_retries, is_transient
from kernelbank.io.manifest import list_inputs
from kernelbank.io.readers import read_block
from kernelbank.io.storage import read_filesystem

from ..stages.pipeline_data import png_bytes
from .s3proxy import ThrottlingProxy


@pytest.mark.parametrize("error, transient", [
    (OSError(errno.EBUSY, "Please reduce your request rate."), True),     # s3fs's SlowDown
    (OSError(errno.EBUSY, "busy"), True),                                 # by errno alone
    (OSError(errno.EIO, "disk failure"), False),
    (TimeoutError("read timed out"), True),
    (ConnectionResetError("reset by peer"), True),
    (OSError(errno.EIO, "An error occurred (SlowDown) when calling GetObject"), True),
    (FileNotFoundError("bucket/missing.png"), False),
    (PermissionError("AccessDenied"), False),
    (ValueError("bad range"), False),
])
def test_which_errors_are_retried(error, transient):
    assert is_transient(error) is transient


def test_call_with_retries_counts_and_backs_off():
    failures = iter([OSError(errno.EBUSY, "SlowDown")] * 3)
    waits: list[float] = []

    def flaky():
        error = next(failures, None)
        if error:
            raise error
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.25)
    assert call_with_retries(flaky, policy, sleep=waits.append, rng=random.Random(0)) == ("ok", 3)
    # exponential, capped, with jitter in [0.5, 1] of the nominal delay
    for wait, nominal in zip(waits, [0.1, 0.2, 0.25]):
        assert 0.5 * nominal <= wait <= nominal

    def missing():
        raise FileNotFoundError("gone")
    with pytest.raises(FileNotFoundError) as info:
        call_with_retries(missing, policy, sleep=waits.append)
    assert info.value.kernelbank_retries == 0            # permanent: no retry

    def always_busy():
        raise OSError(errno.EBUSY, "SlowDown")
    with pytest.raises(OSError) as info:
        call_with_retries(always_busy, RetryPolicy(attempts=3, base_delay=0), sleep=waits.append)
    assert info.value.kernelbank_retries == 2


def _upload(s3_endpoint, bucket: str, n: int) -> dict[str, np.ndarray]:
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    rng = np.random.default_rng(3)
    images = {f"{bucket}/imgs/c{i % 3}/{i:04d}.png": rng.integers(0, 256, (10, 12), np.uint8)
              for i in range(n)}
    fs.pipe({path: png_bytes(image) for path, image in images.items()})
    return images


@pytest.mark.s3
def test_throttled_gets_are_retried_and_counted(s3_endpoint, s3_bucket):
    images = _upload(s3_endpoint, s3_bucket, 30)
    failures = lambda key: int(key.rsplit("/", 1)[-1][:4]) % 3      # 0, 1 or 2 per key
    with ThrottlingProxy(s3_endpoint, failures) as proxy:
        config = ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=proxy.url,
                            fetch_concurrency=8)
        manifest = list_inputs(config)
        fs, _ = read_filesystem(config.url, s3_endpoint=proxy.url)
        rows = read_block(manifest, fs=fs, config=config).to_pylist()
    assert proxy.injected == sum(failures(f"/{k}") for k in images) == 30
    assert sum(r["read_retries"] for r in rows) == proxy.injected
    for row in rows:
        assert row["read_retries"] == failures("/" + row["id"]) and row["reason"] is None
        pixels = np.frombuffer(row["pixels"], row["dtype"]).reshape(row["shape"])
        np.testing.assert_array_equal(pixels, images[row["id"]])
    assert all(n == 1 for n in proxy.gets.values()) and len(proxy.gets) == 30


@pytest.mark.s3
def test_retries_that_run_out_become_an_error_row(s3_endpoint, s3_bucket):
    _upload(s3_endpoint, s3_bucket, 4)
    with ThrottlingProxy(s3_endpoint, lambda key: 5 if key.endswith("0001.png") else 0) as proxy:
        config = ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=proxy.url, read_attempts=3)
        fs, _ = read_filesystem(config.url, s3_endpoint=proxy.url)
        rows = {r["id"].rsplit("/", 1)[-1]: r
                for r in read_block(list_inputs(config), fs=fs, config=config).to_pylist()}
    bad = rows.pop("0001.png")
    assert bad["stage"] == "read" and "reduce your request rate" in bad["reason"]
    assert bad["read_retries"] == 2 and bad["pixels"] is None
    assert all(r["reason"] is None for r in rows.values())


@pytest.mark.s3
def test_gets_of_one_task_are_concurrent(s3_endpoint, s3_bucket):
    _upload(s3_endpoint, s3_bucket, 24)
    for concurrency, lowest, highest in ((1, 1, 1), (12, 6, 12)):
        with ThrottlingProxy(s3_endpoint, delay=0.05) as proxy:
            config = ReadConfig(f"s3://{s3_bucket}/imgs", s3_endpoint=proxy.url,
                                fetch_concurrency=concurrency)
            fs, _ = read_filesystem(config.url, s3_endpoint=proxy.url, connections=concurrency)
            read_block(list_inputs(config), fs=fs, config=config)
        assert lowest <= proxy.max_in_flight <= highest, (concurrency, proxy.max_in_flight)


@pytest.mark.s3
def test_range_file_reads_one_row_group_with_few_exact_gets(s3_endpoint, s3_bucket, tmp_path):
    import s3fs
    table = pa.table({"k": np.arange(4000), "blob": [bytes([i % 251]) * 500 for i in range(4000)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=1000, compression="none")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put_file(str(tmp_path / "t.parquet"), f"{s3_bucket}/t.parquet")
    size = fs.size(f"{s3_bucket}/t.parquet")
    with ThrottlingProxy(s3_endpoint, lambda key: 1) as proxy:
        read_fs, _ = read_filesystem(f"s3://{s3_bucket}", s3_endpoint=proxy.url)
        handle = RangeFile(read_fs, f"{s3_bucket}/t.parquet", size)
        group = pq.ParquetFile(handle, pre_buffer=True).read_row_group(2)
    assert group.column("k").to_pylist() == list(range(2000, 3000))
    assert group.equals(table.slice(2000, 1000))
    # the footer (pyarrow reads the last 64 KiB first) and that row group, nothing else
    meta = pq.read_metadata(tmp_path / "t.parquet")
    chunk = meta.row_group(2)
    group_bytes = sum(chunk.column(i).total_compressed_size for i in range(chunk.num_columns))
    assert handle.bytes_read <= group_bytes + 64 * 1024 + meta.serialized_size + 8
    assert handle.bytes_read < 0.5 * size and sum(proxy.gets.values()) <= 3
    assert handle.retries == 1 == proxy.injected      # one 503, retried, counted

    # a file smaller than pyarrow's first footer read: one GET serves everything
    pq.write_table(table.slice(0, 40), tmp_path / "small.parquet", row_group_size=10)
    fs.put_file(str(tmp_path / "small.parquet"), f"{s3_bucket}/small.parquet")
    size = fs.size(f"{s3_bucket}/small.parquet")
    assert size < 64 * 1024
    with ThrottlingProxy(s3_endpoint) as proxy:
        read_fs, _ = read_filesystem(f"s3://{s3_bucket}", s3_endpoint=proxy.url)
        handle = RangeFile(read_fs, f"{s3_bucket}/small.parquet", size)
        group = pq.ParquetFile(handle, pre_buffer=True).read_row_group(3)
    assert group.equals(table.slice(30, 10))
    assert handle.bytes_read == size and sum(proxy.gets.values()) == 1
