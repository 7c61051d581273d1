"""Labels from the data are drawn literally: a class named like TeX math breaks no figure."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from kernelbank.report import figures

NAMES = ["a$^$", r"$\frac$", "plain"]          # each alone makes mathtext raise ValueError


def _decodes(png: bytes) -> None:
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG"


def test_class_names_with_dollar_signs_render():
    _decodes(figures.confusion_figure(np.eye(3, dtype=int), NAMES, title=NAMES[0]))
    _decodes(figures.counts_figure({"test": {n: 2 for n in NAMES}, "train": {NAMES[1]: 3}}))
    _decodes(figures.kernel_grid([np.zeros((3, 3))] * 3, NAMES, vmax=1.0))
    _decodes(figures.stages_figure(NAMES, [1.0, 2.0, 3.0], [None, 1.0, 2.0]))


def test_mathtext_stays_on_outside_the_report():
    import matplotlib
    figures.counts_figure({"test": {"$x$": 1}})
    assert matplotlib.rcParams["text.parse_math"] is True     # no global side effect
