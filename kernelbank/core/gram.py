r"""The Gram ``A = Σ_p z zᵀ`` of a basis's regressors, by whichever exact engine is faster.

Two private engines give ``A`` (:mod:`kernelbank.core.solve`), equal to float64 rounding:
the **window sums** (:mod:`kernelbank.core.sums` over the lag engine
:mod:`kernelbank.core._lags`), then ``A = Z cross Zᵀ`` for any basis, every dilation in
one call; and the **response strips** (:mod:`kernelbank.core._strips`): the planes of a
one-channel basis on every channel, a strip of rows at a time, and their Gram, whose cost
grows with ``(C (m + 1))²`` per pixel. :func:`prefers_window_sums` picks by these
measurements (one thread, strip time / window-sum time; 2-D: real textures, 3-D: noise):

=====================  ===============================================  ===============
basis                  measured (strip time / window-sum time)           engine
=====================  ===============================================  ===============
full, 2-D, radius 1    64²–256²: 0.9–1.4×                               window sums
full, 2-D, radius ≥ 2  64²: 1.6–3.2×, 128²: 2.1–4.8×, 256²: 2.8–7.8×    window sums
full, 3-D              radius 1: 0.2–0.5×; radius 2–3: 0.3–0.5× up to   window sums if
                       24³, 1.2–3.1× from 40³ (when side > 10·reach)    radius ≥ 2, side
                                                                        ≥ 40 and > 10·reach
full, C > 1            the cross-channel products are the sums' own      window sums
isotropic, custom      2-D: 0.15–0.93×, 3-D: 0.03–0.18×;                strips
                       C = 3 isotropic: 0.15–0.8× (64²–256², r 1–4)
custom, C > 1          (regressors mix channels: no planes)             window sums
=====================  ===============================================  ===============

When the window sums are wanted anyway (``with_sums``) every basis takes ``A`` from them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._strips import plane_gram
from .basis import Basis
from .sums import WindowSums, channel_window_sums

__all__ = ["prefers_window_sums", "regressor_grams"]


def prefers_window_sums(basis: Basis, shape: Sequence[int]) -> bool:
    """Whether the window-sum engine is the faster one (the module docstring's table)."""
    if basis.kind != "full":
        return _planes(basis) is None
    if basis.ndim == 2 or basis.channels > 1:
        return True
    side = min(shape)
    return basis.radius >= 2 and side >= 40 and side > 10 * basis.reach


def _planes(basis: Basis) -> tuple[Basis, torch.Tensor] | None:
    """The one-channel basis whose planes on every channel hold every regressor row, and
    each row's plane index in :func:`~kernelbank.core._strips.plane_gram`; None when some
    row is no such plane (a custom basis mixing channels)."""
    if basis.channels == 1:      # planes (R_1 … R_m, x) are the regressors, in order
        return basis, torch.arange(len(basis.regressors))
    if basis.kind not in ("full", "isotropic"):
        return None
    spatial = getattr(Basis, basis.kind)(basis.radius, basis.dilation, basis.ndim)
    planes = torch.block_diag(*([spatial.regressors] * basis.channels))     # (C(m+1), C t)
    match = (basis.regressors[:, None, :] == planes[None, :, :]).all(-1)   # (M, planes)
    if not bool(match.any(1).all()):
        return None
    return spatial, match.to(torch.int64).argmax(1)


def regressor_grams(level: torch.Tensor, basis: Basis, dilations: Sequence[int], *,
                    with_sums: bool = False
                    ) -> tuple[list[torch.Tensor], list[WindowSums] | None]:
    """``A`` (n, M, M), float64, of ``basis`` at each dilation for one batch of same-sized
    images ``(n, C, *spatial)`` as they should be modelled; with ``with_sums`` also the
    window sums (radius of the basis) of every dilation, else None."""
    shape = level.shape[2:]
    dilated = [basis.with_dilation(d) for d in dilations]
    by_sums = [d for d, b in zip(dilations, dilated)
               if with_sums or prefers_window_sums(b, shape)]
    sums = dict(zip(by_sums, channel_window_sums(level, basis.radius, by_sums))) \
        if by_sums else {}
    grams = []
    for d, b in zip(dilations, dilated):
        if d in sums:
            grams.append(sums[d].gram(b))
            continue
        spatial, index = _planes(b)
        gram = plane_gram(level, spatial.with_dilation(d))
        if not torch.equal(index, torch.arange(gram.shape[-1])):
            index = index.to(gram.device)
            gram = gram.index_select(1, index).index_select(2, index)
        grams.append(gram)
    return grams, [sums[d] for d in dilations] if with_sums else None

