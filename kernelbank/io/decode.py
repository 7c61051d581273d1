"""Decode image bytes and arrays into float32 greyscale images or volumes, and check them.

Runs inside Ray workers (never on the driver). Colour images become luminance
``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601, the weights PIL's ``convert("L")`` uses, but
kept in float32 instead of rounding to uint8); alpha is dropped; 16-bit and float
TIFFs keep their values. ``.npy`` files hold one 2-D image or one 3-D volume.

A problem with one record is reported as a reason string, never raised past
:func:`decode_record`, so that a bad file becomes an error row.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "VOLUME_EXTENSIONS", "decode_bytes", "to_grey",
           "check_image", "decode_record"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff")
VOLUME_EXTENSIONS = ("npy",)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_grey(array: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Greyscale float32 version of a decoded array.

    Parameters
    ----------
    array : ndarray of shape (H, W), (H, W, C) with C in 1..4, or (D, H, W) for volumes
    ndim : {2, 3}
        Spatial dimensions expected; with ``ndim=2`` a trailing channel axis is removed.

    Returns
    -------
    ndarray of shape (H, W) or (D, H, W), float32
    """
    array = np.asarray(array)
    if ndim == 2 and array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        channels = array.shape[-1]
        if channels in (1, 2):               # grey (+ alpha)
            array = array[..., 0]
        else:                                # RGB (+ alpha)
            array = array[..., :3].astype(np.float32) @ _LUMA
    if array.dtype.kind not in "uif" and array.dtype != np.bool_:
        raise ValueError(f"unsupported pixel type {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def decode_bytes(data: bytes, name: str, ndim: int = 2) -> np.ndarray:
    """Decode one file's bytes (PNG, JPEG, TIFF via Pillow; ``.npy`` via NumPy).

    Raises ``ValueError`` (or Pillow's error) when the bytes are not a readable image.
    """
    if name.lower().endswith(".npy") or data[:6] == b"\x93NUMPY":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return to_grey(array, ndim)
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        array = np.asarray(image)
    return to_grey(array, ndim)


def check_image(array: np.ndarray, ndim: int, min_side: int) -> str | None:
    """Why ``array`` cannot be fitted, or ``None`` when it can."""
    if array.ndim != ndim:
        hint = " (pass --ndim 3 for volumes)" if array.ndim == 3 else ""
        return f"has {array.ndim} dimensions (shape {array.shape}), expected {ndim}{hint}"
    if min(array.shape) < min_side:
        return (f"shape {array.shape} is smaller than the {min_side}-pixel window of the "
                f"largest radius x dilation; use a smaller radius or dilation")
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        return f"contains {bad} NaN or inf values"
    return None


def decode_record(data: bytes | np.ndarray, name: str, ndim: int, min_side: int
                  ) -> tuple[np.ndarray | None, str | None]:
    """Decode and check one record.

    Returns
    -------
    image : ndarray or None
        The decoded image (also when it fails the checks), ``None`` when undecodable.
    reason : str or None
        Why the record cannot be fitted, ``None`` when it can.
    """
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            image = decode_bytes(bytes(data), name, ndim)
        else:
            image = to_grey(np.asarray(data), ndim)
    except Exception as error:  # any decoder failure is a property of this record
        message = str(error).split(" <_io.")[0]      # drop PIL's object repr
        return None, f"cannot decode: {type(error).__name__}: {message}"
    return image, check_image(image, ndim, min_side)
