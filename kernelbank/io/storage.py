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
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec

__all__ = ["resolve", "read_filesystem", "storage_options", "url_of", "ray_filesystem", "join",
           "is_local", "redact", "safe_url"]


def storage_options(url: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: the S3 endpoint, when there is one, and no listings cache
    (never credentials)."""
    return _storage_options(fsspec.utils.get_protocol(url), s3_endpoint)


def _storage_options(protocol: str, s3_endpoint: str | None) -> dict[str, Any]:
    if protocol in ("file", "local"):
        return {}
    # no cached listings: runs are written by other processes (workers, other drivers)
    # while this one reads, and s3fs also sizes objects from a cached listing
    options: dict[str, Any] = {"use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


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


#: Query parameters whose values are secrets (pre-signed URLs, SAS tokens, API keys).
_SECRET_QUERY = re.compile(r"signature|credential|token|secret|password|passwd|key|sig$|sas",
                           re.IGNORECASE)
#: A URL inside free text: scheme://… up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_CREDENTIAL_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                         "GOOGLE_APPLICATION_CREDENTIALS", "RAY_AUTH_TOKEN")


def safe_url(url: str) -> str:
    """``url`` as it may appear in a log, a summary or a report: no credentials in it.

    Removes the user-info part (``s3://KEY:SECRET@bucket/x`` → ``s3://***@bucket/x``), the
    values of secret-looking query parameters (``X-Amz-Signature``, ``X-Amz-Credential``,
    ``X-Amz-Security-Token``, ``sig``, ``token``, …) and the values of the credential
    environment variables wherever they occur.

    >>> safe_url("s3://AKIA:abc@bucket/run?X-Amz-Signature=f00&part=1")
    's3://***@bucket/run?X-Amz-Signature=***&part=1'
    >>> safe_url("/data/images")
    '/data/images'
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:                      # not parseable as a URL: only the env values
        return _redact_values(text)
    if parts.scheme and len(parts.scheme) > 1:        # "c:/x" is a Windows path, not a URL
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs],
                              safe="*/:")
        text = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return _redact_values(text)


def _redact_values(text: str) -> str:
    for name in _CREDENTIAL_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def redact(text: str) -> str:
    """``text`` with every URL in it passed through :func:`safe_url` and the values of the
    credential environment variables removed (for logs, summaries and reports)."""
    return _redact_values(_URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), str(text)))
