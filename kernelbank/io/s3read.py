"""An s3fs filesystem whose failed requests surface at once, for :mod:`kernelbank.io.fetch`.

s3fs retries SlowDown and time-outs itself (5 attempts) and botocore retries again below
it, invisibly: a throttled run would look healthy and slow. The reader wants to see
every throttled request, back off and count it, so this subclass makes one attempt per
call; botocore's retries are switched off by the caller's ``config_kwargs``
(:func:`kernelbank.io.storage.read_filesystem`). A module-level class, so that it pickles
to Ray workers by name.
"""

from __future__ import annotations

import s3fs

__all__ = ["CountedRetryS3FileSystem"]


class CountedRetryS3FileSystem(s3fs.S3FileSystem):
    """:class:`s3fs.S3FileSystem` with one attempt per request (retries are the caller's)."""

    retries = 1
