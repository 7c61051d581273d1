"""KernelBank: pca/kmeans/gabor/random kernels against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core.bank import kmeans

RNG = np.random.default_rng(3)
IMAGES = RNG.normal(size=(24, 18, 18)).cumsum(axis=1)
LABELS = ["a"] * 12 + ["b"] * 12
BASIS = kb.Basis.isotropic(radius=2)
RESULT = kb.fit(IMAGES, BASIS)
STATS = kb.ClassStats.from_fit(RESULT, LABELS)


def test_pca_bank_is_mean_plus_minus_principal_directions():
    bank = kb.KernelBank.from_stats(STATS, "pca", n_components=2)
    assert len(bank) == 2 * 5 and bank.class_index.tolist() == [0] * 5 + [1] * 5
    coef = RESULT.coef[12:].numpy()                        # class "b"
    values, vectors = np.linalg.eigh(np.cov(coef.T, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1]
    mean = coef.mean(0)
    kernels = bank.kernels[5:]
    np.testing.assert_allclose(kernels[0], BASIS.to_kernels(torch.from_numpy(mean)), atol=1e-12)
    for j in range(2):
        v = vectors[:, j] * np.sign(vectors[np.argmax(np.abs(vectors[:, j])), j])
        plus = BASIS.to_kernels(torch.from_numpy(mean + np.sqrt(values[j]) * v))
        minus = BASIS.to_kernels(torch.from_numpy(mean - np.sqrt(values[j]) * v))
        np.testing.assert_allclose(kernels[1 + 2 * j], plus, atol=1e-10)
        np.testing.assert_allclose(kernels[2 + 2 * j], minus, atol=1e-10)
        np.testing.assert_allclose(bank.explained_variance[6 + 2 * j], values[j], rtol=1e-9)
    assert torch.isnan(bank.explained_variance[5])
    assert torch.all(bank.kernels[:, 2, 2] == 0)


def test_pca_variance_threshold_picks_fewest_directions():
    coef = RESULT.coef[:12].numpy()
    values = np.linalg.eigvalsh(np.cov(coef.T, bias=True))[::-1]
    need = int(np.searchsorted(np.cumsum(values) / values.sum(), 0.9) + 1)
    bank = kb.KernelBank.from_stats(STATS, "pca", n_components=0.9)
    assert int((bank.class_index == 0).sum()) == 1 + 2 * need
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        kb.KernelBank.from_stats(STATS, "pca", n_components=1.5)


def test_kmeans_recovers_separated_centres_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(scale=0.1, size=(40 - 10 * i, 2))
                             for i, c in enumerate(centres)])
    found = kmeans(points, 3, np.random.default_rng(1))
    np.testing.assert_allclose(found, centres, atol=0.1)       # sorted by cluster size
    a = kb.KernelBank.from_stats(STATS, "kmeans", n_components=3, random_state=5)
    b = kb.KernelBank.from_stats(STATS, "kmeans", n_components=3, random_state=5)
    assert torch.equal(a.kernels, b.kernels) and len(a) == 6


def test_predefined_banks():
    gabor = kb.KernelBank.gabor(radius=3, n_orientations=4, frequencies=(0.125, 0.25), dilation=2)
    assert gabor.kernels.shape == (8, 7, 7) and gabor.class_index.tolist() == [-1] * 8
    assert torch.all(gabor.kernels[:, 3, 3] == 0)
    np.testing.assert_allclose(gabor.kernels.flatten(1).norm(dim=1), 1.0)
    # orientation 0: cos(2π f x) along columns, constant along rows except the envelope
    axis = np.arange(-3, 4)
    expected = np.exp(-(axis[:, None] ** 2 + axis[None] ** 2) / 4.5) * np.cos(2 * np.pi * 0.125 * axis[None])
    expected[3, 3] = 0
    np.testing.assert_allclose(gabor.kernels[0], expected / np.linalg.norm(expected), atol=1e-12)
    r1, r2 = kb.KernelBank.random(2, 5, random_state=1), kb.KernelBank.random(2, 5, random_state=1)
    assert torch.equal(r1.kernels, r2.kernels)
    assert not torch.equal(r1.kernels, kb.KernelBank.random(2, 5, random_state=2).kernels)
    with pytest.raises(ValueError, match="zero centre"):
        kb.KernelBank(torch.ones(1, 3, 3, dtype=torch.float64), [1], [-1], [], "x")


def test_concat_and_names():
    d1 = kb.KernelBank.from_stats(STATS, "pooled")
    stats_b = kb.ClassStats.from_fit(kb.fit(IMAGES[12:], BASIS.with_dilation(2)), ["b"] * 12)
    d2 = kb.KernelBank.from_stats(stats_b, "pooled")
    both = kb.KernelBank.concat([d1, d2, kb.KernelBank.gabor(radius=2, n_orientations=1,
                                                            frequencies=(0.25,))])
    assert both.kernel_names == ["k00_a_d1", "k01_b_d1", "k02_b_d2", "k03_gabor_d1"]
    assert both.class_names == ["a", "b"] and both.class_index.tolist() == [0, 1, 1, -1]
    assert both.method == "mixed" and both.max_reach == 4
