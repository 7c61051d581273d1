"""Retry transient storage errors with capped exponential backoff and full jitter.

One helper for every write path of the output layout (part files, markers, manifests,
the publication pointer); readers can use it too. What counts as transient:

* HTTP 500/502/503/504 and the throttling codes of S3-compatible stores (``SlowDown``,
  ``ServiceUnavailable``, ``InternalError``, ``RequestTimeout``, ``Throttling``),
  whether they arrive as botocore's ``ClientError`` or as the ``OSError`` s3fs
  translates them to (the original error is its ``__cause__``);
* dropped or timed-out connections (``ConnectionError``, ``TimeoutError``).

Everything else — a missing file, a denied permission, a failed precondition of a
conditional write — is raised at once: retrying cannot fix it, and retrying a lost
compare-and-swap would hide a real conflict.

The object-store clients already retry a few times underneath (botocore's own retry
modes, s3fs for ``SlowDown``); this outer loop covers what is left after they give up
(longer outages) and local or network filesystems that do not retry at all.
"""

from __future__ import annotations

import errno
import random
import time
from typing import Callable, TypeVar

__all__ = ["is_transient", "retry_call", "TRANSIENT_CODES"]

T = TypeVar("T")

#: Error codes of S3-compatible stores that mean "try again later".
TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "500", "502", "503", "504",
})
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
#: errno values s3fs gives translated 5xx/throttling errors, and lost connections.
_TRANSIENT_ERRNO = frozenset({errno.EBUSY, getattr(errno, "EREMOTEIO", 121), errno.EAGAIN,
                              errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.EPIPE})


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen and len(seen) < 8:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is worth retrying."""
    for item in _chain(error):
        response = getattr(item, "response", None)
        if isinstance(response, dict):              # botocore ClientError
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in TRANSIENT_CODES or status in _TRANSIENT_STATUS
        if isinstance(item, (FileNotFoundError, FileExistsError, PermissionError,
                             IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNO:
            return True
    return False


def retry_call(fn: Callable[[], T], *, attempts: int = 5, initial_delay: float = 0.2,
               max_delay: float = 10.0, what: str = "storage call",
               transient: Callable[[BaseException], bool] = is_transient,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on transient errors up to ``attempts`` times in all.

    Parameters
    ----------
    fn : callable
        Takes no argument; must be idempotent (a retried write rewrites the same bytes).
    attempts : int, default=5
        Calls in all, the first included.
    initial_delay, max_delay : float
        Backoff: before retry ``k`` (1-based) sleep a uniform random time in
        ``[0, min(max_delay, initial_delay * 2**(k-1))]`` ("full jitter", so that many
        workers hitting one throttled prefix do not retry in lockstep).
    what : str
        Named in the error raised after the last attempt.
    transient : callable, default=is_transient
        Which errors to retry.

    Raises
    ------
    The last error, unchanged, when it is not transient or no attempt is left (its
    message is not altered; the number of attempts is added as a note).
    """
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a positive integer, got {attempts!r}")
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as error:
            if attempt >= attempts or not transient(error):
                if attempt > 1:
                    error.add_note(f"{what}: gave up after {attempt} attempts")
                raise
        sleep(random.uniform(0, min(max_delay, initial_delay * 2 ** (attempt - 1))))
        attempt += 1
