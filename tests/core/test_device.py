"""The fit on another device gives the CPU's answer (CUDA when present)."""

import os

import numpy as np
import pytest
import torch

import kernelbank as kb

DEVICE = os.environ.get("KERNELBANK_TEST_DEVICE", "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("basis", [kb.Basis.isotropic(4), kb.Basis.full(2, dilation=2),
                                   kb.Basis.isotropic(2, ndim=3)], ids=repr)
def test_gpu_fit_matches_cpu(basis):
    rng = np.random.default_rng(0)
    shape = (5, 70, 66) if basis.ndim == 2 else (3, 20, 21, 22)
    images = torch.as_tensor(rng.normal(size=shape))
    cpu = kb.fit(images, basis, dilations=[1, 2])
    gpu = kb.fit(images.to(DEVICE), basis, dilations=[1, 2])
    assert gpu.coef.device.type == "cuda"
    # float64 on both: only summation order differs
    assert torch.allclose(gpu.coef.cpu(), cpu.coef, rtol=1e-9, atol=1e-11)
    gpu32 = kb.fit(images.float().to(DEVICE), basis, robust=True)
    cpu32 = kb.fit(images.float(), basis, robust=True)
    assert torch.allclose(gpu32.coef.cpu(), cpu32.coef, atol=1e-3)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("kind", ["full", "isotropic"])
def test_gpu_colour_fit_matches_cpu(kind):
    rng = np.random.default_rng(1)
    images = torch.as_tensor(rng.normal(size=(4, 3, 64, 60)).cumsum(-1))
    basis = getattr(kb.Basis, kind)(2, channels=3)
    cpu = kb.fit(images, basis, dilations=[1, 2], return_sums=True)
    gpu = kb.fit(images.to(DEVICE), basis, dilations=[1, 2], return_sums=True)
    assert gpu.coef.device.type == "cuda" and gpu.sums[0].cross.device.type == "cuda"
    # float64 on both: only summation order differs
    assert torch.allclose(gpu.coef.cpu(), cpu.coef, rtol=1e-9, atol=1e-11)
    assert torch.allclose(gpu.covariance.cpu(), cpu.covariance, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gpu.sums[1].cross.cpu(), cpu.sums[1].cross, rtol=1e-12, atol=1e-9)
