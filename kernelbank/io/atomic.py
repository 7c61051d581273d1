"""Whole-file writes that never leave a partial file, and compare-and-swap of small objects.

The output layout (:mod:`kernelbank.io.runs`) needs three storage primitives:

:func:`write_bytes`
    Atomic, durable replacement of one file. Local: a hidden temporary file in the same
    folder, ``fsync``, ``os.replace``, ``fsync`` of the folder — a reader (or a crash)
    sees the old file or the new one, never half of it. Object stores: one ``PUT``
    (S3 makes an object visible only once its upload completed, multipart included).
:func:`create_exclusive`
    Create a file only if it does not exist (markers, leases). Local: ``os.link`` of a
    complete temporary file, which fails if the name exists. S3: ``If-None-Match: *``.
:func:`read_versioned` + :func:`replace_if`
    Optimistic concurrency for the publication pointer and leases: read a file with a
    version token, later replace it only if it still has that token. Local: the check
    and the rename happen under an exclusive ``flock`` on a lock file beside it (released
    by the kernel if the process dies, so a killed writer never leaves it locked). S3:
    ``If-Match: <ETag>`` (or ``If-None-Match: *`` when the file did not exist), which
    AWS S3 and moto implement. Other stores (GCS through fsspec, …) get a documented best
    effort: compare, write, read back — two writers racing within one round trip can
    both succeed there, and the later one wins.

Every call is retried on transient errors (throttling, 5xx, dropped connections) with
the reader's retry policy (:func:`kernelbank.io.fetch.call_with_retries`, under
:data:`WRITE_RETRIES`); a lost compare-and-swap or a denied request is not transient and
is never retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, TypeVar

from .fetch import RetryPolicy, call_with_retries
from .storage import is_local

__all__ = ["write_bytes", "write_with", "create_exclusive", "read_versioned", "replace_if", "Versioned",
           "read_bytes", "remove_tree", "supports_conditional_writes", "retried",
           "WRITE_RETRIES"]

T = TypeVar("T")
_TMP = ".tmp-"
#: Retries of every call here (the object-store clients' own retries come underneath).
WRITE_RETRIES = RetryPolicy(attempts=6, base_delay=0.2, max_delay=10.0)


def retried(call: Callable[[], T], policy: RetryPolicy = WRITE_RETRIES) -> T:
    """``call()``, retried on transient errors under ``policy`` (the last error is raised)."""
    return call_with_retries(call, policy)[0]


@dataclass(frozen=True)
class Versioned:
    """A file's content and its version token (``None``/``None`` when it does not exist)."""

    data: bytes | None
    token: str | None


def _is_s3(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols)


def supports_conditional_writes(fs) -> bool:
    """Whether :func:`replace_if`/:func:`create_exclusive` are atomic on ``fs``."""
    return is_local(fs) or _is_s3(fs)


