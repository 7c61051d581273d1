"""Data IO: decoding, readers and writers, bank files (fsspec/pyarrow)."""
