"""Decoding with channels (``--channels rgb|all``): real PNG/TIFF/.npy files, no Ray."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kernelbank.io.decode import check_image, decode_bytes, decode_record, to_channels


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (9, 11), dtype=np.uint8)


def test_rgb_keeps_the_bands_channels_first_as_uint8():
    out = decode_bytes(_encode(RGB, "PNG"), "x.png", channels="rgb")
    assert out.dtype == np.uint8 and out.shape == (3, 9, 11)
    np.testing.assert_array_equal(out, RGB.transpose(2, 0, 1))


def test_rgb_replicates_a_grey_image_into_three_equal_channels():
    out = decode_bytes(_encode(GREY, "PNG"), "g.png", channels="rgb")
    assert out.dtype == np.uint8 and out.shape == (3, 9, 11)
    for c in range(3):
        np.testing.assert_array_equal(out[c], GREY)


def test_rgb_drops_the_alpha_of_rgba_and_of_grey_alpha():
    rgba = np.dstack([RGB, ALPHA])
    out = decode_bytes(_encode(rgba, "PNG"), "a.png", channels="rgb")
    np.testing.assert_array_equal(out, RGB.transpose(2, 0, 1))
    grey_alpha = Image.fromarray(np.dstack([GREY, ALPHA]), mode="LA")
    buffer = io.BytesIO()
    grey_alpha.save(buffer, format="PNG")
    out = decode_bytes(buffer.getvalue(), "la.png", channels="rgb")
    np.testing.assert_array_equal(out, np.stack([GREY] * 3))


def test_all_keeps_every_band_including_alpha():
    rgba = np.dstack([RGB, ALPHA])
    out = decode_bytes(_encode(rgba, "PNG"), "a.png", channels="all")
    np.testing.assert_array_equal(out, rgba.transpose(2, 0, 1))
    out = decode_bytes(_encode(GREY, "PNG"), "g.png", channels="all")
    np.testing.assert_array_equal(out, GREY[None])


def test_all_keeps_16_bit_and_multi_band_arrays_in_their_dtype():
    grey16 = RNG.integers(0, 65536, (9, 11), dtype=np.uint16)
    out = decode_bytes(_encode(grey16, "TIFF"), "g.tif", channels="all")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey16[None])
    bands = RNG.integers(0, 65536, (9, 11, 6), dtype=np.uint16)
    buffer = io.BytesIO()
    np.save(buffer, bands)
    out = decode_bytes(buffer.getvalue(), "b.npy", channels="all")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, bands.transpose(2, 0, 1))


def test_rgb_refuses_more_than_four_bands_naming_the_way_out():
    image, reason = decode_record(RNG.integers(0, 9, (9, 11, 6), dtype=np.uint8), "b.npy", 2,
                                  1, channels="rgb")
    assert image is None and "6 bands" in reason and "--channels all" in reason


def test_luminance_is_unchanged_by_the_channel_code():
    rgb = decode_bytes(_encode(RGB, "PNG"), "x.png")
    expected = RGB.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_array_equal(rgb, expected)
    assert rgb.shape == (9, 11)


def test_check_image_measures_the_spatial_sides_of_channel_images():
    image = np.zeros((3, 9, 11), np.uint8)
    assert check_image(image, 2, 9, channels=True) is None
    assert "smaller than" in check_image(image, 2, 10, channels=True)
    assert "expected 3" in check_image(np.zeros((9, 11), np.uint8), 2, 1, channels=True)


def test_to_channels_rejects_unknown_modes():
    with pytest.raises(ValueError, match="rgb"):
        to_channels(GREY, "luminance")
