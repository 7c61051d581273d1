"""GMRF simulation: exact covariance, conditional variance, kernel recovery, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import kernelbank as kb
from kernelbank.datasets import (gmrf_spectral_density, make_synthetic_dataset,
                                 random_stable_kernel, simulate_gmrf, write_synthetic_dataset)

# Anisotropic, point-symmetric 3x3 kernel: horizontal neighbours 0.3, vertical 0.1,
# diagonals +0.05 / -0.05. K̂(0) = 0.8 is its maximum, so it is stable.
ANISOTROPIC = np.array([[0.05, 0.10, -0.05],
                        [0.30, 0.00, 0.30],
                        [-0.05, 0.10, 0.05]])


def explicit_covariance(kernel: np.ndarray, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Inverse of the precision matrix Q = (I - K) / σ² built tap by tap on the torus."""
    size = int(np.prod(shape))
    precision = np.eye(size)
    centre = np.array(kernel.shape) // 2
    for p in itertools.product(*(range(s) for s in shape)):
        for tap in itertools.product(*(range(s) for s in kernel.shape)):
            q = tuple((np.array(p) + np.array(tap) - centre) % np.array(shape))
            precision[np.ravel_multi_index(p, shape), np.ravel_multi_index(q, shape)] -= kernel[tap]
    return np.linalg.inv(precision / sigma**2)


