"""The end-to-end module: constraints by construction, gradients, sizes, metrics, files.

References are independent: metrics and residuals are recomputed with explicit NumPy
loops in float64, ring tying is checked against a brute-force grouping of offsets by
distance.
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.io.bank_file import load_bank, save_bank
from kernelbank.nn import (EndToEndClassifier, LearnableKernelBank, ModelConfig, load_model,
                           project_kernels, residual_metrics, save_model)

CLASSES = ("a", "b", "c")


def _model(**kw) -> EndToEndClassifier:
    return EndToEndClassifier(ModelConfig(class_names=CLASSES, **kw)).init_random(random_state=1)


def _train_steps(model: EndToEndClassifier, n_steps: int = 5, lr: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 28, 28, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)   # large lr: big, uneven updates
    for _ in range(n_steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _rings(radius: int) -> list[list[tuple[int, int]]]:
    """Window positions grouped by squared distance from the centre (brute force)."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            groups.setdefault((i - radius) ** 2 + (j - radius) ** 2, []).append((i, j))
    return [groups[d] for d in sorted(groups) if d > 0]


@pytest.mark.parametrize("basis", ["isotropic", "full"])
def test_zero_centre_and_tying_hold_after_optimizer_steps(basis):
    model = _model(basis=basis, radius=3, dilations=(1, 2))
    before = model.bank.kernels().detach().clone()
    _train_steps(model)
    kernels = model.bank.kernels().detach()
    assert not torch.allclose(kernels, before)              # the kernels did move
    assert torch.all(kernels[..., 3, 3] == 0)               # exactly, not approximately
    if basis == "isotropic":
        for ring in _rings(3):
            values = torch.stack([kernels[..., i, j] for i, j in ring], -1)
            assert torch.all(values == values[..., :1])     # equal taps, exactly
    else:                                                   # full: taps are free
        assert not torch.allclose(kernels[..., 3, 2], kernels[..., 2, 3])


def test_gradients_reach_every_kernel():
    model = _model(dilations=(1, 2, 3), gain=True)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 30, 30)),
                                             torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grad = model.bank.coef.grad
    assert grad is not None and grad.shape == model.bank.coef.shape
    assert torch.all(grad.abs().sum(-1) > 0)                # every kernel at every dilation
    assert torch.all(model.bank.gain.grad.abs() > 0)


@pytest.mark.parametrize("shape", [(18, 18), (18, 41), (33, 21), (64, 64)])
def test_any_image_size(shape):
    model = _model(dilations=(1, 2, 4), grid=2).eval()      # needs 2*2*4 + 2 = 18 pixels
    logits = model(torch.randn(3, *shape))
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_too_small_images_raise_with_the_needed_size():
    with pytest.raises(ValueError, match="at least 18"):
        _model(dilations=(1, 4))(torch.randn(2, 17, 40))


def _pool_reference(e2: np.ndarray, grid: int) -> np.ndarray:
    """Adaptive average pooling by its definition: cell i spans [⌊i n/g⌋, ⌈(i+1) n/g⌉)."""
    h, w = e2.shape
    out = []
    for i in range(grid):
        for j in range(grid):
            r0, r1 = (i * h) // grid, math.ceil((i + 1) * h / grid)
            c0, c1 = (j * w) // grid, math.ceil((j + 1) * w / grid)
            out.append(e2[r0:r1, c0:c1].mean())
    return np.array(out)


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_metrics_match_numpy(grid):
    rng = np.random.default_rng(3)
    e = rng.normal(size=(2, 3, 7, 5)) + 0.3
    got = residual_metrics(torch.from_numpy(e), grid=grid).numpy()
    for n in range(2):
        for k in range(3):
            x = e[n, k]
            expected = [np.abs(x).mean(), (x ** 2).mean(), x.var(), *_pool_reference(x ** 2, grid)]
            np.testing.assert_allclose(got[n, k], expected, rtol=1e-12)   # float64 throughout


def test_residuals_match_direct_convolution():
    """x − Σ_o k(o) x(p + δ o) on valid pixels, by explicit loops."""
    radius, dilation = 1, 2
    bank = LearnableKernelBank(kb.Basis.full(radius), dilations=(dilation,), n_kernels=2,
                               dtype=torch.float64)
    with torch.no_grad():
        bank.coef.copy_(torch.randn(bank.coef.shape, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64))
    x = np.random.default_rng(0).normal(size=(1, 9, 8))
    (residual,) = bank(torch.from_numpy(x))
    kernels = bank.kernels()[0].detach().numpy()
    reach = radius * dilation
    for k in range(2):
        expected = np.zeros((9 - 2 * reach, 8 - 2 * reach))
        for p in range(expected.shape[0]):
            for q in range(expected.shape[1]):
                pred = sum(kernels[k, a + radius, b + radius] * x[0, p + reach + dilation * a,
                                                                  q + reach + dilation * b]
                           for a in range(-radius, radius + 1) for b in range(-radius, radius + 1))
                expected[p, q] = x[0, p + reach, q + reach] - pred
        np.testing.assert_allclose(residual[0, k].detach().numpy(), expected,
                                   rtol=1e-12, atol=1e-12)


