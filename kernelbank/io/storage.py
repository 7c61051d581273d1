"""Filesystems for URLs: local paths, ``s3://``, ``gs://`` and anything fsspec knows.

Credentials are never handled here: s3fs/gcsfs find them the standard way (AWS
environment variables, ``~/.aws`` profiles, instance roles; GCP application default
credentials) on every process that opens a file. Only the S3 endpoint, which is not a
secret, is passed explicitly so that Ray workers started before the variable was set
still reach an S3-compatible store.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec

__all__ = ["resolve", "read_filesystem", "storage_options", "url_of", "ray_filesystem", "join",
           "is_local", "redact"]


def storage_options(url: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: only the S3 endpoint, when there is one (no credentials)."""
    return _storage_options(fsspec.utils.get_protocol(url), s3_endpoint)


def _storage_options(protocol: str, s3_endpoint: str | None) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def resolve(url: str, *, s3_endpoint: str | None = None
            ) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-free path of ``url``.

    Parameters
    ----------
    url : str
        Local path or fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``file://…``).
    s3_endpoint : str, optional
        Endpoint of an S3-compatible store; default ``AWS_ENDPOINT_URL_S3`` or
        ``AWS_ENDPOINT_URL``.

    Returns
    -------
    fs : fsspec.AbstractFileSystem
        Picklable, so it can travel to Ray workers (it carries no credentials).
    path : str
        ``bucket/prefix`` for object stores, an absolute path for local files.
    """
    protocol = fsspec.utils.get_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **_storage_options(protocol, s3_endpoint))
    if is_local(fs):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def read_filesystem(url: str, *, s3_endpoint: str | None = None, connections: int = 32
                    ) -> tuple[fsspec.AbstractFileSystem, str]:
    """Like :func:`resolve`, tuned for many concurrent small reads with counted retries.

    For ``s3://`` the filesystem keeps ``connections`` HTTP connections open (botocore's
    default pool of 10 would cap concurrent GETs) and has the retries of botocore and
    s3fs switched off, so that throttling and time-outs reach
    :mod:`kernelbank.io.fetch`, which retries them with backoff and counts them. Other
    protocols are returned as :func:`resolve` gives them.
    """
    protocol = fsspec.utils.get_protocol(url)
    if protocol not in ("s3", "s3a"):
        return resolve(url, s3_endpoint=s3_endpoint)
    from .s3read import CountedRetryS3FileSystem
    options = _storage_options(protocol, s3_endpoint)
    fs = CountedRetryS3FileSystem(
        config_kwargs={"max_pool_connections": int(connections),
                       "retries": {"total_max_attempts": 1}}, **options)
    return fs, fs._strip_protocol(url).rstrip("/")


def url_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of a protocol-free ``path`` on ``fs`` (plain path for local files)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local filesystem."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def ray_filesystem(fs: fsspec.AbstractFileSystem):
    """What to pass as ``filesystem=`` to Ray Data: ``None`` for local paths."""
    if is_local(fs):
        return None
    import pyarrow.fs as pafs
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def join(path: str, *parts: str) -> str:
    """Join path parts with ``/`` (object-store style; also fine for local POSIX paths)."""
    return posixpath.join(path, *parts)


def redact(text: str) -> str:
    """Remove the values of credential variables from ``text`` (for logs and summaries)."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                 "GOOGLE_APPLICATION_CREDENTIALS"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