def periodic_residual(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """x(p) - Σ_o k(o) x(p + o) with wrap-around, by explicit shifts."""
    centre = np.array(kernel.shape) // 2
    prediction = np.zeros_like(images)
    for tap in itertools.product(*(range(s) for s in kernel.shape)):
        offset = np.array(tap) - centre
        # x(p + o) at p is x rolled by -o.
        prediction += kernel[tap] * np.roll(images, tuple(-offset), axis=tuple(range(1, images.ndim)))
    return images - prediction


@pytest.mark.parametrize("kernel, shape", [
    (ANISOTROPIC, (6, 5)),
    (random_stable_kernel(1, ndim=3, random_state=4), (4, 3, 5)),
])
def test_spectral_density_is_the_explicit_covariance(kernel, shape):
    sigma = 1.5
    covariance = explicit_covariance(kernel, shape, sigma)
    autocovariance = np.fft.irfftn(gmrf_spectral_density(kernel, shape, sigma), s=shape,
                                  axes=tuple(range(len(shape))))
    # The covariance between pixel 0 and pixel p is the autocovariance at lag p; both are
    # exact float64 computations, so only rounding separates them.
    np.testing.assert_allclose(covariance[0], autocovariance.ravel(), rtol=1e-10, atol=1e-12)


def test_samples_have_the_theoretical_covariance():
    shape, sigma, n = (6, 5), 1.5, 20000
    covariance = explicit_covariance(ANISOTROPIC, shape, sigma)
    samples = simulate_gmrf(ANISOTROPIC, shape, n=n, sigma=sigma, random_state=0).reshape(n, -1)
    empirical = samples.T @ samples / n  # the mean is known to be 0
    # Standard error of a sample covariance of Gaussians: sqrt((C_ii C_jj + C_ij²) / n).
    diagonal = np.diag(covariance)
    standard_error = np.sqrt((np.outer(diagonal, diagonal) + covariance**2) / n)
    assert np.abs(empirical - covariance).max() < 5 * standard_error.max()
    assert np.abs(samples.mean()) < 5 * np.sqrt(covariance.sum() / covariance.shape[0] / n)


def test_periodogram_matches_spectral_density():
    shape, n = (64, 64), 40
    kernel = random_stable_kernel(2, max_response=0.95, random_state=1)
    spectrum = gmrf_spectral_density(kernel, shape)
    samples = simulate_gmrf(kernel, shape, n=n, random_state=2)
    periodogram = np.abs(np.fft.rfftn(samples, axes=(1, 2)))**2 / np.prod(shape)
    ratio = periodogram / spectrum
    # Each ordinate of ratio is ~Exp(1) (mean 1, sd 1). Averaging within four bins of S,
    # each holds n * 64 * 33 / 4 ~ 21000 ordinates: sd ~0.007, so 0.04 is ~5 sd. Filtering
    # by S instead of sqrt(S), or a wrong σ, makes the bins' means differ by far more.
    edges = np.quantile(spectrum, [0, 0.25, 0.5, 0.75, 1.0])
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (spectrum >= low) & (spectrum <= high)
        assert abs(ratio[:, in_bin].mean() - 1) < 0.04, (low, high)
    assert spectrum.max() / spectrum.min() > 10  # the bins really differ


def test_conditional_variance_is_sigma_squared():
    sigma = 2.0
    samples = simulate_gmrf(ANISOTROPIC, (128, 128), n=4, sigma=sigma, random_state=3)
    residual = periodic_residual(samples, ANISOTROPIC)
    # Var(e) = E[Var(x | rest)] = σ² = 4; with 65536 correlated residuals the relative
    # sampling error is ~1 %, so 5 % separates σ² from σ (2) or 1.
    assert residual.var() == pytest.approx(sigma**2, rel=0.05)


def test_least_squares_recovers_isotropic_ring_weights():
    basis = kb.Basis.isotropic(2)
    ring_weights = np.array([0.15, 0.05, -0.03, 0.02, 0.01])  # K̂(0) = 0.88 = max K̂
    kernel = basis.to_kernels(torch.from_numpy(ring_weights)).numpy()
    result = kb.fit(simulate_gmrf(kernel, (256, 256), n=8, random_state=0), basis,
                    ridge=0, normalize=False)
    coef = result.coef.numpy()
    # Conditional AR => least squares is consistent. Its standard error shrinks like
    # 1/sqrt(pixels): with 8 x 252² ~ 5e5 pixels it is ~1e-3 (checked below from the spread
    # across images), so 0.01 is several standard errors yet 5x smaller than any ring weight.
    standard_error = coef.std(axis=0, ddof=1) / np.sqrt(len(coef))
    assert standard_error.max() < 0.003
    np.testing.assert_allclose(coef.mean(axis=0), ring_weights, atol=0.01)
    assert result.mse.numpy() == pytest.approx(np.ones(8), rel=0.03)  # σ² = 1


def test_full_basis_recovers_anisotropic_kernel():
    result = kb.fit(simulate_gmrf(ANISOTROPIC, (256, 256), n=8, random_state=1),
                    kb.Basis.full(1), ridge=0, normalize=False)
    kernel = result.kernels.numpy().mean(axis=0)
    # Same standard error as above (~1e-3); the transposed kernel would be 0.2 away.
    np.testing.assert_allclose(kernel, ANISOTROPIC, atol=0.01)


def test_least_squares_recovers_3d_kernel():
    basis = kb.Basis.isotropic(1, ndim=3)
    ring_weights = np.array([0.08, 0.02, 0.01])  # 6, 12 and 8 taps: K̂(0) = 0.8
    kernel = basis.to_kernels(torch.from_numpy(ring_weights)).numpy()
    result = kb.fit(simulate_gmrf(kernel, (32, 32, 32), n=4, random_state=2), basis,
                    ridge=0, normalize=False)
    # 4 x 30³ ~ 1.1e5 voxels: standard error ~2e-3, so 0.01 is ~5 of them.
    np.testing.assert_allclose(result.coef.numpy().mean(axis=0), ring_weights, atol=0.01)


@pytest.mark.parametrize("kernel, message", [
    (np.array([[0, 0.2, 0], [0.1, 0, 0.3], [0, 0.2, 0]]), "symmetric"),
    (2 * ANISOTROPIC, "not stable"),
    (ANISOTROPIC + np.pad([[0.5]], 1), "centre weight"),
    (np.zeros((2, 2)), "odd"),
    (np.zeros(3), "2-D or 3-D"),
    (np.full((3, 3), np.nan), "NaN"),
])
def test_invalid_kernels_raise(kernel, message):
    with pytest.raises(ValueError, match=message):
        simulate_gmrf(kernel, (16, 16))


def test_invalid_shapes_and_arguments_raise():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        simulate_gmrf(np.zeros((5, 5)), (4, 16))
    with pytest.raises(ValueError, match="axes"):
        simulate_gmrf(ANISOTROPIC, (16, 16, 16))
    with pytest.raises(ValueError, match="sigma"):
        simulate_gmrf(ANISOTROPIC, (16, 16), sigma=0)
    with pytest.raises(ValueError, match="n must be"):
        simulate_gmrf(ANISOTROPIC, (16, 16), n=0)


@pytest.mark.parametrize("basis", [2, kb.Basis.full(1), kb.Basis.isotropic(2, dilation=2),
                                   kb.Basis.isotropic(1, ndim=3)])
def test_random_stable_kernel_is_valid(basis):
    kernel = random_stable_kernel(basis, max_response=0.9, random_state=5)
    assert np.array_equal(kernel, random_stable_kernel(basis, max_response=0.9, random_state=5))
    window = 2 * 2 * 2 + 1 if isinstance(basis, kb.Basis) and basis.dilation == 2 else None
    if window:
        assert kernel.shape == (window, window)
        assert np.all(kernel[1::2, :] == 0) and np.all(kernel[:, 1::2] == 0)
    centre = tuple(s // 2 for s in kernel.shape)
    assert kernel[centre] == 0
    np.testing.assert_allclose(kernel, kernel[(slice(None, None, -1),) * kernel.ndim], atol=1e-15)
    # K̂ by a direct cosine sum on a fine grid (independent of the FFT code): its max is 0.9.
    grid = np.meshgrid(*[np.linspace(0, 2 * np.pi, 48, endpoint=False)] * kernel.ndim, indexing="ij")
    offsets = np.argwhere(kernel != 0) - np.array(centre)
    response = sum(kernel[tuple(o + centre)] * np.cos(sum(w * d for w, d in zip(grid, o)))
                   for o in offsets)
    assert 0.8 < response.max() <= 0.9 + 1e-9


def test_simulation_is_deterministic():
    a = simulate_gmrf(ANISOTROPIC, (32, 48), n=3, random_state=7)
    assert a.shape == (3, 32, 48) and a.dtype == np.float64
    assert np.array_equal(a, simulate_gmrf(ANISOTROPIC, (32, 48), n=3, random_state=7))
    assert not np.allclose(a, simulate_gmrf(ANISOTROPIC, (32, 48), n=3, random_state=8))


def test_make_synthetic_dataset_labels_and_kernels():
    kernels = {"horizontal": ANISOTROPIC, "vertical": ANISOTROPIC.T.copy()}
    images, labels = make_synthetic_dataset(kernels, n_per_class=6, shape=(128, 128), random_state=0)
    assert images.shape == (12, 128, 128)
    assert labels.tolist() == ["horizontal"] * 6 + ["vertical"] * 6
    fitted = kb.fit(images, kb.Basis.full(1), ridge=0, normalize=False).kernels.numpy()
    # Each class's mean kernel is its own, not the other class's (0.2 apart; SE ~3e-3).
    np.testing.assert_allclose(fitted[:6].mean(0), ANISOTROPIC, atol=0.02)
    np.testing.assert_allclose(fitted[6:].mean(0), ANISOTROPIC.T, atol=0.02)


def test_write_synthetic_dataset(tmp_path):
    kernels = {"a": ANISOTROPIC, "b": random_stable_kernel(1, random_state=0)}
    summary = write_synthetic_dataset(tmp_path, kernels, n_per_class=3, shape=(40, 48), random_state=0)
    assert summary["counts"] == {"train": {"a": 3, "b": 3}, "test": {"a": 3, "b": 3}}
    for split in ("train", "test"):
        for name in kernels:
            files = sorted((tmp_path / split / name).glob("*.png"))
            assert len(files) == 3
            for file in files:
                with Image.open(file) as image:
                    assert image.mode == "L" and image.size == (48, 40)
                    pixels = np.asarray(image).astype(float)
                # Mapped to mean 128 and 32 grey levels per standard deviation.
                assert abs(pixels.mean() - 128) < 1.5 and abs(pixels.std() - 32) < 1.5
    saved = np.load(tmp_path / "kernels.npz")
    np.testing.assert_array_equal(saved["a"], ANISOTROPIC)
    again = write_synthetic_dataset(tmp_path / "again", kernels, n_per_class=3, shape=(40, 48),
                                    random_state=0)
    for record in again["files"]:
        assert (tmp_path / "again" / record["path"]).read_bytes() == (tmp_path / record["path"]).read_bytes()


def test_write_synthetic_volumes_as_npy(tmp_path):
    kernels = {"v": random_stable_kernel(1, ndim=3, random_state=0)}
    summary = write_synthetic_dataset(tmp_path, kernels, n_per_class=2, shape=(8, 9, 10),
                                      splits=("train",), random_state=0)
    assert summary["counts"] == {"train": {"v": 2}}
    volume = np.load(tmp_path / summary["files"][0]["path"])
    assert volume.shape == (8, 9, 10) and volume.dtype == np.float32
