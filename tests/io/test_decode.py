"""Decoding and checking single records (no Ray): real files written by Pillow and NumPy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kernelbank.io.decode import check_image, decode_bytes, decode_record, to_grey
from kernelbank.io.readers import split_and_label


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_png_greyscale_roundtrips_exactly():
    image = np.random.default_rng(0).integers(0, 256, (20, 17), dtype=np.uint8)
    out = decode_bytes(_encode(image, "PNG"), "x.png")
    assert out.dtype == np.float32 and out.shape == (20, 17)
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_rgb_becomes_itu601_luminance_in_float():
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    out = decode_bytes(_encode(rgb, "PNG"), "x.png")
    # independent reference: the ITU-R 601 weights written out per channel
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(out, expected, rtol=1e-6)   # float32 rounding only
    rgba = np.dstack([rgb, np.full((9, 11), 7, np.uint8)])
    np.testing.assert_allclose(decode_bytes(_encode(rgba, "PNG"), "x.png"), expected, rtol=1e-6)


def test_16_bit_tiff_keeps_its_values():
    image = np.random.default_rng(2).integers(0, 65535, (12, 10), dtype=np.uint16)
    out = decode_bytes(_encode(image, "TIFF"), "x.tif")
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_jpeg_matches_pillow_decoder():
    rgb = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _encode(rgb, "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(data))).astype(np.float32)
    expected = decoded @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(decode_bytes(data, "x.jpg"), expected, rtol=1e-6)


def test_npy_volume_and_image():
    volume = np.random.default_rng(4).normal(size=(5, 6, 7))
    buffer = io.BytesIO()
    np.save(buffer, volume)
    out = decode_bytes(buffer.getvalue(), "v.npy", ndim=3)
    assert out.shape == (5, 6, 7)
    np.testing.assert_allclose(out, volume.astype(np.float32))


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


@pytest.mark.parametrize("path, root, expected", [
    ("/d/train/brick/a.png", "/d", ("train", "brick")),
    ("/d/TEST/grass/sub/a.png", "/d", ("test", "grass")),
    ("bucket/imgs/grass/b.png", "bucket/imgs", ("unsplit", "grass")),
    ("bucket/imgs/b.png", "bucket/imgs", ("unsplit", "")),
    ("bucket/imgs/val/b.png", "bucket/imgs", ("val", "")),
])
def test_split_and_label_from_path(path, root, expected):
    assert split_and_label(path, root) == expected
