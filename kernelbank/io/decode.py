"""Decode image bytes and arrays into greyscale images or volumes in their native dtype.

Runs inside Ray workers (never on the driver). What comes out:

* 8-bit greyscale (Pillow modes ``L``, ``LA``, ``1``) stays ``uint8``; 16-bit (``I;16``)
  stays ``uint16``; float TIFFs (``F``) are ``float32``. Integer arrays of at most 16 bits
  keep their dtype, ``bool`` becomes ``uint8``, every other array ``float32``.
* Colour becomes luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601, the weights PIL's
  ``convert("L")`` uses) computed in ``float32`` rather than rounded to ``uint8``: the
  rounding would change every fitted kernel a little. A colour image whose channels are
  all equal is greyscale stored as RGB and keeps its ``uint8`` channel. Alpha is dropped.
* ``.npy`` files hold one 2-D image (optionally with a trailing band axis) or one 3-D
  volume.

With channels (``channels="rgb"`` or ``"all"``, 2-D images only) the bands are kept
instead, as a ``(C, H, W)`` array in the native dtype (``uint8``/``uint16`` stay integers):

* ``rgb``: three channels. RGB stays as it is; a greyscale image (``L``, ``I;16``, an
  ``(H, W)`` array) is replicated into three equal channels, so grey and colour images
  share one run and a grey image's vector kernel is the grey kernel spread over equal
  channels; alpha (``LA``, ``RGBA``) is dropped; more than four bands is an error;
* ``all``: every band as stored (RGBA keeps its alpha as a 4th channel, multi-band
  TIFF and ``(H, W, B)`` arrays keep their ``B`` bands, grey is one channel). A run
  needs one channel count, so records of another count become error rows (see
  :func:`kernelbank.io.readers.read_block`).

Why the native dtype: 8-bit pixels travel through the object store and into the fit at
1 byte each instead of 4 (the fit casts to float on its device).

Decoder limits (what a hostile or broken input cannot make a worker do):

* only PNG, JPEG and TIFF reach Pillow, and Pillow is told so (``formats=``): a ``.png``
  that really holds EPS never reaches Ghostscript, nor any other of Pillow's decoders;
* ``.npy`` is recognised by its magic header, never by name alone, and loaded with
  ``allow_pickle=False``;
* the pixel count (:attr:`DecodeLimits.max_pixels`) is checked from the header before
  any pixel is decoded, the decoded size of ``.npy`` and TIFF against
  :attr:`DecodeLimits.max_bytes`; Pillow's decompression-bomb warning is an error here.

A problem with one record is reported as a reason string, never raised past
:func:`decode_record`, so that a bad file becomes an error row.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from .png import decode_png

__all__ = ["IMAGE_EXTENSIONS", "VOLUME_EXTENSIONS", "ALLOWED_FORMATS", "DecodeLimits",
           "RecordRejected", "decode_bytes", "to_grey", "to_channels", "check_image",
           "decode_record", "CHANNEL_MODES"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff")
VOLUME_EXTENSIONS = ("npy",)
#: The only Pillow decoders a record may reach.
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF")
_NPY_MAGIC = b"\x93NUMPY"
#: Values of the ``channels`` argument: one grey channel, three, or every band.
CHANNEL_MODES = ("luminance", "rgb", "all")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_KEEP_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "uint16", "int8", "int16", "float32"))
#: Bytes per sample of Pillow modes wider than 8 bits (everything else is 1).
_MODE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before a record is decoded.

    Parameters
    ----------
    max_pixels : int, default=64_000_000
        Largest pixel count (width × height, or voxels of a volume) a record may have.
    max_bytes : int, default=1 GiB
        Largest decoded size of a ``.npy`` array or TIFF image, and largest encoded
        object the reader fetches at all.
    """

    max_pixels: int = 64_000_000
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RecordRejected(ValueError):
    """A record breaks a decoder limit or uses a format that is not allowed."""


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in the dtype it travels in: small integers as they are, else float32."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise ValueError(f"unsupported pixel type {array.dtype}")
    if array.dtype in _KEEP_DTYPES:
        array = np.ascontiguousarray(array)
        # Pillow hands out read-only views; callers (torch.as_tensor) expect to own it
        return array if array.flags.writeable else array.copy()
    return np.ascontiguousarray(array, dtype=np.float32)


