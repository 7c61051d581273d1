"""The compiled residual-descriptor engine against the torch reference.

``describe_residuals(..., engine="compiled")`` (kernelbank.core._fused, one fused Numba
sweep per image) and ``engine="torch"`` (whole-batch tensor operations: the reference,
and the GPU path) must give the same table. In float64 they differ only in summation
order (moments, quantile interpolation: ~1e-14 here), so 1e-9 leaves a wide margin while
any changed definition (a comparison's direction, a bin, a quantile rank, a moment's
normalisation) moves a column by far more than that: a pattern or co-occurrence count
that moves by one pixel changes a frequency by 1 / (pixels) ≥ 1e-4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import kernelbank as kb
from kernelbank.core._fused_lags import compiled_lag_window_sums
from kernelbank.core._lags import _compiled_wins, lag_window_sums
from kernelbank.core.residual import ResidualDescriptors, describe_residuals

# summation order only (see the module docstring)
ATOL = 1e-9
ROOT = Path(__file__).resolve().parents[2]


def _images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Correlated float64 images (a smoothed random field), so the kernels are not ~0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    spatial = len(shape) - 1 if len(shape) in (3, 4) and shape[1] > 3 else len(shape) - 2
    for axis in range(len(shape) - spatial, len(shape)):
        x = x + 0.6 * x.roll(1, axis)
    return x


def _both(batch, kernels, dilation, spec=None):
    a = describe_residuals(batch, kernels, dilation, spec, engine="compiled")
    b = describe_residuals(batch, kernels, dilation, spec, engine="torch")
    return a, b


def _from_kernels_basis(radius: int) -> kb.Basis:
    g = torch.Generator().manual_seed(radius)
    side = 2 * radius + 1
    kernels = torch.randn((3, side, side), generator=g, dtype=torch.float64)
    kernels[:, radius, radius] = 0
    return kb.Basis.from_kernels(kernels)


@pytest.mark.parametrize("family", ["full", "isotropic", "from_kernels"])
@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_engines_agree_in_2d(family, radius):
    basis = (_from_kernels_basis(radius) if family == "from_kernels"
             else getattr(kb.Basis, family)(radius))
    x = _images((3, 9 * radius + 12, 8 * radius + 13), seed=radius)
    for dilation in (1, 2, 3):
        fitted = kb.fit(x, basis.with_dilation(dilation), normalize=False)
        a, b = _both(x, fitted.kernels, dilation)
        assert a.shape == b.shape == (3, len(kb.residual_descriptor_names()))
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["full", "isotropic"])
def test_engines_agree_with_channels(family):
    spec = ResidualDescriptors(image_patterns=("ri",))
    basis = getattr(kb.Basis, family)(2, channels=3)
    x = _images((2, 3, 30, 27), seed=7)
    for dilation in (1, 2, 3):
        kernels = kb.fit(x, basis.with_dilation(dilation), normalize=False).kernels
        a, b = _both(x, kernels, dilation, spec)
        assert a.shape == (2, len(kb.residual_descriptor_names(spec, channels=3)))
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["full", "isotropic"])
def test_engines_agree_in_3d(family):
    # volumes: moments, quantiles and co-occurrences along each of the three axes
    spec = ResidualDescriptors(patterns=(), cooccurrence=2, lags=(1, 2))
    basis = getattr(kb.Basis, family)(1, ndim=3)
    x = _images((2, 13, 12, 14), seed=3)
    for dilation in (1, 2, 3):
        fitted = kb.fit(x, basis.with_dilation(dilation), normalize=False)
        a, b = _both(x, fitted.kernels, dilation, spec)
        assert a.shape == (2, len(spec.names(3)))
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("spec", [
    ResidualDescriptors(ternary=0.4, patterns=("nri", "ri"), lags=(1, 3)),
    ResidualDescriptors(ternary=0.7, patterns=(), cooccurrence=3, levels=1, step=0.5),
    ResidualDescriptors(moments=False, quantiles=(0.0, 0.5, 1.0, 0.333), patterns=("ri",),
                        cooccurrence=0, lags=(2,)),
    ResidualDescriptors(quantiles=(), patterns=(), cooccurrence=4, levels=3, step=0.3),
    # the image's own patterns: the compiled engine takes them in the same call
    ResidualDescriptors(image_patterns=("nri", "ri"), lags=(1, 2)),
], ids=["ternary-nri-lags", "ternary-triples", "quantile-ends", "quadruples", "image"])
def test_engines_agree_on_every_option(spec):
    x = _images((3, 34, 31), seed=11)
    for dilation in (1, 3):
        fitted = kb.fit(x, kb.Basis.full(2).with_dilation(dilation), normalize=False)
        a, b = _both(x, fitted.kernels, dilation, spec)
        assert a.shape == (3, len(spec.names(2)))
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_engines_agree_on_ties():
    # integer images with a zero kernel: e = x exactly in both engines, full of ties
    # (LBP's >=, LTP's strict > and <, quantiles of repeated values, co-occurrences
    # at the rounding boundaries ±0.5 σ, ±1.5 σ)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-3, 4, (4, 23, 26), generator=g).to(torch.float64)
    x[0] = 0                                         # a perfectly predicted image
    x[1, :, :13] = 2
    spec = ResidualDescriptors(ternary=1.0, cooccurrence=2, lags=(1, 2))
    zero = torch.zeros((4, 3, 3), dtype=torch.float64)
    a, b = _both(x, zero, 1, spec)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    # round half to even at the quantisation boundaries: four ±0.5, four ±1.5 and two
    # zeros have mean square 1 exactly, so σ = 1 and e / σ lands exactly on ±0.5, ±1.5
    values = torch.tensor([0.5, -1.5, 0.0, -0.5, 1.5, 0.5, -1.5, 0.0, -0.5, 1.5],
                          dtype=torch.float64)
    halves = torch.stack([values.roll(3 * i) for i in range(10)])[None]
    spec = ResidualDescriptors(quantiles=(), patterns=(), cooccurrence=2, levels=2)
    a, b = _both(halves, torch.zeros((1, 1, 1), dtype=torch.float64), 1, spec)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_float32_images_are_widened_exactly():
    # the compiled engine reads float32 images and kernels (rounded to float32, as the
    # torch engine rounds them) and works in float64: the same as on the widened copy
    x = _images((3, 28, 29), seed=2).to(torch.float32)
    kernels = kb.fit(x, kb.Basis.full(2), normalize=False).kernels.to(torch.float32)
    spec = ResidualDescriptors(image_patterns=("ri", "nri"))   # these read x as it is
    single = describe_residuals(x, kernels, 1, spec, engine="compiled")
    widened = describe_residuals(x.double(), kernels.double(), 1, spec, engine="compiled")
    assert torch.equal(single, widened)
    # and the torch engine, in float32, agrees to float32 rounding on the moments
    reference = describe_residuals(x, kernels, 1, engine="torch")
    torch.testing.assert_close(single[:, :4], reference[:, :4], rtol=1e-4, atol=1e-4)


def test_auto_picks_compiled_on_cpu_and_checks_its_arguments():
    x = _images((2, 20, 20), seed=1)
    kernels = kb.fit(x, kb.Basis.full(1), normalize=False).kernels
    auto = describe_residuals(x, kernels, 1)
    assert torch.equal(auto, describe_residuals(x, kernels, 1, engine="compiled"))
    with pytest.raises(ValueError, match="engine must be"):
        describe_residuals(x, kernels, 1, engine="numba")
    with pytest.raises(ValueError, match="too small for lag"):
        describe_residuals(x, kernels, 1, ResidualDescriptors(lags=(9,)), engine="compiled")
    with pytest.raises(ValueError, match="too small for lag 10"):   # the image's, lag 5 × 2
        describe_residuals(x, kb.fit(x, kb.Basis.full(1, dilation=2)).kernels, 2,
                           ResidualDescriptors(lags=(5,), image_patterns=("ri",), patterns=(),
                                               cooccurrence=0), engine="compiled")


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_lag_sum_engines_agree(radius):
    # the compiled window sums (kernelbank.core._fused_lags) against the matrix-product
    # engine, on sides from the bare window to past 4·reach (its direct and run paths),
    # with a shift; relative to the largest entry, as tests/core/test_sums.py
    g = torch.Generator().manual_seed(radius)
    for dilation in (1, 2, 3):
        reach = radius * dilation
        for shape in ((2 * reach + 1, 2 * reach + 2), (4 * reach + 3, 4 * reach + 9)):
            x = torch.randn((3,) + shape, generator=g, dtype=torch.float64) + 1.5
            shift = x.mean((1, 2))
            cross, first = compiled_lag_window_sums(x, radius, dilation, shift)
            ref_cross, ref_first = lag_window_sums(x[:, None], radius, dilation, shift[:, None],
                                                  engine="torch")
            scale = ref_cross.abs().max()
            assert (cross - ref_cross).abs().max() / scale < 1e-12, (dilation, shape)
            assert (first - ref_first).abs().max() / scale < 1e-12, (dilation, shape)
            assert torch.equal(cross, cross.transpose(1, 2))       # exactly symmetric


def test_lag_sums_widen_float32_exactly_and_auto_picks_by_the_rule():
    x = torch.randn((9, 24, 26), generator=torch.Generator().manual_seed(0))
    shift = torch.zeros(9)
    single = compiled_lag_window_sums(x, 2, 1, shift)
    widened = compiled_lag_window_sums(x.double(), 2, 1, shift.double())
    assert all(torch.equal(a, b) for a, b in zip(single, widened))
    # small one-channel CPU images go to the compiled engine, large ones to the products
    assert torch.equal(lag_window_sums(x[:, None], 2, 1, shift[:, None])[0], single[0])
    assert _compiled_wins(2, 1, (64, 64)) and not _compiled_wins(4, 1, (256, 256))


@pytest.mark.slow
def test_compiled_engine_is_loaded_from_its_cache_by_a_new_process():
    # Two fresh interpreters: after the first (which compiles, or loads what an earlier
    # run compiled), the second must load the machine code from the on-disk cache
    # (NUMBA_DEBUG_CACHE logs every index and data file loaded or saved) and compile
    # nothing. The cache is Numba's own (next to the module, or NUMBA_CACHE_DIR).
    script = ("import torch; from kernelbank.core.residual import describe_residuals; "
              "x = torch.randn(2, 20, 20, dtype=torch.float64); "
              "describe_residuals(x, torch.zeros(2, 3, 3, dtype=torch.float64), 1, "
              "engine='compiled'); "
              "from kernelbank.core._fused_lags import compiled_lag_window_sums; "
              "compiled_lag_window_sums(x, 2, 1, torch.zeros(2, dtype=torch.float64)); "
              "from kernelbank.core.solve import solve_normal_equations as solve; "
              "solve(torch.eye(3).repeat(2, 1, 1).double(), x[:, 0, :3], torch.ones(2))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_DEBUG_CACHE="1")
    engines = ("describe_batch", "_window_sums", "ridge_solve")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=600) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    loaded = [line.split("data loaded from ", 1)[1].strip().strip("'\"")
              for line in runs[1].stdout.splitlines() if "data loaded from" in line]
    engine_files = [Path(path) for path in loaded
                    if any(name in path for name in engines)]
    for name in engines:
        assert any(name in path.name for path in engine_files), (name, runs[1].stdout)
    assert all(path.is_file() for path in engine_files)
    assert "data saved to" not in runs[1].stdout, runs[1].stdout


@pytest.mark.parametrize("ridge", [0.0, 1e-6])
def test_solve_engines_agree_and_fall_back_alike(ridge):
    # the compiled batched Cholesky (kernelbank.core._fused_solve) against the torch
    # path, on real Grams (well conditioned) and singular ones (a constant image, a
    # repeated regressor): the flagged problems take the same pseudo-inverse fallback
    from kernelbank.core.solve import SingularGramWarning, _compiled_wins, _torch_solve

    x = _images((10, 24, 23), seed=4)
    x[3] = 1.0                                             # constant: G of rank one
    fitted = kb.fit(x, kb.Basis.full(1), normalize=False, ridge=ridge)
    gram, rhs = fitted.gram.clone(), fitted.rhs.clone()
    gram[5, :, 1], gram[5, 1, :] = gram[5, :, 0], gram[5, 0, :]   # regressor 1 = 0
    gram[5, 1, 1], rhs[5, 1] = gram[5, 0, 0], rhs[5, 0]
    count = fitted.n_pixels
    assert _compiled_wins(gram, rhs, count)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = kb.core.solve.solve_normal_equations(gram, rhs, count, ridge, warn=True)
    reference, failed = _torch_solve(gram, rhs, count, ridge)
    # singular only without a ridge; then the same problems are flagged and warned of
    assert (failed >= 2) == (ridge == 0) == any(
        issubclass(w.category, SingularGramWarning) for w in caught)
    torch.testing.assert_close(compiled, reference, rtol=0, atol=1e-10)
