"""Bank features and likelihood scores of vector kernels: brute force and the sums path."""

import itertools

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images

from .reference import zscore


def _bank(channels=2):
    return kb.KernelBank.concat([kb.KernelBank.random(1, 3, dilation=1, channels=channels),
                                 kb.KernelBank.random(1, 2, dilation=2, channels=channels,
                                                      random_state=1)])


def _images(seed, n=3, channels=2, shape=(17, 19)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, channels) + shape).cumsum(-1) + rng.normal(size=(n, channels)
                                                                          + shape)


def _prediction(image, kernel, dilation):
    """Σ_{c', o} kernel[c', o] x_{c'}(p + dilation·o) over the valid p, by plain slicing."""
    radius = kernel.shape[-1] // 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in image.shape[1:]]
    out = np.zeros(valid)
    for source, a, b in itertools.product(range(image.shape[0]), range(2 * radius + 1),
                                          range(2 * radius + 1)):
        rows = slice(a * dilation, a * dilation + valid[0])
        cols = slice(b * dilation, b * dilation + valid[1])
        out += kernel[source, a, b] * image[source, rows, cols]
    return out


def test_vector_bank_features_equal_brute_force():
    bank = _bank()
    images = _images(0)
    feats, names = kb.bank_features(images, bank, grid=2, joint=True)
    column = {n: i for i, n in enumerate(names)}
    kernels = bank.kernels.numpy()
    reach = bank.max_reach
    for i, image in enumerate(images):
        x = np.stack([zscore(c) for c in image])
        errors = {}
        for j, (name, d) in enumerate(zip(bank.kernel_names, bank.dilations.tolist())):
            for c in range(2):
                p = _prediction(x, kernels[j, c], d)
                t = x[c, d:-d, d:-d]                       # radius 1: margin d
                g = (p * t).sum() / (p * p).sum()
                e = t - g * p
                errors[j, c] = e
                key = f"{name}_c{c}"
                # float64 sums of a few hundred terms: 1e-12
                assert feats[i, column[f"{key}_mse"]] == pytest.approx((e ** 2).mean(), rel=1e-10)
                assert feats[i, column[f"{key}_var"]] == pytest.approx(e.var(), rel=1e-10)
                assert feats[i, column[f"{key}_gain"]] == pytest.approx(g, rel=1e-10)
                assert feats[i, column[f"{key}_mae"]] == pytest.approx(np.abs(e).mean(), rel=1e-10)
                rows = [(0, (e.shape[0] + 1) // 2), (e.shape[0] // 2, e.shape[0])]
                cols = [(0, (e.shape[1] + 1) // 2), (e.shape[1] // 2, e.shape[1])]
                assert feats[i, column[f"{key}_energy_1_0"]] == pytest.approx(
                    (e[rows[1][0]:rows[1][1], cols[0][0]:cols[0][1]] ** 2).mean(), rel=1e-10)
        # win: per channel, which kernel has the smallest |e| on the common region
        for c in range(2):
            common = np.stack([_crop(np.abs(errors[j, c]), reach - d)
                               for j, d in enumerate(bank.dilations.tolist())])
            wins = np.bincount(common.reshape(len(bank), -1).argmin(0), minlength=len(bank))
            for j, name in enumerate(bank.kernel_names):
                assert feats[i, column[f"{name}_c{c}_win"]] == pytest.approx(
                    wins[j] / common[0].size)
        # joint: channel c on the predictions of the dilation-1 kernels of channel c
        for c in range(2):
            design = np.stack([_prediction(x, kernels[j, c], 1).ravel() for j in range(3)], 1)
            target = x[c, 1:-1, 1:-1].ravel()
            coef = np.linalg.lstsq(design, target, rcond=None)[0]
            got = [feats[i, column[f"joint_{bank.kernel_names[j]}_c{c}"]] for j in range(3)]
            np.testing.assert_allclose(got, coef, rtol=1e-5, atol=1e-7)   # ridge 1e-6·n


def _crop(error, margin):
    """``error`` without ``margin`` pixels on every side (its part in the common region)."""
    stop = [s - margin for s in error.shape]
    return error[margin:stop[0], margin:stop[1]]


def test_vector_bank_features_from_sums_equal_the_pixel_path():
    bank = _bank()
    images = torch.from_numpy(_images(1, n=4))
    pixel, names = kb.bank_features(images, bank, grid=2, joint=True)
    level = normalize_images(images.reshape(8, 17, 19)).reshape(4, 2, 17, 19)
    sums = kb.window_sums(level, 1, [1, 2], channels=2) + \
        kb.window_sums(level, 1, [1, 2], grid=2, channels=2)
    feats, stat_names = kb.bank_features_from_sums(sums, bank, joint=True)
    assert len(stat_names) == len(bank) * 2 * (3 + 4) + len(bank) * 2
    index = [names.index(n) for n in stat_names]
    # differences of float64 sums vs sums of squares: ~1e-12 relative on these images
    assert torch.allclose(feats, pixel[:, index], rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="predict 2 channel"):
        kb.bank_features_from_sums(kb.window_sums(level[:, 0], 1, [1, 2]), bank)


def test_vector_likelihood_equals_the_gaussian_of_explicit_residuals():
    basis = kb.Basis.full(1, channels=2)
    train = _images(2, n=6, shape=(20, 20))
    labels = ["a", "b"] * 3
    stats = kb.ClassStats.from_fit(kb.fit(train, basis), labels)
    clf = kb.LikelihoodClassifier.from_stats(stats)
    test = _images(3, n=2, shape=(20, 20))
    loglik = clf.log_likelihood(test)
    bank = kb.KernelBank.from_stats(stats, "pooled")
    for i, image in enumerate(test):
        x = np.stack([zscore(c) for c in image])
        for k, name in enumerate(clf.classes):
            residual = np.stack([x[c, 1:-1, 1:-1] - _prediction(x, bank.kernels[k, c].numpy(), 1)
                                 for c in range(2)]).reshape(2, -1)
            s = residual @ residual.T / residual.shape[1]
            sigma = clf.models[0].covariance[k].numpy()
            expected = -0.5 * (2 * np.log(2 * np.pi) + np.linalg.slogdet(sigma)[1]
                               + np.trace(np.linalg.solve(sigma, s)))
            assert loglik[i, k].item() == pytest.approx(expected, rel=1e-9)


def test_vector_likelihood_from_sums_and_on_simulated_classes():
    from kernelbank.datasets import random_stable_vector_kernel, simulate_vector_gmrf
    kernels = [random_stable_vector_kernel(1, channels=3, random_state=s) for s in (1, 2)]
    train = np.concatenate([simulate_vector_gmrf(k, (32, 32), n=8, random_state=i)
                            for i, k in enumerate(kernels)])
    test = np.concatenate([simulate_vector_gmrf(k, (32, 32), n=4, random_state=10 + i)
                           for i, k in enumerate(kernels)])
    basis = kb.Basis.full(1, channels=3)
    result = kb.fit(train, basis, dilations=[1, 2])
    stats = [kb.ClassStats.from_fit(result, ["a"] * 8 + ["b"] * 8, scale=s) for s in (0, 1)]
    clf = kb.LikelihoodClassifier.from_stats(stats)
    assert list(clf.predict(test)) == ["a"] * 4 + ["b"] * 4
    level = normalize_images(torch.from_numpy(test).reshape(24, 32, 32)).reshape(8, 3, 32, 32)
    sums = kb.window_sums(level, 1, [1, 2], channels=3)
    assert torch.allclose(clf.log_likelihood_from_sums(sums), clf.log_likelihood(test),
                          rtol=1e-12, atol=1e-12)
    assert torch.allclose(clf.deviation_from_sums(sums), clf.deviation(test), atol=1e-9)
