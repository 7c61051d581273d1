"""The fast PNG path gives exactly Pillow's pixels, and leaves everything else to Pillow."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kernelbank.io.decode import DecodeLimits, _decode_pillow, decode_bytes, decode_record
from kernelbank.io.png import decode_png


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + \
        struct.pack(">I", zlib.crc32(kind + payload))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _encode(rows: np.ndarray, colour: int, depth: int, filters: list[int]) -> bytes:
    """A PNG of ``rows`` (H, stride bytes) whose row y uses filter ``filters[y % len]``: a
    reference encoder written from the specification, so every filter type is covered
    (Pillow's encoder picks its own)."""
    height, stride = rows.shape
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    bpp = samples * depth // 8
    width = stride // bpp
    out = bytearray()
    for y in range(height):
        kind = filters[y % len(filters)]
        out.append(kind)
        for x in range(stride):
            a = int(rows[y, x - bpp]) if x >= bpp else 0
            b = int(rows[y - 1, x]) if y else 0
            c = int(rows[y - 1, x - bpp]) if x >= bpp and y else 0
            predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out.append((int(rows[y, x]) - predictor) % 256)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + \
        _chunk(b"IDAT", zlib.compress(bytes(out))) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("colour, depth", [(0, 8), (2, 8), (4, 8), (6, 8), (0, 16)])
@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
def test_every_filter_and_plain_mode_decodes_to_pillows_pixels(colour, depth, filters):
    rng = np.random.default_rng(colour * 100 + depth + len(filters) * 7 + filters[0])
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    width, height = 13, 9                     # odd sizes: filters reach across pixels
    rows = rng.integers(0, 256, (height, width * samples * depth // 8), dtype=np.uint8)
    data = _encode(rows, colour, depth, filters)
    fast = decode_png(data, 10**6)
    assert fast is not None                   # the fast path took it
    expected = np.asarray(Image.open(io.BytesIO(data)))
    if depth == 16:
        expected = expected.astype(np.uint16)
    assert fast.dtype == expected.dtype and np.array_equal(fast, expected)
    assert np.array_equal(decode_bytes(data), _decode_pillow(data, 2, DecodeLimits()))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_pillow_written_pngs_decode_the_same_on_both_paths(mode):
    rng = np.random.default_rng(3)
    shape = {"L": (40, 33), "LA": (40, 33, 2), "RGB": (40, 33, 3), "RGBA": (40, 33, 4),
             "I;16": (40, 33)}[mode]
    values = rng.integers(0, 65536 if mode == "I;16" else 256, shape)
    smooth = np.cumsum(values, axis=0) % (65536 if mode == "I;16" else 256)  # mixes filters
    array = smooth.astype(np.uint16 if mode == "I;16" else np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert decode_png(data, 10**6) is not None
    for channels in ("luminance", "rgb", "all"):
        fast = decode_bytes(data, channels=channels)
        slow = _decode_pillow(data, 2, DecodeLimits(), channels)
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow), channels


@pytest.mark.parametrize("image", [
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P"),   # palette
    Image.fromarray(np.eye(8, dtype=bool)),                                      # 1 bit
    Image.fromarray(np.zeros((8, 8, 3), np.uint16).astype(np.uint8)),           # 8-bit, kept
])
def test_palettes_and_low_bit_depths_go_to_pillow_with_the_same_result(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if image.mode in ("P", "1"):
        assert decode_png(data, 10**6) is None
    assert np.array_equal(decode_bytes(data), _decode_pillow(data, 2, DecodeLimits()))


def test_interlaced_png_goes_to_pillow():
    rows = np.arange(64, dtype=np.uint8).reshape(8, 8)
    data = bytearray(_encode(rows, 0, 8, [0]))
    data[8 + 8 + 12] = 1                            # IHDR's interlace byte
    crc = zlib.crc32(bytes(data[12:29]))
    data[29:33] = struct.pack(">I", crc)
    assert decode_png(bytes(data), 10**6) is None


def test_broken_files_get_pillows_errors_and_limits_still_hold():
    rows = np.arange(256, dtype=np.uint8).reshape(16, 16)
    good = _encode(rows, 0, 8, [4])
    no_checksum = good[:len(good) - 20]             # Pillow still decodes this one
    truncated = good[:len(good) // 2]
    bad_crc = bytearray(good)
    bad_crc[20] ^= 1                                # a bit of IHDR's width
    for data in (no_checksum, truncated, bytes(bad_crc)):
        assert decode_png(data, 10**6) is None
        try:
            expected = _decode_pillow(data, 2, DecodeLimits())
        except Exception as error:                  # what Pillow alone made of it
            expected = f"cannot decode: {type(error).__name__}"
        image, reason = decode_record(data, "x.png", 2, 1)
        if isinstance(expected, str):
            assert image is None and reason.startswith(expected)
        else:
            assert reason is None and np.array_equal(image, expected)
    assert decode_record(truncated, "x.png", 2, 1)[0] is None
    image, reason = decode_record(good, "x.png", 2, 1, DecodeLimits(max_pixels=100))
    assert image is None and "max_pixels=100" in reason


def test_the_reports_decode_leaves_numba_unloaded():
    """``compiled_png=False`` (the report's few samples) decodes a plain PNG with Pillow:
    the compiled decoder's first call loads Numba (most of a second in the driver)."""
    import subprocess
    import sys
    script = (
        "import io, sys, numpy as np; from PIL import Image; "
        "from kernelbank.io.decode import decode_bytes, _decode_pillow, DecodeLimits; "
        "b = io.BytesIO(); Image.fromarray(np.arange(40 * 33, dtype=np.uint8).reshape(40, 33))"
        ".save(b, format='PNG'); data = b.getvalue(); "
        "pixels = decode_bytes(data, compiled_png=False); "
        "assert np.array_equal(pixels, _decode_pillow(data, 2, DecodeLimits())); "
        "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
