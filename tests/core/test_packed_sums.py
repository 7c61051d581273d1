"""Packed window sums (table rows kept as upper triangles) give the dense sums' results.

The feature stage reads the sums packed (``sums_from_rows(..., packed=True)``) and takes
the kernel features' and the likelihood's quadratic forms from the triangles directly
(:meth:`WindowSums.bilinear`). The references: the same functions on dense sums, and the
classifier's pixel path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images

RTOL = 1e-9


def _rows_and_sums(images: np.ndarray, radius: int, dilation: int, channels: int,
                   grid: int | None = None):
    batch = torch.from_numpy(images)        # z-scored per image and channel, as kb.fit does
    batch = normalize_images(batch.reshape((-1,) + batch.shape[-2:])).reshape(batch.shape)
    [dense] = kb.window_sums(batch, radius, [dilation], grid=grid, channels=channels)
    rows = kb.sums_to_rows(dense)
    packed = kb.sums_from_rows(rows, radius=radius, dilation=dilation, ndim=2, grid=grid,
                               channels=channels, packed=True)
    return dense, packed


@pytest.fixture(scope="module")
def grey():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(6, 30, 28)).cumsum(2)
    rough = rng.normal(size=(6, 30, 28))
    return np.concatenate([smooth, rough]), ["smooth"] * 6 + ["rough"] * 6


def test_bilinear_forms_of_packed_rows_equal_the_dense_matrix(grey):
    images, _ = grey
    dense, packed = _rows_and_sums(images, 2, 1, 1, grid=2)
    assert packed.cross is None and packed.upper is not None
    rng = np.random.default_rng(1)
    left = torch.from_numpy(rng.normal(size=(7, dense.n_taps)))
    right = torch.from_numpy(rng.normal(size=(7, dense.n_taps)))
    expected = torch.einsum("kt,ncts,ks->nck", left, dense.cross, right)
    np.testing.assert_allclose(packed.bilinear(left, right).numpy(), expected.numpy(),
                               rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(dense.bilinear(left, right).numpy(), expected.numpy(),
                               rtol=RTOL, atol=1e-9)
    np.testing.assert_array_equal(packed.dense().cross.numpy(), dense.cross.numpy())


@pytest.mark.parametrize("joint", [False, True])
def test_bank_features_of_packed_sums_equal_the_dense_ones(grey, joint):
    images, labels = grey
    bank = kb.KernelBank.concat([kb.KernelBank.from_stats(kb.ClassStats.from_fit(
        kb.fit(images, kb.Basis.full(2, dilation=d)), labels), "pca", n_components=2) for d in (1, 2)])
    dense, packed = [], []
    for d in (1, 2):
        for grid in (None, 2):
            a, b = _rows_and_sums(images, 2, d, 1, grid=grid)
            dense.append(a)
            packed.append(b)
    want, names = kb.bank_features_from_sums(dense, bank, joint=joint)
    got, packed_names = kb.bank_features_from_sums(packed, bank, joint=joint)
    assert packed_names == names
    plain = np.array([not n.startswith("joint_") for n in names])
    np.testing.assert_allclose(got.numpy()[:, plain], want.numpy()[:, plain], rtol=RTOL,
                               atol=1e-10)
    if joint:   # a PCA bank's kernels are nearly collinear: the joint solve is known normwise
        error = np.linalg.norm(got.numpy()[:, ~plain] - want.numpy()[:, ~plain])
        assert error <= 1e-6 * np.linalg.norm(want.numpy()[:, ~plain])


@pytest.mark.parametrize("channels", [1, 3])
def test_likelihood_class_scores_of_packed_sums_equal_the_pixel_path(grey, channels):
    images, labels = grey
    if channels == 3:                       # three related bands, each with its own noise
        noise = np.random.default_rng(2).normal(size=(2,) + images.shape)
        images = np.stack([images, np.roll(images, 1, 1) + noise[0], images / 2 + noise[1]], 1)
    basis = kb.Basis.full(1, channels=channels)
    parts = [kb.ClassStats.from_fit(kb.fit(images[::2], basis.with_dilation(d)),
                                    labels[::2]) for d in (1, 2)]
    clf = kb.LikelihoodClassifier.from_stats(parts, z=None)
    test = images[1::2]
    both = [_rows_and_sums(test, 1, d, channels) for d in (1, 2)]
    sums = [packed for _, packed in both]
    np.testing.assert_array_equal(clf.predict_from_sums(sums), clf.predict(test))
    # the scores behind the argmax: the packed forms against the assembled A of the
    # dense sums (the classifier's other sums route)
    from kernelbank.core.likelihood import _scores_of
    from kernelbank.core.solve import shared_residual_covariance_from_sums
    packed = sum(_scores_of(shared_residual_covariance_from_sums(s, m.basis, m.coef), m)[1]
                 for s, m in zip(sums, clf.models))
    dense = clf.log_likelihood_from_sums([d for d, _ in both])
    np.testing.assert_allclose(packed.numpy(), dense.numpy(), rtol=RTOL)
