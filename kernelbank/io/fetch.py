"""Fetch many objects (or byte ranges) concurrently, retrying what is worth retrying.

A read task of the pipeline holds a few hundred to a few thousand small objects. One
GET at a time leaves it waiting on round trips (~15 objects/s per task against an object
store), so :func:`fetch_ranges` keeps ``concurrency`` GETs in flight from a bounded
thread pool, for any fsspec filesystem: local files, ``s3://`` (s3fs), ``gs://`` (gcsfs).
Every request is a plain ``cat_file`` (one GET, with a byte range when asked): no
``info``/HEAD, no ``open``.

Retries are ours, and counted: throttling (S3 ``503 SlowDown``, ``ServiceUnavailable``,
``InternalError``), time-outs and connection errors are retried with exponential backoff
and jitter (:class:`RetryPolicy`); everything else (not found, access denied) fails at
once. For S3 the filesystem is built with the library's own retries off
(:func:`kernelbank.io.storage.read_filesystem`) so that none is retried silently twice.
"""

from __future__ import annotations

import errno
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

__all__ = ["RetryPolicy", "Fetched", "is_transient", "call_with_retries", "fetch_ranges",
           "RangeFile"]

T = TypeVar("T")

#: errno values of failures that a later attempt may not see (EBUSY is s3fs's SlowDown/503).
_TRANSIENT_ERRNO = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                              getattr(errno, "EREMOTEIO", errno.EIO)})
_TRANSIENT_WORDS = ("slowdown", "slow down", "reduce your request rate", "throttl",
                    "serviceunavailable", "service unavailable", "internalerror",
                    "too many requests", "requesttimeout", "(503)", "(500)", "(502)", "(504)",
                    "(429)")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    Attempt ``k`` (0-based) that fails transiently waits
    ``min(max_delay, base_delay * 2**k) * uniform(0.5, 1)`` seconds before the next.

    Parameters
    ----------
    attempts : int, default=8
        Total attempts per request (1 = no retry).
    base_delay, max_delay : float, default=0.1, 20.0
        Seconds; S3 asks clients to back off for seconds when it answers SlowDown.
    """

    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be a positive integer, got {self.attempts!r}")
        if not (0 <= self.base_delay <= self.max_delay):
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {self.base_delay!r}, "
                             f"{self.max_delay!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        return min(self.max_delay, self.base_delay * 2 ** attempt) * rng.uniform(0.5, 1.0)


@dataclass
class Fetched:
    """The outcome of one request: ``data`` or ``error``, and how many retries it took."""

    data: bytes | None
    error: str | None
    retries: int


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth another attempt (throttling, time-out, lost connection).

    Not found, permission and value errors are permanent. Object-store clients wrap HTTP
    failures differently (s3fs maps SlowDown/503 to ``OSError(EBUSY)``; botocore and
    aiohttp raise their own connection classes), so the type, the errno and the message
    are all looked at.
    """
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNO:
        return True
    names = " ".join(cls.__name__ for cls in type(error).__mro__).lower()
    if "timeout" in names or "connect" in names or "throttl" in names:
        return True
    text = f" {error}".lower()
    return any(word in text for word in _TRANSIENT_WORDS)


def call_with_retries(call: Callable[[], T], policy: RetryPolicy, *,
                      sleep: Callable[[float], None] = time.sleep,
                      rng: random.Random | None = None) -> tuple[T, int]:
    """``call()`` with transient failures retried under ``policy``.

    Returns
    -------
    result : the value of the successful call
    retries : int
        Failed attempts before it.

    Raises
    ------
    Exception
        The last error, when it is permanent or the attempts are used up; its
        ``kernelbank_retries`` attribute holds the retries spent.
    """
    rng = rng or random.Random()
    for attempt in range(policy.attempts):
        try:
            return call(), attempt
        except Exception as error:
            if attempt + 1 >= policy.attempts or not is_transient(error):
                error.kernelbank_retries = attempt   # type: ignore[attr-defined]
                raise
            sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, FileNotFoundError):
        return f"not found: {text}"
    return f"{type(error).__name__}: {text}"


def fetch_ranges(fs, requests: Sequence[tuple[str, int | None, int | None]], *,
                 concurrency: int = 32, policy: RetryPolicy | None = None
                 ) -> Iterator[Fetched]:
    """Fetch ``(path, start, end)`` requests concurrently; yields results in request order.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    requests : sequence of (path, start, end)
        Protocol-free paths; ``start``/``end`` a byte range, ``None`` for the whole object.
    concurrency : int, default=32
        Requests in flight at once (threads of the pool).
    policy : RetryPolicy, optional

    Yields
    ------
    Fetched
        In the order of ``requests``, as soon as each (and every one before it) is done,
        so the caller can decode while later GETs are still in flight.
    """
    policy = policy or RetryPolicy()

    def one(request: tuple[str, int | None, int | None]) -> Fetched:
        path, start, end = request
        try:
            data, retries = call_with_retries(
                lambda: fs.cat_file(path, start=start, end=end), policy)
        except Exception as error:
            return Fetched(None, _describe(error), getattr(error, "kernelbank_retries", 0))
        return Fetched(bytes(data), None, retries)

    if not requests:
        return
    if concurrency <= 1 or len(requests) == 1:
        for request in requests:
            yield one(request)
        return
    with ThreadPoolExecutor(max_workers=min(concurrency, len(requests)),
                            thread_name_prefix="kernelbank-fetch") as pool:
        yield from pool.map(one, requests)


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over ``fs`` whose every read is one retried ranged GET.

    Lets pyarrow read a Parquet footer and then one row group's column chunks with a few
    exact range requests (no read-ahead of unrelated bytes, no HEAD: the size comes from
    the listing), with transient failures retried and everything counted. The last range
    fetched is kept, so reads inside it (a small file's footer read covers the whole
    file) cost nothing more.

    Attributes
    ----------
    bytes_read : int
        Bytes returned by the store so far.
    retries : int
        Retried attempts so far.
    """

    def __init__(self, fs, path: str, size: int, policy: RetryPolicy | None = None):
        super().__init__()
        self.fs, self.path, self.size, self.policy = fs, path, int(size), policy or RetryPolicy()
        self.position = 0
        self.bytes_read = 0
        self.retries = 0
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] = (0, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` in one GET (retried)."""
        end = min(end, self.size)
        if start >= end:
            return b""
        cached_start, cached = self._cached
        if cached_start <= start and end <= cached_start + len(cached):
            return cached[start - cached_start:end - cached_start]
        data, retries = call_with_retries(
            lambda: self.fs.cat_file(self.path, start=start, end=end), self.policy)
        data = bytes(data)
        with self._lock:
            self.bytes_read += len(data)
            self.retries += retries
            self._cached = (start, data)
        return data

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else self.position + size
        data = self.read_range(self.position, end)
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
