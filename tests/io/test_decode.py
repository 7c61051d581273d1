"""Decoding and checking single records (no Ray): real files written by Pillow and NumPy."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kernelbank.io.decode import (DecodeLimits, check_image, decode_bytes, decode_record,
                                  to_grey)
from kernelbank.io.readers import split_and_label


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _npy_header_only(shape: tuple[int, ...], descr: str) -> bytes:
    """A ``.npy`` whose header declares ``shape`` but which holds no data at all."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side zero pixels: a few hundred KB, side² when decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)                       # filter byte + side zero pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + \
        chunk(b"IEND", b"")


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def test_png_greyscale_roundtrips_exactly_as_uint8():
    image = np.random.default_rng(0).integers(0, 256, (20, 17), dtype=np.uint8)
    out = decode_bytes(_encode(image, "PNG"), "x.png")
    assert out.dtype == np.uint8 and out.shape == (20, 17)
    np.testing.assert_array_equal(out, image)


def test_rgb_becomes_itu601_luminance_in_float():
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    out = decode_bytes(_encode(rgb, "PNG"), "x.png")
    # independent reference: the ITU-R 601 weights written out per channel
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)   # float32 rounding only
    rgba = np.dstack([rgb, np.full((9, 11), 7, np.uint8)])
    np.testing.assert_allclose(decode_bytes(_encode(rgba, "PNG"), "x.png"), expected, rtol=1e-6)


def test_grey_stored_as_rgb_stays_uint8():
    grey = np.random.default_rng(5).integers(0, 256, (8, 9), dtype=np.uint8)
    out = decode_bytes(_encode(np.dstack([grey] * 3), "PNG"), "x.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, grey)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_16_bit_images_keep_their_values_as_uint16(fmt):
    image = np.random.default_rng(2).integers(0, 65535, (12, 10), dtype=np.uint16)
    out = decode_bytes(_encode(image, fmt), "x")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)


def test_float_tiff_stays_float32():
    image = np.random.default_rng(6).normal(size=(7, 9)).astype(np.float32)
    out = decode_bytes(_encode(image, "TIFF"), "x.tif")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


def test_jpeg_matches_pillow_decoder():
    rgb = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _encode(rgb, "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(data))).astype(np.float32)
    expected = decoded @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(decode_bytes(data, "x.jpg"), expected, rtol=1e-6)


def test_npy_volume_and_native_dtypes():
    volume = np.random.default_rng(4).normal(size=(5, 6, 7))
    buffer = io.BytesIO()
    np.save(buffer, volume)
    out = decode_bytes(buffer.getvalue(), "v.npy", ndim=3)
    assert out.shape == (5, 6, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, volume.astype(np.float32))
    small = np.arange(12, dtype=np.uint16).reshape(3, 4)
    buffer = io.BytesIO()
    np.save(buffer, small)
    out = decode_bytes(buffer.getvalue(), "no-extension-needed")   # found by its header
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, small)


def test_bad_records_give_reasons_not_exceptions():
    image, reason = decode_record(b"definitely not an image", "bad.png", 2, 5)
    assert image is None and reason.startswith("cannot decode") and "0x" not in reason
    image, reason = decode_record(np.zeros((4, 40), np.float32), "small", 2, 9)
    assert image is not None and "smaller than the 9-pixel window" in reason
    nan = np.ones((16, 16), np.float32)
    nan[3, 4] = np.nan
    nan[5, 5] = np.inf
    assert decode_record(nan, "nan", 2, 5)[1] == "contains 2 NaN or inf values"
    assert "--ndim 3" in check_image(np.zeros((4, 8, 8), np.float32), 2, 3)
    assert check_image(np.zeros((8, 8), np.float32), 2, 8) is None


def test_to_grey_rejects_strings():
    with pytest.raises(ValueError, match="unsupported pixel type"):
        to_grey(np.array([["a", "b"], ["c", "d"]]))


# ------------------------------------------------------------------ decoder limits
def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_bomb(9500)                       # 90.25 MP: above 64 MP and Pillow's limit
    assert len(bomb) < 1_000_000
    image, reason = decode_record(bomb, "bomb.png", 2, 1)
    assert image is None and "larger than max_pixels=64000000" in reason
    # with our cap raised, Pillow's own bomb warning still stops it, as an error row
    image, reason = decode_record(bomb, "bomb.png", 2, 1, DecodeLimits(max_pixels=10 ** 9))
    assert image is None and "decompression bomb" in reason


def test_pixel_cap_is_configurable():
    image = np.zeros((40, 50), np.uint8)
    assert decode_record(_encode(image, "PNG"), "x.png", 2, 1,
                         DecodeLimits(max_pixels=2000))[1] is None
    _, reason = decode_record(_encode(image, "PNG"), "x.png", 2, 1, DecodeLimits(max_pixels=1999))
    assert "50x40 = 2000 pixels is larger than max_pixels=1999" in reason


def test_eps_named_png_never_reaches_ghostscript():
    # independent check that the bytes are what Pillow, unrestricted, would hand to EPS
    assert Image.open(io.BytesIO(EPS)).format == "EPS"
    image, reason = decode_record(EPS, "innocent.png", 2, 1)
    assert image is None and "not a readable PNG/JPEG/TIFF image" in reason


@pytest.mark.parametrize("shape, descr, limits, expected", [
    ((100_000, 100_000), "<f4", DecodeLimits(), "more than max_pixels=64000000"),
    ((4000, 4000), "<f8", DecodeLimits(max_bytes=64 << 20), "more than max_bytes=67108864"),
    ((10, 10), "|O", DecodeLimits(), "not an image"),
])
def test_oversized_or_object_npy_is_refused_from_its_header(shape, descr, limits, expected):
    data = _npy_header_only(shape, descr)        # no data: a read would fail differently
    image, reason = decode_record(data, "big.npy", 2, 1, limits)
    assert image is None and reason.startswith("rejected") and expected in reason


def test_tiff_byte_cap():
    data = _encode(np.zeros((100, 100), np.float32), "TIFF")     # 40,000 decoded bytes
    assert decode_record(data, "x.tif", 2, 1, DecodeLimits(max_bytes=40_000))[1] is None
    _, reason = decode_record(data, "x.tif", 2, 1, DecodeLimits(max_bytes=39_999))
    assert "decodes to 40000 bytes, more than max_bytes=39999" in reason


def test_truncated_npy_is_a_decode_error():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 20), np.float32))
    image, reason = decode_record(buffer.getvalue()[:-10], "t.npy", 2, 1)
    assert image is None and reason.startswith("cannot decode")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        DecodeLimits(max_pixels=0)


@pytest.mark.parametrize("path, root, expected", [
    ("/d/train/brick/a.png", "/d", ("train", "brick")),
    ("/d/TEST/grass/sub/a.png", "/d", ("test", "grass")),
    ("bucket/imgs/grass/b.png", "bucket/imgs", ("unsplit", "grass")),
    ("bucket/imgs/b.png", "bucket/imgs", ("unsplit", "")),
    ("bucket/imgs/val/b.png", "bucket/imgs", ("val", "")),
])
def test_split_and_label_from_path(path, root, expected):
    assert split_and_label(path, root) == expected
