"""Values the report derives itself, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from kernelbank.report.sections import precision_recall


def test_precision_recall_equal_scikit_learn_on_expanded_predictions():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    matrix = rng.integers(0, 7, size=(4, 4))
    matrix[:, 3] = 0                       # "d" never predicted: precision 0 by convention
    matrix[2] = 0                          # no true "c": recall 0 by convention
    y_true = np.repeat(np.repeat(labels, 4), matrix.ravel())
    y_pred = np.repeat(np.tile(labels, 4), matrix.ravel())
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    ours = precision_recall(matrix, labels)
    np.testing.assert_allclose(ours["precision"], p, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], r, atol=1e-12)
    np.testing.assert_allclose(ours["f1"], f, atol=1e-12)
    np.testing.assert_array_equal(ours["support"], s)
    assert not np.allclose(p, r)           # the data tell precision and recall apart
