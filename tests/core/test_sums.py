"""Window sums from lag products against the explicit stack of shifted windows."""

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.core._lags import lag_window_sums
from kernelbank.core.solve import solve_normal_equations
from kernelbank.core.sums import WindowSums, window_sums

from . import reference


def _images(rng, n, shape, dtype=np.float64):
    # a smoothed field plus an offset: neighbouring pixels correlate, sums are not trivial
    from scipy.ndimage import gaussian_filter
    noise = rng.normal(size=(n,) + shape)
    return torch.from_numpy(np.stack([gaussian_filter(a, 1.0) + 0.3 * a + 2.0
                                      for a in noise]).astype(dtype))


def _relative(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max())


def _sizes(radius, dilation, ndim):
    """Sides that cover both engines: as small as the window, just below and at the
    4·reach the run structure needs (and its column phases), and comfortably above."""
    reach = radius * dilation
    small = 2 * reach + 1
    if ndim == 3:
        return [(small, small + 1, small), (4 * reach, 4 * reach + 1, 4 * reach + 2)]
    return [(small, small), (4 * reach - 1, 4 * reach + 3), (4 * reach, 4 * reach + dilation),
            (4 * reach + 9, 4 * reach + 23)]


CASES = [(ndim, radius, dilation)
         for ndim, radii in ((2, (1, 2, 3, 4)), (3, (1, 2)))
         for radius in radii for dilation in (1, 2, 3)]


@pytest.mark.parametrize("ndim,radius,dilation", CASES)
def test_window_sums_equal_explicit_stack(ndim, radius, dilation):
    rng = np.random.default_rng(100 * ndim + 10 * radius + dilation)
    for shape in _sizes(radius, dilation, ndim):
        images = _images(rng, 2, shape)
        sums, = window_sums(images, radius, [dilation])
        cross, first, count = reference.window_sums(images, radius, dilation)
        # float64 throughout, different summation order: agreement to rounding
        assert _relative(sums.cross, cross) < 1e-12, shape
        assert _relative(sums.first, first) < 1e-12, shape
        assert torch.equal(sums.n_pixels, count.to(sums.n_pixels)), shape
        assert sums.cross.dtype == torch.float64 and sums.cross.shape == cross.shape


def test_both_engines_are_exercised():
    # the sizes above must reach the run engine and the direct one of the matrix-product
    # engine (engine="torch": the compiled one takes small CPU images); this guards the
    # size table against drifting to one engine only
    calls = []
    original = kb.core._lags._direct_sums

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    kb.core._lags._direct_sums = spy
    try:
        for shape in _sizes(2, 2, 2):
            lag_window_sums(torch.zeros((1, 1) + shape), 2, 2, torch.zeros(1, 1),
                            engine="torch")
    finally:
        kb.core._lags._direct_sums = original
    assert 0 < len(calls) < len(_sizes(2, 2, 2))


@pytest.mark.parametrize("ndim,radius,dilation,grid", [(2, 1, 1, 3), (2, 2, 2, 2), (2, 4, 1, 4),
                                                      (2, 3, 3, 2), (3, 1, 2, 2)])
def test_grid_cells_equal_explicit_stack_per_cell(ndim, radius, dilation, grid):
    rng = np.random.default_rng(radius + grid)
    reach = radius * dilation
    shape = (4 * reach + 11, 4 * reach + 6) if ndim == 2 else (4 * reach + 3,) * 3
    images = _images(rng, 2, shape)
    sums, = window_sums(images, radius, [dilation], grid=grid)
    cross, first, count = reference.window_sums(images, radius, dilation, grid)
    assert sums.cross.shape == (2, grid**ndim) + cross.shape[2:]
    assert _relative(sums.cross, cross) < 1e-12
    assert _relative(sums.first, first) < 1e-12
    assert torch.equal(sums.n_pixels, count.to(sums.n_pixels))
    assert sums.grid == grid


def test_all_dilations_in_one_call_match_separate_calls():
    rng = np.random.default_rng(1)
    images = _images(rng, 3, (53, 61))
    together = window_sums(images, 2, [1, 2, 3])
    for sums, dilation in zip(together, (1, 2, 3)):
        cross, first, _ = reference.window_sums(images, 2, dilation)
        assert sums.dilation == dilation
        assert _relative(sums.cross, cross) < 1e-12
        assert _relative(sums.first, first) < 1e-12


@pytest.mark.parametrize("radius,dilation", [(1, 1), (2, 3), (4, 1), (4, 2)])
def test_float32_images_give_float32_accurate_sums(radius, dilation):
    rng = np.random.default_rng(radius)
    images = _images(rng, 4, (70, 81), np.float32)
    sums, = window_sums(images, radius, [dilation])
    cross, first, _ = reference.window_sums(images.double(), radius, dilation)
    assert sums.cross.dtype == torch.float64
    # float32 products summed in float32 over at most one matrix-product block, then in
    # float64: a few float32 ulps of the largest entry
    assert _relative(sums.cross, cross) < 1e-6
    assert (sums.first - first).abs().max() < 1e-6 * (images.double().abs().sum((1, 2)).max())


def _covariance(cross, first, count):
    n = count.to(torch.float64)[:, None, None]
    return cross - first[:, :, None] * first[:, None, :] / n


