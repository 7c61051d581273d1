"""The fit stage and the user's ``kb.image_statistics`` are one driver: same image, same row.

The stage's row builder (:meth:`StatisticsFitter._statistics`, what the Ray actor runs on
each batch) is called directly on uint8 images, grey and three-channel, and every column
it writes must equal the flattened fields of ``kb.image_statistics`` on the same images.
Exact equality: a second implementation would differ at least in rounding order.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelbank as kb
from kernelbank.config import FitConfig
from kernelbank.stages.fit import StatisticsFitter
from kernelbank.stages.table import flat_covariance, flat_sums

CONFIG = FitConfig(radius=1, dilations=(1, 2), grid=2)


@pytest.mark.parametrize("channels", [1, 3])
def test_fit_stage_row_is_kb_image_statistics(channels):
    rng = np.random.default_rng(channels)
    shape = (2, 20, 22) if channels == 1 else (2, channels, 20, 22)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    row, _ = StatisticsFitter(CONFIG, channels=channels)._statistics(list(images), ["a", "b"])
    basis = kb.Basis.full(1, channels=channels)
    stats = kb.image_statistics(images, basis, dilations=CONFIG.dilations, grid=CONFIG.grid,
                                descriptors=CONFIG.descriptor_spec(2))   # + image patterns
    np.testing.assert_array_equal(row["coef"], stats.coef.reshape(2, -1).numpy())
    np.testing.assert_array_equal(row["mse"], stats.mse.reshape(2, -1).numpy())
    np.testing.assert_array_equal(row["descriptors"], stats.descriptors.reshape(2, -1).numpy())
    np.testing.assert_array_equal(row["sums"], flat_sums(stats.sums))
    np.testing.assert_array_equal(row["cell_sums"], flat_sums(stats.cell_sums))
    if channels > 1:
        np.testing.assert_array_equal(row["covariance"], flat_covariance(stats.covariance))