def to_grey(array: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Greyscale version of a decoded array, in its native dtype.

    Parameters
    ----------
    array : ndarray of shape (H, W), (H, W, C) with C in 1..4, or (D, H, W) for volumes
    ndim : {2, 3}
        Spatial dimensions expected; with ``ndim=2`` a trailing channel axis is removed.

    Returns
    -------
    ndarray of shape (H, W) or (D, H, W)
        ``uint8``/``uint16``/``int8``/``int16`` when the input is (and for colour whose
        channels are equal), otherwise ``float32``.
    """
    array = np.asarray(array)
    if ndim == 2 and array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        if array.shape[-1] in (1, 2):                # grey (+ alpha)
            array = array[..., 0]
        else:                                        # RGB (+ alpha)
            rgb = array[..., :3]
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0],
                                                                           rgb[..., 2]):
                array = rgb[..., 0]
            else:
                if rgb.dtype.kind not in "uif":
                    raise ValueError(f"unsupported pixel type {rgb.dtype}")
                array = rgb.astype(np.float32) @ _LUMA
    return _native(array)


def to_channels(array: np.ndarray, channels: str) -> np.ndarray:
    """The bands of a decoded 2-D image as ``(C, H, W)``, in its native dtype.

    Parameters
    ----------
    array : ndarray of shape (H, W) or (H, W, B)
    channels : {"rgb", "all"}
        ``rgb``: grey replicated to 3 channels, alpha dropped; ``all``: every band.

    Returns
    -------
    ndarray of shape (C, H, W), C-contiguous

    Raises
    ------
    ValueError
        For ``rgb`` and an image of more than four bands, or an array of another rank.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"a 2-D image with channels has shape (H, W) or (H, W, bands), got "
                         f"shape {array.shape}")
    bands = array.shape[-1]
    if channels == "rgb":
        if bands > 4:
            raise ValueError(f"has {bands} bands; --channels rgb takes grey, grey+alpha, RGB "
                             "or RGBA (1-4 bands): use --channels all to keep every band")
        # grey (+ alpha): replicate the grey band; RGB (+ alpha): drop the alpha
        array = np.repeat(array[..., :1], 3, axis=-1) if bands <= 2 else array[..., :3]
    elif channels != "all":
        raise ValueError(f"channels must be 'rgb' or 'all' here, got {channels!r}")
    return _native(np.moveaxis(array, -1, 0))


