"""The report's residual and winner maps against the feature stage's own numbers.

``kb.bank_features`` computes the per-kernel MSE and the per-pixel win rate with its own
batched code; the maps must reproduce both exactly (same regions, same gain), in 2-D and
3-D and across dilations.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelbank as kb
from kernelbank.report import bank_maps


def _bank(ndim: int) -> kb.KernelBank:
    return kb.KernelBank.concat([kb.KernelBank.random(radius=1, n_kernels=3, dilation=d,
                                                      ndim=ndim, random_state=d)
                                 for d in (1, 2)])


@pytest.mark.parametrize("shape", [(23, 29), (9, 11, 10)])
def test_maps_reproduce_bank_features(shape):
    image = np.random.default_rng(1).normal(size=shape).cumsum(-1)
    bank = _bank(len(shape))
    maps = bank_maps(image, bank)
    feats, names = kb.bank_features(image[None], bank, grid=1)
    column = {n: feats[0, i].item() for i, n in enumerate(names)}
    for k, name in enumerate(bank.kernel_names):
        # both accumulate in float64 over the same pixels: equal to rounding
        assert maps.mse[k] == pytest.approx(column[f"{name}_mse"], rel=1e-10)
        wins = np.mean(maps.winner[maps.winner >= 0] == k)
        assert wins == pytest.approx(column[f"{name}_win"], abs=1e-12)
    assert maps.best == int(np.argmin([column[f"{n}_mse"] for n in bank.kernel_names]))
    reach = bank.max_reach
    inner = tuple(slice(reach, s - reach) for s in shape)          # common region: winner
    covered = np.zeros(shape, bool)
    covered[inner] = True
    assert ((maps.winner >= 0) == covered).all()
    own = bank.radius * int(bank.dilations[maps.best])             # best kernel's own region
    covered = np.zeros(shape, bool)
    covered[tuple(slice(own, s - own) for s in shape)] = True
    assert (np.isfinite(maps.residual) == covered).all()
    assert np.nanmean(maps.residual ** 2) == pytest.approx(maps.mse[maps.best], rel=1e-10)

def test_whole_image_smoothing_picks_the_best_kernel_everywhere():
    image = np.random.default_rng(2).normal(size=(20, 20)).cumsum(0)
    bank = _bank(2)
    maps = bank_maps(image, bank, smooth=50)     # the box covers the whole common region
    assert set(np.unique(maps.winner[maps.winner >= 0])) == {maps.best}
    local = bank_maps(image, bank, smooth=1)
    assert len(np.unique(local.winner[local.winner >= 0])) > 1


def test_bad_input_names_the_problem():
    bank = _bank(2)
    with pytest.raises(ValueError, match="smaller than the 5-pixel window"):
        bank_maps(np.zeros((4, 40)), bank)
    with pytest.raises(ValueError, match="3 dimensions"):
        bank_maps(np.zeros((8, 8, 8)), bank)
    with pytest.raises(ValueError, match="smooth"):
        bank_maps(np.zeros((8, 8)), bank, smooth=-1)
