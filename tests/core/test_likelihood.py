"""LikelihoodClassifier on GMRF textures from known kernels; values against direct residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.datasets.synthetic import random_stable_kernel, simulate_gmrf
from tests.core.reference import design_matrix, zscore

BASIS = kb.Basis.isotropic(radius=2)
KERNELS = {name: random_stable_kernel(BASIS, max_response=0.95, random_state=seed)
           for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def _draw(n, seed, shape=(40, 40)):
    rng = np.random.default_rng(seed)
    images = np.concatenate([simulate_gmrf(k, shape, n=n, random_state=rng) for k in KERNELS.values()])
    return images, np.repeat(list(KERNELS), n)


TRAIN, TRAIN_Y = _draw(10, 0)
TEST, TEST_Y = _draw(10, 1)


def _stats(basis=BASIS):
    return kb.ClassStats.from_fit(kb.fit(TRAIN, basis), TRAIN_Y)


def test_variance_and_loglik_match_direct_residuals():
    stats = _stats()
    clf = kb.LikelihoodClassifier.from_stats(stats, ridge=0.0)
    kernels = kb.KernelBank.from_stats(stats, "pooled", ridge=0.0).kernels.numpy()
    columns = BASIS.kernels.numpy()

    def residual_mse(image, kernel):                   # explicit per-pixel design matrix
        design, target = design_matrix(zscore(image), columns, 1)
        coef = np.linalg.lstsq(columns.reshape(len(columns), -1).T, kernel.ravel(), rcond=None)[0]
        return float(((target - design @ torch.from_numpy(coef)) ** 2).mean())

    for c, name in enumerate(clf.classes):
        own = TRAIN[TRAIN_Y == name]
        # equal-sized images: the pooled per-pixel MSE is the mean of the per-image MSEs
        expected = np.mean([residual_mse(x, kernels[c]) for x in own])
        np.testing.assert_allclose(float(clf.models[0].variance[c]), expected, rtol=1e-9)
    loglik = clf.log_likelihood(TEST[:2])
    for i in range(2):
        for c in range(3):
            var = float(clf.models[0].variance[c])
            mse = residual_mse(TEST[i], kernels[c])
            np.testing.assert_allclose(float(loglik[i, c]),
                                       -0.5 * np.log(2 * np.pi * var) - mse / (2 * var), rtol=1e-9)


def test_separates_textures_of_known_kernels():
    clf = kb.LikelihoodClassifier.from_stats(_stats())
    predicted = clf.predict(TEST)
    assert (predicted == TEST_Y).mean() == 1.0, predicted
    proba = clf.predict_proba(TEST)
    np.testing.assert_allclose(proba.sum(1).numpy(), 1.0)
    assert torch.equal(proba.argmax(1), clf.log_likelihood(TEST).argmax(1))
    # temperature t: softmax of the per-pixel log-likelihood / t
    soft = kb.LikelihoodClassifier.from_stats(_stats(), temperature=0.5)
    np.testing.assert_allclose(soft.predict_log_proba(TEST[:3]).numpy(),
                               torch.log_softmax(soft.log_likelihood(TEST[:3]) / 0.5, 1).numpy(),
                               rtol=1e-12)


def test_several_dilations_add_loglik():
    parts = [_stats(BASIS.with_dilation(d)) for d in (1, 2)]
    both = kb.LikelihoodClassifier.from_stats(parts)
    singles = [kb.LikelihoodClassifier.from_stats(p) for p in parts]
    np.testing.assert_allclose(both.log_likelihood(TEST[:4]).numpy(),
                               sum(s.log_likelihood(TEST[:4]) for s in singles).numpy(), rtol=1e-12)
    # equal weight on a misspecified dilation-2 model may cost an image or two
    assert (both.predict(TEST) == TEST_Y).mean() >= 0.9


@pytest.mark.parametrize("calibrated", [False, True])
def test_unknown_for_textures_no_class_explains(calibrated):
    clf = kb.LikelihoodClassifier.from_stats(_stats(), z=4.0)
    if calibrated:
        clf.calibrate(TRAIN, TRAIN_Y)
    assert not np.any(clf.predict(TEST) == "unknown")
    rng = np.random.default_rng(9)
    noise = rng.normal(size=(3, 40, 40))                                   # white noise
    streaks = np.zeros((5, 5))
    streaks[2, 1] = streaks[2, 3] = 0.45                 # strong horizontal correlation only
    unseen = simulate_gmrf(streaks, (40, 40), n=3, random_state=rng)
    assert list(clf.predict(np.concatenate([noise, unseen]))) == ["unknown"] * 6
    never = kb.LikelihoodClassifier.from_stats(_stats(), z=None)
    assert not np.any(never.predict(noise) == "unknown")


def test_mismatched_classes_raise():
    other = kb.ClassStats.from_fit(kb.fit(TRAIN[:5], BASIS), ["x"] * 5)
    with pytest.raises(ValueError, match="same classes"):
        kb.LikelihoodClassifier.from_stats([_stats(), other])