def _bands(array: np.ndarray, ndim: int, channels: str) -> np.ndarray:
    """The decoded array as the run models it: grey, or ``(C, H, W)`` bands."""
    if channels == "luminance":
        return to_grey(array, ndim)
    return to_channels(array, channels)


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` from its header alone (no data is read)."""
    from numpy.lib import format as npy_format
    handle = io.BytesIO(data)
    version = npy_format.read_magic(handle)
    reader = npy_format.read_array_header_1_0 if version == (1, 0) else \
        npy_format.read_array_header_2_0
    shape, _, dtype = reader(handle)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _decode_npy(data: bytes, ndim: int, limits: DecodeLimits, channels: str = "luminance"
                ) -> np.ndarray:
    shape, dtype = _npy_header(data)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise RecordRejected(f".npy of dtype {dtype} is not an image (numbers only)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    bands = ndim == 2 and len(shape) == 3 and (shape[-1] <= 4 or channels == "all")
    pixels = count // shape[-1] if bands else count
    if pixels > limits.max_pixels:
        raise RecordRejected(f".npy of shape {shape} has {pixels} pixels, more than "
                             f"max_pixels={limits.max_pixels} (--max-pixels)")
    if count * dtype.itemsize > limits.max_bytes:
        raise RecordRejected(f".npy of shape {shape} and dtype {dtype} decodes to "
                             f"{count * dtype.itemsize} bytes, more than "
                             f"max_bytes={limits.max_bytes}")
    return _bands(np.load(io.BytesIO(data), allow_pickle=False), ndim, channels)


def _check_header(image, limits: DecodeLimits) -> None:
    """Refuse an opened (not yet decoded) Pillow image that breaks ``limits``."""
    width, height = image.size
    pixels = width * height
    if pixels > limits.max_pixels:
        raise RecordRejected(f"{image.format} image of {width}x{height} = {pixels} pixels is "
                             f"larger than max_pixels={limits.max_pixels} (--max-pixels); "
                             "not decoded")
    if image.format == "TIFF":
        decoded = pixels * len(image.getbands()) * _MODE_BYTES.get(image.mode, 1)
        if decoded > limits.max_bytes:
            raise RecordRejected(f"TIFF image of {width}x{height} in mode {image.mode} decodes "
                                 f"to {decoded} bytes, more than max_bytes={limits.max_bytes}")


def _decode_pillow(data: bytes, ndim: int, limits: DecodeLimits, channels: str = "luminance"
                   ) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except UnidentifiedImageError:
            raise ValueError(f"not a readable {'/'.join(ALLOWED_FORMATS)} image or .npy "
                             "array (no other format is decoded)") from None
        except Image.DecompressionBombError as error:
            raise RecordRejected(f"decompression bomb: {error}") from None
    with image:
        _check_header(image, limits)
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; here it is an error
        bombs = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
        if bombs:
            raise RecordRejected(f"decompression bomb: {bombs[0].message}")
        image.load()
        if image.mode in ("1",):
            image = image.convert("L")
        elif image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        array = np.asarray(image)
    if array.dtype == np.int32 and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)              # 16-bit data Pillow widened to mode I
    return _bands(array, ndim, channels)


def decode_bytes(data: bytes, name: str = "", ndim: int = 2,
                 limits: DecodeLimits | None = None, channels: str = "luminance",
                 compiled_png: bool = True) -> np.ndarray:
    """Decode one record's bytes: ``.npy`` by its header, plain PNGs directly
    (:mod:`kernelbank.io.png`), else PNG/JPEG/TIFF via Pillow.

    Parameters
    ----------
    data : bytes
        The encoded record.
    name : str, optional
        File name, used in messages only (the content decides the decoder).
    ndim : {2, 3}
    limits : DecodeLimits, optional
        Default: :class:`DecodeLimits` ``()`` (64 MP, 1 GiB).
    channels : {"luminance", "rgb", "all"}, default="luminance"
        One grey channel, or the bands as ``(C, H, W)`` (see :func:`to_channels`).
    compiled_png : bool, default=True
        ``False``: Pillow decodes plain PNGs too. For a process that decodes a handful of
        images (the report's samples): the compiled decoder's first call loads Numba for
        most of a second, Pillow's costs nothing; the pixels are the same.

    Returns
    -------
    ndarray of shape (H, W) or (D, H, W) (luminance) or (C, H, W), native dtype (see
    :func:`to_grey`)

    Raises
    ------
    RecordRejected
        A format that is not allowed, or a record over ``limits``.
    ValueError, OSError
        Bytes that are not a readable image (Pillow's or NumPy's error).
    """
    limits = limits or DecodeLimits()
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
    if data[:6] == _NPY_MAGIC:
        return _decode_npy(data, ndim, limits, channels)
    if name.lower().endswith(".npy"):
        raise RecordRejected("named .npy but has no NumPy header")
    array = decode_png(data, limits.max_pixels) if compiled_png else None  # None: Pillow
    if array is not None:
        return _bands(array, ndim, channels)
    return _decode_pillow(data, ndim, limits, channels)


def check_image(array: np.ndarray, ndim: int, min_side: int, channels: bool = False
                ) -> str | None:
    """Why ``array`` cannot be fitted, or ``None`` when it can (``channels``: a leading
    channel axis before the ``ndim`` spatial ones)."""
    expected = ndim + int(channels)
    if array.ndim != expected:
        hint = " (pass --ndim 3 for volumes)" if array.ndim == 3 and not channels else ""
        return f"has {array.ndim} dimensions (shape {array.shape}), expected {expected}{hint}"
    if min(array.shape[int(channels):]) < min_side:
        return (f"shape {array.shape} is smaller than the {min_side}-pixel window of the "
                f"largest radius x dilation; use a smaller radius or dilation")
    if array.dtype.kind == "f":
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            return f"contains {bad} NaN or inf values"
    return None


def decode_record(data: bytes | np.ndarray, name: str, ndim: int, min_side: int,
                  limits: DecodeLimits | None = None, channels: str = "luminance",
                  compiled_png: bool = True) -> tuple[np.ndarray | None, str | None]:
    """Decode and check one record.

    Parameters
    ----------
    data : bytes or ndarray
        Encoded bytes, or an array already decoded (a Parquet array cell).
    name : str
        File name for messages.
    ndim, min_side : int
        See :func:`check_image`.
    limits : DecodeLimits, optional
    channels : {"luminance", "rgb", "all"}, default="luminance"
        See :func:`decode_bytes`; an array cell is ``(H, W)`` or ``(H, W, bands)``.
    compiled_png : bool, default=True
        See :func:`decode_bytes`.

    Returns
    -------
    image : ndarray or None
        The decoded image in its native dtype (also when it fails the checks), ``None``
        when undecodable or rejected.
    reason : str or None
        Why the record cannot be fitted, ``None`` when it can.
    """
    limits = limits or DecodeLimits()
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            image = decode_bytes(bytes(data), name, ndim, limits, channels, compiled_png)
        else:
            array = np.asarray(data)
            if array.size > limits.max_pixels:
                raise RecordRejected(f"array of shape {array.shape} is larger than "
                                     f"max_pixels={limits.max_pixels} (--max-pixels)")
            image = _bands(array, ndim, channels)
    except RecordRejected as error:
        return None, f"rejected: {error}"
    except Exception as error:  # any decoder failure is a property of this record
        message = str(error).split(" <_io.")[0]      # drop PIL's object repr
        return None, f"cannot decode: {type(error).__name__}: {message}"
    return image, check_image(image, ndim, min_side, channels != "luminance")
