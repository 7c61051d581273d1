"""Data IO: decoding, dataset readers, table writers and output layout (fsspec/pyarrow).

Ray is imported inside the functions that need it, so importing this package is cheap.
"""

from .readers import DECODED_SCHEMA, images_from_batch, read_dataset, split_and_label
from .storage import resolve

__all__ = ["DECODED_SCHEMA", "images_from_batch", "read_dataset", "resolve", "split_and_label"]
