"""Statistics path == pixel path: bank features, fits, class statistics and the likelihood
classifier from window sums against the pixel functions on the same images; row and
bad input.

The pixel functions (``kb.bank_features``, ``kb.fit``, the classifier's image methods) are
the references: they are checked against brute-force per-pixel loops and explicit design
matrices in test_features.py, test_fit.py and test_likelihood.py and share no algebra
with the sums path (which never forms a prediction image).

Tolerance: everything runs in float64. The sums path computes the MSE as a difference of
sums (``Σx² − ⟨p,x⟩²/⟨p,p⟩``), which loses ``log10(Σx²/Σe²)`` digits (two or three on
these textures): 1e-9 relative leaves a margin of about 1e2 over the worst seen (8e-12).
The joint coefficients are another matter: a PCA bank's kernels ``μ ± σv`` are nearly
collinear, the joint normal equations have condition numbers up to ~4e7 here (after the
solver's Jacobi scaling), so *either* path knows the coefficients only to about
``cond · eps`` ≈ 1e-8 and no two float64 computations agree elementwise to 1e-9. They are
checked normwise against that bound (from an explicit design matrix), and the joint
kernel ``Σ α_j k_j``, which is well determined, to 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core import normalize_images, pyramid_level
from kernelbank.core.features import bank_feature_names
from kernelbank.datasets import load_textures
from kernelbank.datasets.synthetic import random_stable_kernel, simulate_gmrf
from tests.core.reference import design_matrix, zscore

RTOL = 1e-9
ATOL = 1e-12     # for values that are zero in exact arithmetic (a gain of a null kernel)


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def textures():
    """Real texture patches, float64: 3 train and 2 test per class, plus odd-sized crops."""
    images, labels, splits = load_textures(patch_size=48)
    train, test = [], []
    for name in sorted(set(labels)):
        rows = np.nonzero(labels == name)[0]
        tr = [i for i in rows if splits[i] == "train"][:3]
        te = [i for i in rows if splits[i] == "test"][:2]
        train += tr
        test += te
    as_float = lambda idx: images[idx].astype(np.float64)  # noqa: E731
    return {"train": as_float(train), "train_y": labels[train],
            "test": as_float(test), "test_y": labels[test]}


def _odd_crops(batch: np.ndarray) -> list[np.ndarray]:
    """Different, odd-sided sizes: adaptive-pooling cells then overlap by one pixel."""
    shapes = [(41, 47), (48, 39), (45, 45)]
    return [image[:shapes[i % 3][0], :shapes[i % 3][1]] for i, image in enumerate(batch)]


def _volumes(n=4, shape=(13, 15, 14)):
    basis = kb.Basis.full(radius=1, ndim=3)
    out = []
    for seed in range(2):
        kernel = random_stable_kernel(basis, max_response=0.9, random_state=seed)
        out.append(simulate_gmrf(kernel, shape, n=n // 2, random_state=10 + seed))
    return np.concatenate(out)


def _sums(images, radius, dilations, grid=None, scale=1) -> list[kb.WindowSums]:
    """Window sums of normalised images of any sizes, in input order.

    Same-sized images are summed together; the parts go through the Parquet row layout
    to come back as one WindowSums per dilation, as the stages will read them.
    """
    images = list(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    out = []
    for d in dilations:
        rows = np.empty(len(images), dtype=object)
        for indices in by_shape.values():
            batch = pyramid_level(torch.from_numpy(np.stack([images[i] for i in indices])), scale)
            [part] = kb.window_sums(normalize_images(batch), radius, [d], grid=grid)
            for i, row in zip(indices, kb.sums_to_rows(part)):
                rows[i] = row
        ndim = images[0].ndim
        out.append(kb.sums_from_rows(list(rows), radius=radius, dilation=d, ndim=ndim,
                                     scale=scale, grid=grid))
    return out


def _stats_bank(images, labels, basis, dilations, method):
    banks = []
    for d in dilations:
        stats = kb.ClassStats.from_fit(kb.fit(images, basis.with_dilation(d)), labels)
        banks.append(kb.KernelBank.from_stats(stats, method, n_components=2))
    return kb.KernelBank.concat(banks)


def _pixel_columns(images, bank, grid, names):
    pixel, pixel_names = kb.bank_features(images, bank, grid=grid or 1, joint=True)
    return pixel[:, [pixel_names.index(n) for n in names]].numpy()


def _assert_equal_to_pixel_path(feats, names, images, bank, grid, ridge=1e-6):
    """Quadratic columns elementwise; joint coefficients as the module docstring says."""
    expected = _pixel_columns(images, bank, grid, names)
    got = feats.numpy()
    joint = np.array([n.startswith("joint_") for n in names])
    np.testing.assert_allclose(got[:, ~joint], expected[:, ~joint], rtol=RTOL, atol=ATOL)
    kernels = bank.kernels.reshape(len(bank), -1).numpy()
    for d in sorted(set(bank.dilations.tolist())):
        members = np.nonzero(bank.dilations.numpy() == d)[0]
        cols = [names.index(f"joint_{bank.kernel_names[k]}") for k in members]
        for i, image in enumerate(images):
            a, b = got[i, cols], expected[i, cols]
            design, _ = design_matrix(zscore(image), bank.kernels[members].numpy(), d)
            gram = (design.T @ design).numpy() + ridge * len(design) * np.eye(len(members))
            scale = 1 / np.sqrt(np.diag(gram))
            cond = np.linalg.cond(gram * scale[:, None] * scale[None, :])
            bound = 10 * cond * np.finfo(np.float64).eps
            assert np.linalg.norm(a - b) <= bound * np.linalg.norm(b), (d, i, cond)
            np.testing.assert_allclose(a @ kernels[members], b @ kernels[members], rtol=RTOL,
                                       atol=RTOL * np.abs(b @ kernels[members]).max())


# ---------------------------------------------------------------------------- features
@pytest.mark.parametrize("kind,method,dilations,grid", [
    ("full", "pca", (1, 2), 2),
    ("full", "pooled", (1, 3), 1),
    ("isotropic", "pca", (1, 2, 3), 2),
    ("isotropic", "pooled", (2,), None),
])
def test_bank_features_equal_pixel_path_on_textures(textures, kind, method, dilations, grid):
    basis = getattr(kb.Basis, kind)(radius=2)
    bank = _stats_bank(textures["train"], textures["train_y"], basis, dilations, method)
    images = list(textures["test"]) + _odd_crops(textures["test"][:6])
    sums = _sums(images, bank.radius, dilations)
    if grid is not None:
        sums += _sums(images, bank.radius, dilations, grid=grid)
    feats, names = kb.bank_features_from_sums(sums, bank, joint=True)
    assert names == kb.bank_feature_names_from_sums(bank, grid, joint=True)
    pixel_names = bank_feature_names(bank, grid or 1, joint=True)
    # every quadratic column of the pixel path is here, in its order; only mae/win are not
    assert names == [n for n in pixel_names if not n.endswith(("_mae", "_win"))
                     and (grid is not None or "_energy_" not in n)]
    _assert_equal_to_pixel_path(feats, names, images, bank, grid)


def test_predefined_and_mixed_banks_equal_pixel_path(textures):
    """Kernels of no basis at all (gabor, random), several dilations in one bank."""
    bank = kb.KernelBank.concat([
        kb.KernelBank.gabor(radius=3, n_orientations=3, frequencies=(0.2,), dilation=1),
        kb.KernelBank.random(radius=3, n_kernels=3, dilation=2, random_state=4),
        kb.KernelBank.gabor(radius=3, n_orientations=2, frequencies=(0.3,), dilation=1)])
    images = textures["test"][:5]
    sums = _sums(images, 3, (1, 2)) + _sums(images, 3, (1, 2), grid=3)
    feats, names = kb.bank_features_from_sums(sums, bank, joint=True, ridge=1e-4)
    pixel, pixel_names = kb.bank_features(images, bank, grid=3, joint=True, ridge=1e-4)
    np.testing.assert_allclose(feats.numpy(), pixel[:, [pixel_names.index(n) for n in names]],
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind,radius,grid", [("full", 1, 2), ("isotropic", 2, 1)])
def test_bank_features_equal_pixel_path_on_volumes(kind, radius, grid):
    volumes = _volumes()
    labels = ["a", "a", "b", "b"]
    basis = getattr(kb.Basis, kind)(radius=radius, ndim=3)
    bank = _stats_bank(volumes, labels, basis, (1, 2), "pca")
    sums = _sums(volumes, radius, (1, 2)) + _sums(volumes, radius, (1, 2), grid=grid)
    feats, names = kb.bank_features_from_sums(sums, bank, joint=True)
    assert any("_energy_1_1_1" in n for n in names) == (grid == 2)
    _assert_equal_to_pixel_path(feats, names, list(volumes), bank, grid)


def test_larger_sums_radius_means_the_larger_windows_valid_pixels(textures):
    """Radius-3 sums for a radius-2 bank: the pixel path on the image cropped by the extra
    (3 − 2)·δ pixels per side, z-scored over the whole image as the sums were."""
    bank = _stats_bank(textures["train"], textures["train_y"], kb.Basis.full(radius=2), (2,),
                       "pooled")
    images = textures["test"][:4]
    sums = _sums(images, 3, (2,)) + _sums(images, 3, (2,), grid=2)
    feats, names = kb.bank_features_from_sums(sums, bank)
    z = normalize_images(torch.from_numpy(images))
    cropped = z[:, 2:-2, 2:-2]
    expected = _pixel_columns_no_norm(cropped, bank, 2, names)
    np.testing.assert_allclose(feats.numpy(), expected, rtol=RTOL, atol=ATOL)
    # ... which is not what the bank's own radius gives
    own, _ = kb.bank_features_from_sums(_sums(images, 2, (2,)) + _sums(images, 2, (2,), grid=2),
                                        bank)
    assert not np.allclose(own.numpy(), feats.numpy(), rtol=1e-3)


def _pixel_columns_no_norm(images, bank, grid, names):
    pixel, pixel_names = kb.bank_features(images, bank, grid=grid, normalize=False)
    return pixel[:, [pixel_names.index(n) for n in names]].numpy()


def test_bank_features_refuse_bad_sums(textures):
    bank = kb.KernelBank.gabor(radius=2, n_orientations=2, frequencies=(0.25,), dilation=2)
    images = textures["test"][:3]
    with pytest.raises(ValueError, match="radius 2 but the window sums at dilation 2 have radius 1"):
        kb.bank_features_from_sums(_sums(images, 1, (2,)), bank)
    with pytest.raises(ValueError, match="no whole-image window sums at dilation 2"):
        kb.bank_features_from_sums(_sums(images, 2, (1, 3)), bank)
    # per-cell sums at a dilation the bank does not use are ignored ...
    feats, names = kb.bank_features_from_sums(_sums(images, 2, (2,)) + _sums(images, 2, (1,), grid=2),
                                              bank)
    assert not any("energy" in n for n in names)
    # ... but once a grid is given it is needed at every dilation of the bank
    both = kb.KernelBank.concat([bank, kb.KernelBank.gabor(radius=2, n_orientations=1,
                                                           frequencies=(0.25,))])
    with pytest.raises(ValueError, match="no grid-2 window sums at dilation 2"):
        kb.bank_features_from_sums(_sums(images, 2, (1, 2)) + _sums(images, 2, (1,), grid=2), both)
    with pytest.raises(ValueError, match="several grids"):
        kb.bank_features_from_sums(_sums(images, 2, (2,)) + _sums(images, 2, (2,), grid=2)
                                   + _sums(images, 2, (2,), grid=3), bank)
    with pytest.raises(ValueError, match="2 whole-image window sums at dilation 2"):
        kb.bank_features_from_sums(_sums(images, 2, (2,)) + _sums(images, 3, (2,)), bank)
    with pytest.raises(ValueError, match="different numbers of images"):
        kb.bank_features_from_sums(_sums(images, 2, (2,)) + _sums(images[:2], 2, (1,)), both)
    with pytest.raises(ValueError, match="bank is 2-D"):
        kb.bank_features_from_sums(_sums(_volumes(2), 2, (2,)), bank)
    with pytest.raises(TypeError, match="KernelBank"):
        kb.bank_features_from_sums(_sums(images, 2, (2,)), bank.kernels)


# ---------------------------------------------------------------------------- fits, stats
@pytest.mark.parametrize("kind,dilation", [("full", 1), ("isotropic", 3)])
def test_fit_and_class_stats_equal_pixel_path(textures, kind, dilation):
    basis = getattr(kb.Basis, kind)(radius=2, dilation=dilation)
    images, labels = textures["train"], textures["train_y"]
    [sums] = _sums(images, 2, (dilation,))
    coef, mse = kb.fit_from_sums(sums, basis, ridge=1e-5)
    result = kb.fit(images, basis, ridge=1e-5)
    np.testing.assert_allclose(coef.numpy(), result.coef.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mse.numpy(), result.mse.numpy(), rtol=RTOL)

    # reservoir_size >= class size: the sample is every row, so both paths keep the same set
    stats = kb.ClassStats.from_sums(sums, labels, basis, ridge=1e-5, reservoir_size=8)
    expected = kb.ClassStats.from_fit(result, labels, reservoir_size=8)
    assert stats.classes == expected.classes and stats.scale == expected.scale == 1
    assert stats.basis.describe() == expected.basis.describe()
    for name in stats.classes:
        a, b = stats[name], expected[name]
        assert (a.n, a.n_pixels) == (b.n, b.n_pixels)
        for key in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs", "sum_sq", "sum_mse",
                    "sum_mse_sq"):
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=RTOL, atol=ATOL)
        order = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(a.sample), order(b.sample), rtol=RTOL, atol=ATOL)
    # precomputed coefficients are used as given
    again = kb.ClassStats.from_sums(sums, labels, basis, coef=result.coef, mse=result.mse,
                                    reservoir_size=8)
    for name in stats.classes:
        np.testing.assert_array_equal(again[name].sum_coef, expected[name].sum_coef)


def test_fit_from_sums_refuses_bad_input(textures):
    images = textures["train"][:2]
    [sums] = _sums(images, 1, (1,))
    with pytest.raises(ValueError, match="have radius 1"):
        kb.fit_from_sums(sums, kb.Basis.full(radius=2))
    [cells] = _sums(images, 1, (1,), grid=2)
    with pytest.raises(ValueError, match="per-cell"):
        kb.fit_from_sums(cells, kb.Basis.full(radius=1))
    with pytest.raises(ValueError, match="coef must have shape"):
        kb.ClassStats.from_sums(sums, ["a", "b"], kb.Basis.full(radius=1), coef=torch.zeros(2, 3))


# ---------------------------------------------------------------------------- likelihood
def test_likelihood_from_sums_equals_pixel_path(textures):
    basis = kb.Basis.isotropic(radius=2)
    train, labels, test = textures["train"], textures["train_y"], textures["test"]
    # two dilations at scale 1 and one model on the scale-2 pyramid level
    models = [(1, 1), (2, 1), (1, 2)]
    parts = [kb.ClassStats.from_fit(kb.fit(train, basis.with_dilation(d), scales=[s]), labels,
                                    scale=0) for d, s in models]

    def sums_of(images):
        out = []
        for d, s in models:
            out += _sums(images, 2, (d,), scale=s)
        # entries no model uses are ignored: another dilation, per-cell sums
        return out + _sums(images, 2, (3,)) + _sums(images, 2, (1,), grid=2)

    pixel = kb.LikelihoodClassifier.from_stats(parts, z=2.0)
    stats = kb.LikelihoodClassifier.from_stats(parts, z=2.0)
    pixel.calibrate(train, labels)
    stats.calibrate_from_sums(sums_of(train), labels)
    for a, b in zip(pixel.models, stats.models):
        for key in ("log_mean", "log_std", "excess_mean", "excess_std"):
            np.testing.assert_allclose(getattr(b, key).numpy(), getattr(a, key).numpy(),
                                       rtol=RTOL, atol=ATOL)

    images = list(test) + _odd_crops(test[:3])
    sums = sums_of(images)
    for method in ("residual_mse", "log_likelihood", "predict_log_proba", "predict_proba",
                   "deviation"):
        np.testing.assert_allclose(getattr(stats, f"{method}_from_sums")(sums).numpy(),
                                   getattr(pixel, method)(images).numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=method)
    predicted = stats.predict_from_sums(sums)
    np.testing.assert_array_equal(predicted, pixel.predict(images))
    # z=2 on these images exercises both branches: some unknown, some named
    assert 0 < (predicted == "unknown").sum() < len(predicted)


def test_likelihood_from_sums_refuses_missing_model_sums(textures):
    basis = kb.Basis.isotropic(radius=2, dilation=2)
    stats = kb.ClassStats.from_fit(kb.fit(textures["train"], basis), textures["train_y"])
    clf = kb.LikelihoodClassifier.from_stats(stats)
    with pytest.raises(ValueError, match="no whole-image window sums at dilation 2"):
        clf.predict_from_sums(_sums(textures["test"], 2, (1,)))
    with pytest.raises(ValueError, match="radius 1"):
        clf.predict_from_sums(_sums(textures["test"], 1, (2,)))


# ---------------------------------------------------------------------------- rows
@pytest.mark.parametrize("ndim,grid", [(2, None), (2, 2), (3, None), (3, 2)])
def test_rows_layout_and_round_trip(ndim, grid):
    rng = np.random.default_rng(ndim)
    batch = torch.from_numpy(rng.normal(size=(3,) + (9,) * ndim))
    [sums] = kb.window_sums(batch, 1, [2], grid=grid)
    rows = kb.sums_to_rows(sums)
    t = 3 ** ndim
    cells = 1 if grid is None else grid ** ndim
    assert rows.shape == (3, kb.core.sums_row_length(1, ndim, grid)) == (3, cells * (t * (t + 1) // 2 + t + 1))
    # the documented layout, read with numpy alone
    upper = np.triu_indices(t)
    cross = sums.cross.numpy().reshape(3, cells, t, t)
    first = sums.first.numpy().reshape(3, cells, t)
    count = sums.n_pixels.numpy().reshape(3, cells)
    expected = np.concatenate([cross[:, :, upper[0], upper[1]], first, count[..., None]], -1)
    np.testing.assert_array_equal(rows, expected.reshape(3, -1))
    back = kb.sums_from_rows(rows, radius=1, dilation=2, ndim=ndim, scale=3, grid=grid)
    assert (back.radius, back.dilation, back.ndim, back.scale, back.grid) == (1, 2, ndim, 3, grid)
    assert torch.equal(back.first, sums.first) and torch.equal(back.n_pixels, sums.n_pixels)
    # the upper triangle comes back bit for bit and is mirrored below the diagonal (the
    # reference sums are symmetric only up to the order of their float additions)
    upper_mask = torch.ones(t, t, dtype=torch.bool).triu()
    assert torch.equal(back.cross[..., upper_mask], sums.cross[..., upper_mask])
    assert torch.equal(back.cross, back.cross.transpose(-1, -2))
    np.testing.assert_allclose(back.cross.numpy(), sums.cross.numpy(), rtol=1e-13, atol=1e-13)
    # a list column (rows as separate arrays, any real dtype) reads the same
    listed = kb.sums_from_rows([r.astype(np.float32) for r in rows], radius=1, dilation=2,
                               ndim=ndim, grid=grid)
    assert torch.equal(listed.n_pixels, sums.n_pixels)
    np.testing.assert_allclose(listed.cross.numpy(), sums.cross.numpy(), rtol=1e-6)


def test_rows_refuse_bad_input():
    [sums] = kb.window_sums(torch.ones(2, 7, 7, dtype=torch.float64), 1, [1])
    rows = kb.sums_to_rows(sums)
    with pytest.raises(ValueError, match=r"shape \(N, 55\)"):
        kb.sums_from_rows(rows[:, :-1], radius=1, dilation=1, ndim=2)
    with pytest.raises(ValueError, match="row 1 has 54 values"):
        kb.sums_from_rows([rows[0], rows[1, :-1]], radius=1, dilation=1, ndim=2)
    broken = rows.copy()
    broken[0, -1] = 12.5
    with pytest.raises(ValueError, match="pixel counts"):
        kb.sums_from_rows(broken, radius=1, dilation=1, ndim=2)
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kb.sums_from_rows(broken, radius=1, dilation=1, ndim=2)


def test_sums_scale_is_kept(textures):
    """Statistics from sums of a pyramid level carry that scale, as from_fit's do."""
    basis = kb.Basis.full(radius=1)
    [sums] = _sums(textures["train"][:4], 1, (1,), scale=2)
    stats = kb.ClassStats.from_sums(sums, ["a"] * 4, basis)
    expected = kb.ClassStats.from_fit(kb.fit(textures["train"][:4], basis, scales=[2]),
                                      ["a"] * 4, scale=0)
    assert stats.scale == expected.scale == 2
    np.testing.assert_allclose(stats["a"].sum_gram, expected["a"].sum_gram, rtol=RTOL)
