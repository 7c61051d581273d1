"""Today's math layer reproduces the numbers stored from the code before the one-core rewrite.

``fixtures/reference.npz`` was written by ``fixtures/generate.py`` at commit ad4293d (grey
and colour code paths still separate). Every output is recomputed by the same function
and compared to 1e-10: float64 inputs, so only rounding-order changes are tolerated.
The uint8 inputs were computed in float32 then; the compiled engines now accumulate their
window sums and residuals in float64, so those entries are held to float32's precision.
"""

import pathlib

import numpy as np
import pytest

from tests.core.fixtures.generate import outputs

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "reference.npz"
#: entries computed from uint8 images, in float32 (see fixtures/generate.py)
FLOAT32_ENTRIES = {"fit_uint8_coef", "fit_uint8_sums", "stats_coef", "stats_mse",
                   "stats_descriptors", "stats_sums"}


@pytest.fixture(scope="module")
def recomputed():
    return outputs()


@pytest.mark.parametrize("key", sorted(np.load(REFERENCE).files))
def test_reproduces_reference(recomputed, key):
    expected = np.load(REFERENCE)[key]
    got = recomputed[key]
    assert got.shape == expected.shape
    # 1e-10 absolute on values of order 1 (z-scored images), relative on large sums
    tolerance = 1e-4 if key in FLOAT32_ENTRIES else 1e-10
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance, err_msg=key)