def _split(fs, path: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(path)
    return bucket, key


# ------------------------------------------------------------------------------ local
def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):          # not every filesystem can fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _local_temp(path: str, data: bytes | Callable[[BinaryIO], object]) -> str:
    """A complete, synced hidden file beside ``path`` holding ``data`` (or what the
    callable writes to the open file)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f".{name}{_TMP}{uuid.uuid4().hex[:12]}")
    with open(temp, "wb") as handle:
        data(handle) if callable(data) else handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def _local_write(path: str, data: bytes | Callable[[BinaryIO], object]) -> None:
    temp = _local_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(os.path.dirname(path))


def _local_create(path: str, data: bytes) -> bool:
    temp = _local_temp(path, data)
    try:
        os.link(temp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(temp)
    _fsync_dir(os.path.dirname(path))
    return created


@contextlib.contextmanager
def _local_lock(path: str):
    import fcntl
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                              # closing releases the lock


def _local_read(path: str) -> Versioned:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return Versioned(None, None)
    return Versioned(data, hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------ s3
def _is_precondition_failure(error: BaseException) -> bool:
    item: BaseException | None = error
    for _ in range(8):
        if item is None:
            break
        if isinstance(item, FileExistsError):
            return True
        response = getattr(item, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in ("PreconditionFailed", "ConditionalRequestConflict") or \
                status in (409, 412)
        item = item.__cause__ or item.__context__
    return False


def _s3_put(fs, path: str, data: bytes, **condition) -> str | None:
    """PUT ``data``; its ETag, or ``None`` when a condition failed."""
    bucket, key = _split(fs, path)
    try:
        response = retried(lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data,
                                              **condition))
    except Exception as error:
        if condition and _is_precondition_failure(error):
            return None
        raise
    finally:
        fs.invalidate_cache(path)
    return str(response.get("ETag"))


def _s3_read(fs, path: str) -> Versioned:
    for _ in range(5):                         # etag and content of one version
        fs.invalidate_cache(path)
        try:
            before = retried(lambda: fs.info(path))
            data = retried(lambda: fs.cat_file(path))
            after = retried(lambda: fs.info(path))
        except FileNotFoundError:
            return Versioned(None, None)
        if before.get("ETag") == after.get("ETag"):
            return Versioned(data, str(after.get("ETag")))
    raise OSError(f"{path} kept changing while it was read")


# ------------------------------------------------------------------------------ API
def write_bytes(fs, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    if is_local(fs):
        retried(lambda: _local_write(path, data))
    else:
        retried(lambda: fs.pipe_file(path, data))
        fs.invalidate_cache(path)


def write_with(fs, path: str, write: Callable[[BinaryIO], object], *,
               retry: bool = True) -> None:
    """Replace ``path`` atomically with what ``write(file)`` writes (as :func:`write_bytes`).

    Locally the callable writes straight into the temporary file, so a large file (a
    fit part: tens of MB) is never also held in memory; object stores get its bytes.
    ``retry=False``: the callable is called once (it consumes an iterator), and a local
    failure is raised as it is.
    """
    if is_local(fs):
        if retry:
            retried(lambda: _local_write(path, write))
        else:
            _local_write(path, write)
        return
    buffer = io.BytesIO()
    write(buffer)
    write_bytes(fs, path, buffer.getvalue())


def read_bytes(fs, path: str) -> bytes | None:
    """The content of ``path``, or ``None`` when it does not exist (retried).

    The filesystem's cached listing of the folder is dropped first: s3fs sizes an object
    from it, and a listing cached before another process wrote ``path`` would hide it.
    """
    fs.invalidate_cache(path)
    try:
        return retried(lambda: fs.cat_file(path))
    except FileNotFoundError:
        return None


def create_exclusive(fs, path: str, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; ``True`` when this call created it."""
    if is_local(fs):
        return retried(lambda: _local_create(path, data))
    if _is_s3(fs):
        # a retried PUT whose first try landed fails its precondition: ours all the same
        return _s3_put(fs, path, data, IfNoneMatch="*") is not None or \
            read_bytes(fs, path) == data
    if fs.exists(path):                        # best effort on other stores
        return False
    write_bytes(fs, path, data)
    return True


def read_versioned(fs, path: str) -> Versioned:
    """Content and version token of ``path`` for a later :func:`replace_if`."""
    if is_local(fs):
        return retried(lambda: _local_read(path))
    if _is_s3(fs):
        return _s3_read(fs, path)
    data = read_bytes(fs, path)
    return Versioned(data, None if data is None else hashlib.sha256(data).hexdigest())


def replace_if(fs, path: str, data: bytes, expected: str | None) -> str | None:
    """Write ``data`` to ``path`` only if its version token is still ``expected``.

    ``expected=None`` means "only if ``path`` does not exist". Returns the new version
    token when the write happened, ``None`` when someone else changed ``path`` since it
    was read (nothing is written then).
    """
    if is_local(fs):
        with _local_lock(path):
            if _local_read(path).token != expected:
                return None
            retried(lambda: _local_write(path, data))
            return hashlib.sha256(data).hexdigest()
    if _is_s3(fs):
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        token = _s3_put(fs, path, data, **condition)
        if token is None:       # a retried PUT whose first try landed: ours all the same
            current = read_versioned(fs, path)
            token = current.token if current.data == data else None
        return token
    if read_versioned(fs, path).token != expected:
        return None
    write_bytes(fs, path, data)
    return hashlib.sha256(data).hexdigest() if read_bytes(fs, path) == data else None


def remove_tree(fs, path: str) -> None:
    """Delete ``path`` and everything below it (nothing when it does not exist)."""
    def remove():
        if fs.exists(path):
            fs.rm(path, recursive=True)
    retried(remove)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
