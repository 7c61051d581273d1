r"""Window sums: the sufficient statistics of every AR model on one window, per image.

For an image ``x``, a window of ``t = (2r+1)^d`` taps at dilation ``δ`` (offsets
``o_a``, C order, *including* the centre ``o_c = 0``) and the valid pixels ``V`` (those
whose whole dilated window lies inside the image)::

    cross[a, b] = Σ_{p∈V} x(p + o_a) x(p + o_b)        (t × t, symmetric)
    first[a]    = Σ_{p∈V} x(p + o_a)                    (t)
    n_pixels    = |V|

Every quantity the later stages need is algebra on these sums, with no pixels:

* the normal equations of any basis ``B`` (rows ``w_j`` over the t taps, centre weight
  0): ``G = W cross Wᵀ``, ``h = W cross[:, c]``, ``Σx² = cross[c, c]``, ``ΣR = W first``,
  ``Σx = first[c]``, so the fitted coefficients and residual MSE of the full, isotropic
  or any bank basis follow (:meth:`WindowSums.basis_sums`);
* for a kernel ``k`` (a t-vector with ``k_c = 0``), the prediction ``p = k ⋆ x``
  satisfies ``⟨p, x⟩ = kᵀ cross[:, c]``, ``⟨p, p⟩ = kᵀ cross k`` and ``Σp = kᵀ first``:
  gain, MSE after gain, residual mean and variance, the joint coefficients of a bank
  and the Gaussian likelihood (:mod:`kernelbank.core.stats_features`);
* with the sums kept per cell of a ``grid × grid`` partition of ``V``, the same per
  cell (residual energy maps).

The partition into cells follows adaptive average pooling (cell ``i`` of ``g`` along an
axis of ``L`` valid pixels covers ``[⌊iL/g⌋, ⌈(i+1)L/g⌉)``), which is what the pixel
path of :func:`kernelbank.bank_features` uses, so both paths agree exactly.

Notes
-----
Sums are float64 whatever the image dtype: a float32 sum over hundreds of thousands
of pixels loses digits that the solve of a nearly predictable image needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .basis import Basis

__all__ = ["WindowSums", "window_sums", "window_taps", "cell_bounds"]


def window_taps(radius: int, ndim: int) -> np.ndarray:
    """All offsets of a ``(2r+1)^ndim`` window in C order, centre included, (t, ndim)."""
    axis = np.arange(-radius, radius + 1)
    return np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)


def cell_bounds(length: int, grid: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``grid`` cells along an axis of ``length`` pixels.

    The cells of adaptive average pooling: neighbours overlap by one pixel when
    ``length`` is not a multiple of ``grid``.
    """
    return [(i * length // grid, -((-(i + 1) * length) // grid)) for i in range(grid)]


@dataclass
class WindowSums:
    """Sums over the valid pixels of one dilation (see the module docstring).

    Attributes
    ----------
    cross : torch.Tensor of shape (n, [cells,] t, t), float64
    first : torch.Tensor of shape (n, [cells,] t), float64
    n_pixels : torch.Tensor of shape (n, [cells]), int64
    radius, dilation, ndim : int
        The window.
    scale : int
        Pyramid factor of the images the sums were taken on (1 = original).
    grid : int or None
        Cells per axis when the sums are per cell (a ``cells = grid**ndim`` axis, C
        order over the cell grid), None for whole-image sums.
    """

    cross: torch.Tensor
    first: torch.Tensor
    n_pixels: torch.Tensor
    radius: int
    dilation: int
    ndim: int
    scale: int = 1
    grid: int | None = None

    @property
    def n_taps(self) -> int:
        return (2 * self.radius + 1) ** self.ndim

    @property
    def centre(self) -> int:
        """Index of the centre tap (the predicted pixel itself)."""
        return self.n_taps // 2

    def __len__(self) -> int:
        return int(self.n_pixels.shape[0])

    def tap_weights(self, basis: Basis) -> torch.Tensor:
        """The basis as rows over this window's taps, shape (m, t), float64.

        A basis with a smaller radius is placed in the middle of the window (its
        coefficients then fit on this window's valid pixels, which are fewer than its
        own: exact for the sums, not for a fit of that smaller model on its own).
        """
        if basis.ndim != self.ndim or basis.radius > self.radius:
            raise ValueError(
                f"{basis} does not fit in these sums' window (radius {self.radius}, "
                f"ndim {self.ndim}); refit with a radius >= {basis.radius}")
        if basis.dilation != self.dilation:
            raise ValueError(f"{basis} has dilation {basis.dilation}, these sums were taken "
                             f"at dilation {self.dilation}")
        side = 2 * self.radius + 1
        index = np.ravel_multi_index(tuple((basis.offsets.numpy() + self.radius).T),
                                     (side,) * self.ndim)
        weights = torch.zeros((basis.n_components, self.n_taps), dtype=torch.float64)
        weights[:, torch.from_numpy(index)] = basis.weights.to(torch.float64)
        return weights.to(self.cross.device)

    def basis_sums(self, basis: Basis
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normal equations of ``basis``: ``G (…, m, m)``, ``h (…, m)``, ``Σx² (…)``, ``n``."""
        w = self.tap_weights(basis)
        c = self.centre
        gram = w @ self.cross @ w.T
        rhs = self.cross[..., :, c] @ w.T
        return gram, rhs, self.cross[..., c, c], self.n_pixels

    def restrict(self, radius: int) -> "WindowSums":
        """The sums of the inner ``(2 radius + 1)^d`` taps (same valid pixels)."""
        if not 1 <= radius <= self.radius:
            raise ValueError(f"radius must be in 1..{self.radius}, got {radius!r}")
        side = 2 * self.radius + 1
        taps = window_taps(radius, self.ndim) + self.radius
        index = torch.from_numpy(np.ravel_multi_index(tuple(taps.T), (side,) * self.ndim))
        index = index.to(self.cross.device)
        cross = self.cross.index_select(-1, index).index_select(-2, index)
        return WindowSums(cross, self.first.index_select(-1, index), self.n_pixels, radius,
                          self.dilation, self.ndim, self.scale, self.grid)


# ---------------------------------------------------------------------------- reference
def _shifted(x: torch.Tensor, offset: Sequence[int], reach: int,
             valid: Sequence[int]) -> torch.Tensor:
    index = (slice(None),) + tuple(slice(reach + o, reach + o + v) for o, v in zip(offset, valid))
    return x[index]


def _whole_image_sums(batch: torch.Tensor, radius: int, dilation: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ndim = batch.ndim - 1
    reach = radius * dilation
    valid = [s - 2 * reach for s in batch.shape[1:]]
    taps = window_taps(radius, ndim) * dilation
    views = torch.stack([_shifted(batch, o, reach, valid).reshape(batch.shape[0], -1)
                         for o in taps.tolist()], 1).to(torch.float64)       # (n, t, pixels)
    cross = torch.bmm(views, views.transpose(1, 2))
    first = views.sum(-1)
    count = torch.full((batch.shape[0],), int(np.prod(valid)), dtype=torch.int64,
                       device=batch.device)
    return cross, first, count


def window_sums(batch: torch.Tensor, radius: int, dilations: Sequence[int], *,
                grid: int | None = None) -> list[WindowSums]:
    """Window sums of same-sized images at each dilation.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, *spatial), floating
        Images as they should be modelled (already normalised if wanted).
    radius : int
    dilations : sequence of int
    grid : int, optional
        Also split the valid pixels into ``grid`` cells per axis and return per-cell sums
        (a cells axis after the image axis).

    Returns
    -------
    list of WindowSums, one per dilation, on the batch's device
    """
    ndim = batch.ndim - 1
    out = []
    for dilation in dilations:
        reach = radius * dilation
        if min(batch.shape[1:]) < 2 * reach + 1:
            raise ValueError(f"images of shape {tuple(batch.shape[1:])} are smaller than the "
                             f"{2 * reach + 1}-pixel window of radius {radius} with dilation "
                             f"{dilation}")
        if grid is None:
            cross, first, count = _whole_image_sums(batch, radius, dilation)
        else:
            valid = [s - 2 * reach for s in batch.shape[1:]]
            parts = []
            for cell in np.ndindex(*([grid] * ndim)):
                bounds = [cell_bounds(v, grid)[i] for v, i in zip(valid, cell)]
                crop = batch[(slice(None),) + tuple(slice(a, b + 2 * reach) for a, b in bounds)]
                parts.append(_whole_image_sums(crop, radius, dilation))
            cross, first, count = (torch.stack([p[k] for p in parts], 1) for k in range(3))
        out.append(WindowSums(cross, first, count, radius, int(dilation), ndim, grid=grid))
    return out
