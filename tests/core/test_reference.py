"""Today's math layer reproduces the numbers stored from the code before the one-core rewrite.

``fixtures/reference.npz`` was written by ``fixtures/generate.py`` at commit ad4293d (grey
and colour code paths still separate). Every output is recomputed by the same function
and compared to 1e-10: float64 inputs, so only rounding-order changes are tolerated.
"""

import pathlib

import numpy as np
import pytest
import torch

from tests.core.fixtures.generate import outputs

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "reference.npz"


@pytest.fixture(scope="module")
def recomputed():
    return outputs()


@pytest.mark.parametrize("key", sorted(np.load(REFERENCE).files))
def test_reproduces_reference(recomputed, key):
    expected = np.load(REFERENCE)[key]
    got = recomputed[key]
    assert got.shape == expected.shape
    # 1e-10 absolute on values of order 1 (z-scored images), relative on large sums
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=key)
