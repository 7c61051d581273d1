"""Grids of small images drawn straight into pixels with NumPy and Pillow.

A report draws one grid per class bank and one panel per sample image. Drawn with
matplotlib, every small axes costs tens of milliseconds to lay out and draw, and these
grids made the report the slowest step of a small run. They need no axes: each tile is
an array coloured by a colormap and scaled up by whole pixels (nearest neighbour, so
every kernel tap stays a sharp square), captioned with Pillow's built-in font. Text is
drawn literally, so a class name like ``$x$`` is never read as TeX.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Tile", "colorbar", "colorize", "legend", "png", "stack"]

FONT_SIZE = 11
GAP = 8
INK = (30, 30, 30)
WHITE = (255, 255, 255)


@functools.lru_cache(maxsize=None)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


@functools.lru_cache(maxsize=None)
def _ruler() -> ImageDraw.ImageDraw:
    """A drawing context used only to measure text."""
    return ImageDraw.Draw(Image.new("RGB", (1, 1)))


def _text_size(text: str) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = _ruler().multiline_textbbox((0, 0), text, font=_font(),
                                                           spacing=2)
    return right, bottom + 2


def colorize(values: np.ndarray, cmap, vmin: float, vmax: float,
             target: int = 0) -> np.ndarray:
    """``values`` as an RGB uint8 image on ``cmap`` over ``[vmin, vmax]`` (NaN white).

    With ``target`` > 0 the image is scaled up by the largest whole factor that keeps
    its longer side within ``target`` pixels (at least 1).
    """
    values = np.asarray(values, dtype=np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((values - vmin) / span, 0.0, 1.0)
    colour_map = colormaps[cmap] if isinstance(cmap, str) else cmap
    rgb = (colour_map(np.nan_to_num(scaled))[..., :3] * 255).round().astype(np.uint8)
    rgb[~np.isfinite(values)] = WHITE
    if target:
        factor = max(1, target // max(rgb.shape[:2]))
        rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    return rgb


@dataclass
class Tile:
    """One captioned picture of a grid: RGB pixels of shape (H, W, 3) and a caption above."""

    pixels: np.ndarray
    caption: str = ""


def stack(rows: Sequence[Sequence[Tile]], title: str = "") -> np.ndarray:
    """Tiles in rows, a title above; RGB pixels.

    The cells of a row are as wide as its widest tile (so rows of equal tiles line up in
    columns) and each row is as tall as its tallest tile and caption.
    """
    rows = [list(row) for row in rows if row]
    sizes = []
    for row in rows:
        captions = [_text_size(t.caption) for t in row]
        cell_w = max(max(t.pixels.shape[1], w) for t, (w, _) in zip(row, captions))
        caption_h = max(h for _, h in captions)
        sizes.append((cell_w, caption_h, caption_h + max(t.pixels.shape[0] for t in row)))
    title_w, title_h = _text_size(title)
    width = max([len(row) * (w + GAP) + GAP for row, (w, _, _) in zip(rows, sizes)]
                + [title_w + 2 * GAP])
    height = (title_h + GAP if title else 0) + sum(h + GAP for _, _, h in sizes) + GAP
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    top = GAP
    if title:
        draw.multiline_text((GAP, top), title, fill=INK, font=_font(), spacing=2)
        top += title_h + GAP
    for row, (cell_w, caption_h, cell_h) in zip(rows, sizes):
        for c, tile in enumerate(row):
            left = GAP + c * (cell_w + GAP)
            draw.multiline_text((left, top), tile.caption, fill=INK, font=_font(), spacing=2)
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile.pixels)),
                         (left, top + caption_h))
        top += cell_h + GAP
    return np.asarray(canvas)


def colorbar(cmap, vmin: float, vmax: float, label: str, width: int = 240) -> Tile:
    """A horizontal colour scale from ``vmin`` to ``vmax``, its ends labelled."""
    strip = colorize(np.tile(np.linspace(vmin, vmax, width), (12, 1)), cmap, vmin, vmax)
    return Tile(strip, f"{label}: {vmin:.3g} … {vmax:.3g}")


def legend(colors: np.ndarray, names: Sequence[str], title: str) -> Tile:
    """Colour swatches with their names, one per line (RGBA or RGB floats in [0, 1])."""
    lines = [(np.asarray(c[:3]) * 255).round().astype(np.uint8) for c in colors]
    line_h = _text_size("Ag")[1] + 2
    text_w = max([_text_size(n)[0] for n in names] + [1])
    canvas = Image.new("RGB", (14 + 6 + text_w, max(1, line_h * len(names))), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, (colour, name) in enumerate(zip(lines, names)):
        y = i * line_h
        draw.rectangle((0, y + 1, 12, y + line_h - 3), fill=tuple(int(v) for v in colour))
        draw.text((20, y), name, fill=INK, font=_font())
    return Tile(np.asarray(canvas), title)


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of RGB pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
