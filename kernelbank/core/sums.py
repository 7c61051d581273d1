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
from .lags import lag_window_sums

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


# ---------------------------------------------------------------------------- computation
def _check(batch: torch.Tensor, radius: int, dilations: Sequence[int], grid: int | None) -> None:
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
    if batch.ndim not in (3, 4):
        raise ValueError(f"batch must have shape (n, H, W) or (n, D, H, W), got shape "
                         f"{tuple(batch.shape)}")
    if batch.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"batch must be float32 or float64, got {batch.dtype}")
    if batch.shape[0] == 0:
        raise ValueError("batch is empty: window sums need at least one image")
    if not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    if not len(dilations) or any(not isinstance(d, (int, np.integer)) or d < 1
                                 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of integers >= 1, "
                         f"got {dilations!r}")
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be an integer >= 1 or None, got {grid!r}")
    for dilation in dilations:
        reach = radius * dilation
        if min(batch.shape[1:]) < 2 * reach + 1:
            raise ValueError(f"images of shape {tuple(batch.shape[1:])} are smaller than the "
                             f"{2 * reach + 1}-pixel window of radius {radius} with dilation "
                             f"{dilation}")
        if grid is not None and min(batch.shape[1:]) - 2 * reach < grid:
            raise ValueError(f"images of shape {tuple(batch.shape[1:])} have fewer than "
                             f"{grid} valid pixels along some axis at dilation {dilation}; "
                             f"use a smaller grid")


def _cell_sums(batch: torch.Tensor, radius: int, dilation: int, grid: int,
               shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums of every cell: the window sums of the crop whose valid pixels are the cell.

    Crops of equal shape are computed together; returns (n, cells, …) tensors.
    """
    n, ndim = batch.shape[0], batch.ndim - 1
    reach = radius * dilation
    bounds = [cell_bounds(s - 2 * reach, grid) for s in batch.shape[1:]]
    cells = list(np.ndindex(*([grid] * ndim)))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, cell in enumerate(cells):
        shape = tuple(bounds[axis][i][1] - bounds[axis][i][0] for axis, i in enumerate(cell))
        by_shape.setdefault(shape, []).append(index)
    t = (2 * radius + 1) ** ndim
    cross = batch.new_empty((n, len(cells), t, t), dtype=torch.float64)
    first = batch.new_empty((n, len(cells), t), dtype=torch.float64)
    count = torch.empty((n, len(cells)), dtype=torch.int64, device=batch.device)
    for shape, members in by_shape.items():
        crops = [batch[(slice(None),) + tuple(
            slice(bounds[axis][i][0], bounds[axis][i][1] + 2 * reach)
            for axis, i in enumerate(cells[index]))] for index in members]
        part_cross, part_first = lag_window_sums(torch.cat(crops), radius, dilation,
                                                 shift.repeat(len(members)))
        where = torch.tensor(members, device=batch.device)
        cross[:, where] = part_cross.reshape(len(members), n, t, t).transpose(0, 1)
        first[:, where] = part_first.reshape(len(members), n, t).transpose(0, 1)
        count[:, where] = int(np.prod(shape))
    return cross, first, count


def window_sums(batch: torch.Tensor, radius: int, dilations: Sequence[int], *,
                grid: int | None = None) -> list[WindowSums]:
    """Window sums of same-sized images at each dilation.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, *spatial), float32 or float64
        Images as they should be modelled (already normalised if wanted).
    radius : int
    dilations : sequence of int
    grid : int, optional
        Also split the valid pixels into ``grid`` cells per axis and return per-cell sums
        (a cells axis after the image axis).

    Returns
    -------
    list of WindowSums, one per dilation, on the batch's device

    Notes
    -----
    Computed from lag products (:mod:`kernelbank.core.lags`), exactly: the same sums as
    the explicit stack of shifted windows, in float64, at the cost of about one product
    per pixel and distinct lag. Each image's mean is subtracted (in the image's dtype)
    before any product and its contribution added back in float64, so float32 images
    with a large offset lose no digits to cancellation.
    """
    dilations = list(dilations)
    _check(batch, radius, dilations, grid)
    n, ndim = batch.shape[0], batch.ndim - 1
    # the shift actually subtracted (rounded to the batch dtype) is the one added back
    shift = batch.reshape(n, -1).mean(1, dtype=torch.float64).to(batch.dtype)
    offset = shift.to(torch.float64)
    out = []
    for dilation in dilations:
        reach = radius * dilation
        if grid is None:
            cross, first = lag_window_sums(batch, radius, dilation, shift)
            valid = int(np.prod([s - 2 * reach for s in batch.shape[1:]]))
            count = torch.full((n,), valid, dtype=torch.int64, device=batch.device)
            c = offset
        else:
            cross, first, count = _cell_sums(batch, radius, dilation, grid, shift)
            c = offset[:, None]
        pixels = count.to(torch.float64)
        # Σ(y+c)(y'+c) = Σyy' + c(Σy + Σy') + c²n and Σ(y+c) = Σy + cn
        cross = cross + c[..., None, None] * (first[..., :, None] + first[..., None, :]) \
            + (c * c * pixels)[..., None, None]
        first = first + (c * pixels)[..., None]
        out.append(WindowSums(cross, first, count, radius, int(dilation), ndim, grid=grid))
    return out