def test_projection_is_exact_for_full_and_ring_mean_for_isotropic():
    gen = torch.Generator().manual_seed(0)
    kernels = torch.randn(4, 5, 5, generator=gen, dtype=torch.float64)
    kernels[:, 2, 2] = 0
    full = kb.Basis.full(2)
    torch.testing.assert_close(full.to_kernels(project_kernels(kernels, full)), kernels)
    iso = kb.Basis.isotropic(2)
    rebuilt = iso.to_kernels(project_kernels(kernels, iso))
    for ring in _rings(2):
        mean = torch.stack([kernels[:, i, j] for i, j in ring], -1).mean(-1)
        for i, j in ring:
            torch.testing.assert_close(rebuilt[:, i, j], mean)
    smaller = torch.zeros(1, 3, 3, dtype=torch.float64)
    smaller[0, 0, 1] = 1.0                                    # radius 1 into a radius-2 basis
    padded = full.to_kernels(project_kernels(smaller, full))
    assert padded[0, 1, 2] == 1.0 and padded.abs().sum() == 1.0


def test_init_from_a_saved_kernel_bank(tmp_path):
    bank = kb.KernelBank.concat([kb.KernelBank.gabor(radius=2, n_orientations=2,
                                                     frequencies=(0.25,), dilation=d)
                                 for d in (1, 2)])
    url = str(tmp_path / "gabor.npz")
    save_bank(bank, url)
    model = _model(basis="full", dilations=(2, 3), n_kernels=3)
    random_d3 = model.bank.kernels()[1].detach().clone()
    model.init_from_bank(load_bank(url))
    kernels = model.bank.kernels().detach().to(torch.float64)
    at_d2 = bank.kernels[bank.dilations == 2]
    torch.testing.assert_close(kernels[0, :2], at_d2, rtol=1e-6, atol=1e-7)  # float32 params
    torch.testing.assert_close(kernels[1].to(torch.float32), random_d3)      # no d=3 in the bank


def test_save_load_roundtrip_and_predict(tmp_path):
    model = _model(norm="batch", hidden=0).eval()
    images = torch.randn(5, 24, 24)
    path = tmp_path / "model.pt"
    save_model(model, str(path), metadata={"test_accuracy": 0.5})
    loaded = load_model(str(path))
    assert loaded.config == model.config and loaded.metadata == {"test_accuracy": 0.5}
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    mixed = [np.random.default_rng(i).normal(size=s)
             for i, s in enumerate([(24, 24), (30, 20), (24, 24)])]
    expected = [CLASSES[int(model(torch.as_tensor(m, dtype=torch.float32)[None]).argmax())]
                for m in mixed]
    assert loaded.predict(mixed) == expected


def test_load_rejects_other_files():
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="not a kernelbank end-to-end model"):
        load_model(buffer)


def test_config_validation_names_the_parameter():
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(class_names=CLASSES, norm="group")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ModelConfig(class_names=("only",))


# ---------------------------------------------------------------------------- channels
@pytest.mark.parametrize("basis,mask", [("isotropic", "own"), ("full", "all")])
def test_colour_kernels_keep_their_masked_centres_and_predict_by_convolution(basis, mask):
    config = ModelConfig(class_names=CLASSES, radius=1, basis=basis, dilations=(1, 2),
                         n_kernels=2, channels=3, centre_mask=mask, hidden=0)
    model = EndToEndClassifier(config).init_random(random_state=2)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 20, 20, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2] * 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kernels = model.bank.kernels().detach()                    # (dilations, K, C, C, 3, 3)
    assert kernels.shape == (2, 2, 3, 3, 3, 3)
    own = kernels[:, :, [0, 1, 2], [0, 1, 2], 1, 1]
    assert torch.all(own == 0)
    if mask == "all":
        assert torch.all(kernels[..., 1, 1] == 0)
    else:
        assert kernels[..., 1, 1].abs().sum() > 0              # other channels' centres learn
    # residual of every kernel and channel at dilation 2 by explicit shifted sums
    residuals = model.bank(images)[1].detach().double()
    x = images.double()
    for k, c in itertools.product(range(2), range(3)):
        expected = x[:, c, 2:-2, 2:-2].clone()
        for source, a, b in itertools.product(range(3), range(3), range(3)):
            expected -= kernels[1, k, c, source, a, b].double() * x[:, source, 2 * a:2 * a + 16,
                                                                    2 * b:2 * b + 16]
        assert torch.allclose(residuals[:, k * 3 + c], expected, atol=1e-5)
    assert model.features(images).shape == (6, config.n_features) == (6, 2 * 2 * 3 * 7)
    assert len(config.feature_names()) == config.n_features


def test_colour_model_starts_from_a_vector_bank_and_round_trips(tmp_path):
    config = ModelConfig(class_names=CLASSES, radius=1, basis="full", dilations=(1,),
                         n_kernels=3, channels=2)
    bank = kb.KernelBank.random(1, 3, channels=2)
    model = EndToEndClassifier(config).init_from_bank(bank)
    # a full basis spans every vector kernel with masked own centres: exact
    assert torch.allclose(model.bank.kernels()[0].detach().double(), bank.kernels, atol=1e-6)
    path = tmp_path / "colour.pt"
    save_model(model, str(path))
    again = load_model(str(path))
    images = torch.randn(2, 2, 12, 12)
    assert torch.allclose(again(images), model.eval()(images))
    with pytest.raises(ValueError, match=r"\(N, 2, \*spatial\)"):
        model.bank(torch.randn(2, 12, 12))