def test_float32_offset_images_lose_no_digits_to_cancellation():
    # a texture around 1000: products ~1e6 while the covariances the fit needs are ~10,
    # so sums of raw float32 products (a summed-area table, say) lose every digit
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(0)
    noise = gaussian_filter(rng.normal(size=(2, 96, 80)), (0, 1, 1)) * 3
    images = torch.from_numpy((1000 + noise).astype(np.float32))
    radius = 2
    sums, = window_sums(images, radius, [1])
    cross, first, count = reference.window_sums(images.double(), radius, 1)
    expected = _covariance(cross, first, count)
    scale = expected.diagonal(dim1=-2, dim2=-1).max()
    ours = _covariance(sums.cross, sums.first, sums.n_pixels)
    assert float((ours - expected).abs().max() / scale) < 1e-5

    # the same entry from a float32 summed-area table of its lag product is far off:
    # this is the failure the test guards against
    a, b = 0, (2 * radius + 1) ** 2 - 1                 # taps (-2, -2) and (2, 2)
    lag = 2 * radius
    product = images[:, :-lag, :-lag] * images[:, lag:, lag:]
    table = torch.nn.functional.pad(product.cumsum(1).cumsum(2), (1, 0, 1, 0))
    h, w = images.shape[1] - 2 * radius, images.shape[2] - 2 * radius
    box = table[:, h, w] - table[:, 0, w] - table[:, h, 0] + table[:, 0, 0]
    sat = box.double() - first[:, a] * first[:, b] / count.double()
    assert float((sat - expected[:, a, b]).abs().max() / scale) > 1e-3


@pytest.mark.parametrize("kind,ndim,radius,dilation", [
    ("full", 2, 1, 1), ("full", 2, 3, 2), ("isotropic", 2, 4, 1), ("isotropic", 2, 2, 3),
    ("full", 3, 1, 1), ("isotropic", 3, 2, 1)])
def test_basis_sums_solve_to_the_explicit_design_lstsq(kind, ndim, radius, dilation):
    basis = getattr(kb.Basis, kind)(radius=radius, dilation=dilation, ndim=ndim)
    core = max(6, int(np.ceil((2.5 * basis.n_components) ** (1 / ndim))))
    side = 2 * basis.reach + (max(core, 24) if ndim == 2 else core)
    rng = np.random.default_rng(radius)
    images = _images(rng, 2, (side,) * ndim)
    normalised = kb.core.normalize_images(images)
    sums, = window_sums(normalised, radius, [dilation])
    gram, rhs, sum_sq, count = sums.basis_sums(basis)
    coef = solve_normal_equations(gram, rhs, count, ridge=0)
    for i, image in enumerate(images.numpy()):
        expected, mse = reference.lstsq_fit(image, basis.kernels.numpy(), dilation)
        # both backward-stable float64 solvers on a well-conditioned problem
        assert float((coef[i] - expected).norm() / expected.norm()) < 1e-6
        assert kb.core.residual_mse(gram[i], rhs[i], sum_sq[i], count[i], coef[i]).item() == \
            pytest.approx(mse, rel=1e-8)


def test_basis_sums_of_a_smaller_basis_and_restrict_pick_the_inner_taps():
    rng = np.random.default_rng(3)
    images = _images(rng, 2, (40, 44))
    sums, = window_sums(images, 3, [1])
    inner = sums.restrict(1)
    cross, _, _ = reference.window_sums(images, 3, 1)
    taps = [2 * 7 + 2, 2 * 7 + 3, 2 * 7 + 4, 3 * 7 + 2, 3 * 7 + 3, 3 * 7 + 4,
            4 * 7 + 2, 4 * 7 + 3, 4 * 7 + 4]
    assert _relative(inner.cross, cross[:, taps][:, :, taps]) < 1e-12
    gram, *_ = sums.basis_sums(kb.Basis.full(1))
    others = [0, 1, 2, 3, 5, 6, 7, 8]                   # every tap but the centre
    assert _relative(gram, inner.cross[:, others][:, :, others]) < 1e-15


def test_bad_input_is_refused_with_a_clear_message():
    images = torch.zeros(2, 20, 20)
    with pytest.raises(ValueError, match="smaller than the 21-pixel window"):
        window_sums(images, 5, [2])
    with pytest.raises(TypeError, match="float32 or float64"):
        window_sums(images.to(torch.int32), 1, [1])
    with pytest.raises(ValueError, match=r"shape \(n, H, W\)"):
        window_sums(images[0], 1, [1])
    with pytest.raises(ValueError, match="dilations"):
        window_sums(images, 1, [0])
    with pytest.raises(ValueError, match="use a smaller grid"):
        window_sums(images, 4, [1], grid=13)
    with pytest.raises(ValueError, match="radius"):
        window_sums(images, 0, [1])


def test_window_sums_dataclass_contract():
    rng = np.random.default_rng(4)
    images = _images(rng, 3, (30, 31))
    sums = window_sums(images, 2, [1, 3])
    assert [s.dilation for s in sums] == [1, 3]
    assert all(isinstance(s, WindowSums) and len(s) == 3 and s.n_taps == 25 and s.centres.tolist() == [12]
               and s.scale == 1 and s.grid is None and s.ndim == 2 for s in sums)
    # symmetric to the last bit: (a, b) and (b, a) are read from the same lag sum
    assert torch.equal(sums[0].cross, sums[0].cross.transpose(1, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_window_sums_on_gpu_equal_cpu():
    rng = np.random.default_rng(5)
    images = _images(rng, 3, (60, 70))
    cpu = window_sums(images, 3, [1, 2])
    gpu = window_sums(images.cuda(), 3, [1, 2])
    for c, g in zip(cpu, gpu):
        assert g.cross.device.type == "cuda"
        assert _relative(g.cross.cpu(), c.cross) < 1e-12
