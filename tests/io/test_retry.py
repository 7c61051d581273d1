"""Transient S3 errors in writes are retried (the reader's policy, io.fetch); others are not.

A small HTTP proxy in front of the real moto server answers the first N object PUTs with
``503 ServiceUnavailable`` (or ``403 AccessDenied``) and forwards everything else, so
the retries run against real S3 semantics. botocore's and s3fs's own retries are turned
off for the filesystem under test, so only kernelbank's retry can make a write succeed.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from kernelbank.io.atomic import read_bytes, replace_if, write_bytes
from kernelbank.io.fetch import RetryPolicy, call_with_retries, is_transient

pytestmark = [pytest.mark.s3]

ERROR = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>' \
        '<Message>injected by the test proxy</Message></Error>'


class FaultyProxy:
    """Forwards requests to ``target``; fails the next ``fail`` PUTs with ``status``."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self.fail, self.status, self.code = 0, 503, "ServiceUnavailable"
        self.failed = self.forwarded_puts = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 answers botocore's "Expect: 100-continue" before it sends a body
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):                  # keep the test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    inject = self.command == "PUT" and proxy.fail > 0
                    if inject:
                        proxy.fail -= 1
                        proxy.failed += 1
                    elif self.command == "PUT":
                        proxy.forwarded_puts += 1
                if inject:
                    payload = ERROR.format(code=proxy.code).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port,
                                                      timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(s3_endpoint):
    proxy = FaultyProxy(s3_endpoint)
    yield proxy
    proxy.close()


def _fs_without_client_retries(endpoint: str):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint},
                           config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"}},
                           skip_instance_cache=True, use_listings_cache=False)
    fs.retries = 1                                   # s3fs's own loop (a class attribute)
    return fs


def test_503s_in_writes_are_retried(proxy, s3_bucket):
    fs = _fs_without_client_retries(proxy.url)
    proxy.fail = 3
    write_bytes(fs, f"{s3_bucket}/out/part-0.parquet", b"part bytes")
    assert proxy.failed == 3 and proxy.fail == 0
    assert read_bytes(fs, f"{s3_bucket}/out/part-0.parquet") == b"part bytes"
    # the conditional pointer write too; a retried conditional PUT is still conditional
    proxy.fail = 2
    token = replace_if(fs, f"{s3_bucket}/out/LATEST.json", b'{"run_id": "a"}', None)
    assert token and proxy.failed == 5
    assert replace_if(fs, f"{s3_bucket}/out/LATEST.json", b'{"run_id": "b"}', None) is None
    assert read_bytes(fs, f"{s3_bucket}/out/LATEST.json") == b'{"run_id": "a"}'


def test_a_denied_write_is_not_retried(proxy, s3_bucket):
    fs = _fs_without_client_retries(proxy.url)
    proxy.fail, proxy.status, proxy.code = 5, 403, "AccessDenied"
    with pytest.raises(PermissionError):
        write_bytes(fs, f"{s3_bucket}/out/x.bin", b"x")
    assert proxy.failed == 1                                   # one try, no retry


def test_retry_gives_up_after_its_attempts(proxy, s3_bucket):
    fs = _fs_without_client_retries(proxy.url)
    proxy.fail = 10
    with pytest.raises(OSError) as raised:
        call_with_retries(lambda: fs.pipe_file(f"{s3_bucket}/out/y.bin", b"y"),
                          RetryPolicy(attempts=3, base_delay=0.01))
    assert proxy.failed == 3 and is_transient(raised.value)
    assert raised.value.kernelbank_retries == 2
