r"""Normal equations of a basis, by whichever of two exact engines is faster.

The fit needs, per image, ``G = Σ R Rᵀ``, ``h = Σ R x``, ``Σ x²`` and ``n`` over the valid
pixels. Two engines give the same sums (to float64 rounding):

* **strips** (:mod:`kernelbank.core.responses`): the responses of the basis, a strip of
  rows at a time, and their Gram; cost grows with ``(m + 1)²`` per pixel.
* **window sums** (:mod:`kernelbank.core.sums`): the full window's sums from lag
  products (about one product per pixel and distinct lag, mostly in matrix products),
  then ``G = W cross Wᵀ`` for any basis ``W`` over the window's taps. One call serves
  every dilation, and the sums themselves are what the later stages are algebra on.

Which engine is used, per basis and image size (:func:`prefers_window_sums`), was
measured on one thread (CPU time per image, window sums + ``BᵀGB`` against strips, on a
busy 2-core machine, so ±30 %; 2-D: real textures, 3-D: noise volumes):

=====================  ===============================================  ===============
basis                  measured (strip time / window-sum time)           engine
=====================  ===============================================  ===============
full, 2-D, radius 1    64²–256²: 0.9–1.4×                               window sums
full, 2-D, radius ≥ 2  64²: 1.6–3.2×, 128²: 2.1–4.8×, 256²: 2.8–7.8×    window sums
full, 3-D              radius 1: 0.2–0.5×; radius 2–3: 0.3–0.5× up to   window sums if
                       24³, 1.2–3.1× from 40³ (when side > 10·reach)    radius ≥ 2, side
                                                                        ≥ 40 and > 10·reach
isotropic, custom      2-D: 0.15–0.93×, 3-D: 0.03–0.18×                 strips
=====================  ===============================================  ===============

With ``return_sums`` the window sums are computed in any case, and every basis then takes
its equations from them (one ``W cross Wᵀ``, negligible next to the sums).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .basis import Basis
from .responses import augmented_gram
from .sums import WindowSums, window_sums

__all__ = ["level_equations", "normal_equations", "prefers_window_sums"]

Equations = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def prefers_window_sums(basis: Basis, shape: Sequence[int]) -> bool:
    """Whether the window-sum engine is the faster one for this basis and image shape.

    See the table in the module docstring for the measurements behind the rule.
    """
    if basis.kind != "full":
        return False
    if basis.ndim == 2:
        return True
    side = min(shape)
    return basis.radius >= 2 and side >= 40 and side > 10 * basis.reach


def _strip_equations(batch: torch.Tensor, basis: Basis) -> Equations:
    m = basis.n_components
    full = augmented_gram(batch, basis)
    valid = [s - 2 * basis.reach for s in batch.shape[1:]]
    count = torch.full((batch.shape[0],), int(np.prod(valid)), dtype=torch.int64,
                       device=batch.device)
    return full[:, :m, :m], full[:, :m, m], full[:, m, m], count


def normal_equations(batch: torch.Tensor, basis: Basis) -> Equations:
    """``G``, ``h``, ``Σx²`` and the valid-pixel count for same-sized images.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, *spatial), floating
        Images as they should be modelled (already normalised if wanted).
    basis : Basis

    Returns
    -------
    gram : (n, m, m) float64
    rhs : (n, m) float64
    sum_sq : (n,) float64
    n_pixels : (n,) int64
    """
    if prefers_window_sums(basis, batch.shape[1:]):
        sums, = window_sums(batch, basis.radius, [basis.dilation])
        return sums.basis_sums(basis)
    return _strip_equations(batch, basis)


def level_equations(level: torch.Tensor, basis: Basis, dilations: Sequence[int], *,
                    with_sums: bool = False
                    ) -> tuple[list[Equations], list[WindowSums] | None]:
    """Normal equations of ``basis`` at each dilation for one batch of same-sized images.

    Dilations whose equations come from window sums share one :func:`window_sums` call.

    Parameters
    ----------
    level : torch.Tensor of shape (n, *spatial)
    basis : Basis
    dilations : sequence of int
    with_sums : bool, default=False
        Also return the window sums (radius of the basis) of every dilation.

    Returns
    -------
    equations : list of (gram, rhs, sum_sq, n_pixels), one per dilation
    sums : list of WindowSums, one per dilation, or None
    """
    dilated = [basis.with_dilation(d) for d in dilations]
    by_sums = [d for d, b in zip(dilations, dilated)
               if with_sums or prefers_window_sums(b, level.shape[1:])]
    sums = dict(zip(by_sums, window_sums(level, basis.radius, by_sums))) if by_sums else {}
    equations = [sums[d].basis_sums(b) if d in sums else _strip_equations(level, b)
                 for d, b in zip(dilations, dilated)]
    return equations, [sums[d] for d in dilations] if with_sums else None
