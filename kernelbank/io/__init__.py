"""Data IO: decoding, dataset readers, table writers and output layout (fsspec/pyarrow).

Ray is imported inside the functions that need it, so importing this package is cheap.
"""

from .batches import shape_groups
from .manifest import list_inputs
from .readers import DECODED_SCHEMA, images_from_batch, read_dataset, read_images, split_and_label
from .storage import resolve

__all__ = ["DECODED_SCHEMA", "images_from_batch", "list_inputs", "read_dataset", "read_images",
           "resolve", "shape_groups", "split_and_label"]
