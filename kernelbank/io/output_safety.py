"""Where kernelbank refuses to write, checked before any work starts.

An output root is only ever written (and old runs in it only ever deleted) when it is
safe to treat the prefix as kernelbank's:

* never a bucket root (``s3://bucket``) or the filesystem root: a prefix is required;
* never an existing, non-empty folder or prefix that lacks the ownership marker
  (:data:`~kernelbank.io.layout.MARKER`) — not even with ``--overwrite``, which only
  ever replaces kernelbank's own published run;
* never overlapping the input: an input inside the output (or the output inside the
  input) could be read back as images, or deleted with old runs;
* never the implicit default output inside a ``ray job submit`` driver, whose working
  directory is a temporary copy deleted with the job.
"""

from __future__ import annotations

import os

from .layout import MARKER, POINTER, RUNS, SUMMARY
from .storage import is_local, join, resolve, safe_url

__all__ = ["check_output", "check_not_nested", "in_ray_job", "RAY_JOB_ENV"]

#: Set by Ray's job supervisor in the environment of every ``ray job submit`` driver.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """Whether this process is the driver of a ``ray job submit`` job."""
    return bool(os.environ.get(RAY_JOB_ENV))


def _location(url: str, s3_endpoint: str | None) -> tuple[frozenset, str]:
    fs, path = resolve(url, s3_endpoint=s3_endpoint)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if is_local(fs):
        path = os.path.realpath(path)
        protocols = ("file",)
    return frozenset(p.replace("s3a", "s3") for p in protocols), path.rstrip("/") or "/"


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_not_nested(input_url: str, output_url: str, *, s3_endpoint: str | None = None) -> None:
    """Refuse an input inside the output or an output inside the input.

    Raises
    ------
    ValueError
        Naming both URLs and which contains which.
    """
    (in_protocols, in_path), (out_protocols, out_path) = (
        _location(input_url, s3_endpoint), _location(output_url, s3_endpoint))
    if not in_protocols & out_protocols:
        return
    if _inside(in_path, out_path):
        raise ValueError(f"the input {safe_url(input_url)!r} lies inside the output "
                         f"{safe_url(output_url)!r}: old runs are deleted from the output, and "
                         "outputs could be read as images; choose an output outside the input")
    if _inside(out_path, in_path):
        raise ValueError(f"the output {safe_url(output_url)!r} lies inside the input "
                         f"{safe_url(input_url)!r}: its files would be read as input by the "
                         "next run; choose an output outside the input")


def check_output(fs, root: str, url: str) -> bool:
    """Check that ``root`` (on ``fs``, given as ``url``) may hold kernelbank runs.

    Returns
    -------
    bool
        Whether the ownership marker is already there (``False``: the location is new
        or empty and the caller creates the marker).

    Raises
    ------
    ValueError
        For a bucket root or the filesystem root.
    FileExistsError
        For an existing non-empty location without the marker, or a file.
    """
    shown = safe_url(url)
    if is_local(fs):
        if os.path.realpath(root) == "/":
            raise ValueError(f"refusing to write kernelbank runs to the filesystem root {shown!r}; "
                             "choose a folder, e.g. runs/run1")
    elif "/" not in root.strip("/"):
        raise ValueError(f"refusing to write kernelbank runs to the bucket root {shown!r}: "
                         f"give a prefix, e.g. {shown.rstrip('/')}/kernelbank/run1")
    if fs.exists(join(root, MARKER)):
        return True
    if not fs.exists(root):
        return False
    if not fs.isdir(root):
        raise FileExistsError(f"output {shown!r} is a file; choose a folder")
    entries = fs.ls(root, detail=False)
    if not entries:
        return False
    names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries}
    if MARKER in names:     # another driver created it since the check above: ours to share
        return True
    legacy = (" It looks like the output of an older kernelbank (summary.json at its root); "
              "delete it yourself or choose another --output."
              if SUMMARY in names and RUNS not in names and POINTER not in names else "")
    raise FileExistsError(
        f"output {shown!r} exists, is not empty and is not a kernelbank output (no {MARKER}); "
        "refusing to write or delete anything there, even with --overwrite. Choose a new or "
        f"empty folder.{legacy}")
