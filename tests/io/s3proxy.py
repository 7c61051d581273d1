"""A small real HTTP proxy on 127.0.0.1 in front of the moto S3 server that throttles.

Object GETs (not listings) of chosen keys are answered ``503 SlowDown`` the way S3 answers
them, a given number of times per key, before being forwarded; every request is counted,
and so is the most GETs it ever had in flight at once. The code under test talks to it
as to any S3 endpoint.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message>"
             b"<RequestId>kernelbank-test</RequestId></Error>")


class ThrottlingProxy:
    """Forward to ``upstream``; fail object GETs of ``key`` ``failures(key)`` times first.

    Attributes
    ----------
    url : str
        The proxy's endpoint URL.
    injected : int
        503 answers sent so far.
    gets : dict
        Object GETs forwarded (successful) per key.
    max_in_flight : int
        Most object GETs being served at the same moment.
    """

    def __init__(self, upstream: str, failures: Callable[[str], int] = lambda key: 0,
                 delay: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.failures, self.delay = failures, delay
        self.injected = 0
        self.gets: dict[str, int] = {}
        self.max_in_flight = 0
        self._failed: dict[str, int] = {}
        self._in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):                # keep test output clean
                pass

            def _forward(self):
                key = urlsplit(self.path).path
                query = urlsplit(self.path).query
                is_object_get = self.command == "GET" and key.count("/") >= 2 and \
                    "list-type" not in query and not key.endswith("/")
                if is_object_get and proxy._should_fail(key):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if is_object_get:
                    proxy._enter(key)
                try:
                    if is_object_get and proxy.delay:
                        time.sleep(proxy.delay)
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    connection = http.client.HTTPConnection(proxy.upstream.hostname,
                                                            proxy.upstream.port, timeout=60)
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive")}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection",
                                                "content-length"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    connection.close()
                finally:
                    if is_object_get:
                        proxy._leave()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _should_fail(self, key: str) -> bool:
        with self._lock:
            done = self._failed.get(key, 0)
            if done < self.failures(key):
                self._failed[key] = done + 1
                self.injected += 1
                return True
            return False

    def _enter(self, key: str) -> None:
        with self._lock:
            self.gets[key] = self.gets.get(key, 0) + 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def __enter__(self) -> "ThrottlingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
