r"""Window sums: the sufficient statistics of every AR model on one window, per image.

For images of ``C`` channels, a window of ``t = (2r+1)^d`` offsets ``o_a`` at dilation
``δ`` (C order, centre included) and the valid pixels ``V`` (whose whole dilated window
lies inside the image), over the ``T = C t`` taps ``(c, o_a)``, channel-major::

    cross[c t + a, c' t + b] = Σ_{p∈V} x_c(p + o_a) x_{c'}(p + o_b)      (T × T)
    first[c t + a]           = Σ_{p∈V} x_c(p + o_a)                      (T)
    n_pixels                 = |V|

Every later quantity is algebra on these sums, with no pixels: the normal equations
``A = Z cross Zᵀ`` of any basis (:meth:`WindowSums.gram`), so the fitted coefficients
and residual covariance of any AR model; for a kernel ``k`` (a T-vector) predicting the
centre ``c``, ``⟨p, x⟩ = kᵀ cross[:, c]``, ``⟨p, p⟩ = kᵀ cross k`` and ``Σp = kᵀ first``
(:func:`kernelbank.core.features.bank_features_from_sums`); with the sums per cell of a
``grid`` partition of ``V`` (that of adaptive average pooling, as the pixel path of
:func:`kernelbank.bank_features`), the same per cell.

Sums are float64 whatever the image dtype (a float32 sum over many pixels loses digits
the solve of a nearly predictable image needs), computed exactly from lag products by
the private engines of :mod:`kernelbank.core._lags` (one product per pixel and distinct
lag instead of ``t²``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from numba import njit

from ._lags import lag_window_sums
from .basis import Basis, check_window, window_taps

__all__ = ["WindowSums", "window_sums", "window_taps", "cell_bounds"]


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
    cross : torch.Tensor of shape (n, [cells,] T, T), float64, or None
        None for packed sums (see ``upper``).
    first : torch.Tensor of shape (n, [cells,] T), float64
        ``T = channels · t`` taps, channel-major.
    n_pixels : torch.Tensor of shape (n, [cells]), int64
    radius, dilation, ndim : int
        The window.
    scale : int
        Pyramid factor of the images the sums were taken on (1 = original).
    grid : int or None
        Cells per axis when the sums are per cell (a ``cells = grid**ndim`` axis, C
        order over the cell grid), None for whole-image sums.
    channels : int
        Channels of the images (1: one-channel sums, ``T = t``).
    upper : torch.Tensor of shape (n, [cells,] T(T+1)/2), optional
        Packed sums (table rows read with ``packed=True``): ``cross``'s upper triangle
        (``numpy.triu_indices`` order) instead of ``cross``; see :meth:`bilinear`.
    """

    cross: torch.Tensor | None
    first: torch.Tensor
    n_pixels: torch.Tensor
    radius: int
    dilation: int
    ndim: int
    scale: int = 1
    grid: int | None = None
    channels: int = 1
    upper: torch.Tensor | None = None

    @property
    def spatial_taps(self) -> int:
        """Taps of one channel's window, ``t = (2r+1)^ndim``."""
        return (2 * self.radius + 1) ** self.ndim

    @property
    def n_taps(self) -> int:
        """Taps of the whole window, ``T = channels · t`` (the side of ``cross``)."""
        return self.channels * self.spatial_taps

    @property
    def centres(self) -> torch.Tensor:
        """Index of each channel's centre tap, shape (channels,), int64."""
        t = self.spatial_taps
        return torch.arange(self.channels, device=self.first.device) * t + t // 2

    def __len__(self) -> int:
        return int(self.n_pixels.shape[0])

    def tap_weights(self, basis: Basis) -> torch.Tensor:
        """The basis's regressor rows over this window's taps, (M, T) float64.

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
        if basis.channels != self.channels:
            raise ValueError(f"{basis} models {basis.channels} channel(s) but these window "
                             f"sums were taken on {self.channels}")
        return self.place_rows(basis.regressors, basis.radius)

    def place_rows(self, rows: torch.Tensor, radius: int) -> torch.Tensor:
        """Rows ``(k, channels · (2 radius + 1)^ndim)`` over the channel-major taps of a
        centred window of ``radius`` (at most the sums'), as rows (k, T) over these taps,
        float64 on the sums' device."""
        if not 1 <= radius <= self.radius:
            raise ValueError(f"rows of a radius-{radius} window do not fit in these sums' "
                             f"window of radius {self.radius}")
        index = self._inner_taps(radius)
        if rows.shape[-1] != len(index):
            raise ValueError(f"rows must have {len(index)} values (the taps of {self.channels} "
                             f"channel(s) at radius {radius}), got shape {tuple(rows.shape)}")
        placed = torch.zeros((rows.shape[0], self.n_taps), dtype=torch.float64)
        placed[:, torch.from_numpy(index)] = rows.detach().cpu().to(torch.float64)
        return placed.to(self.first.device)

    def _inner_taps(self, radius: int) -> np.ndarray:
        """Indices of the taps of the centred window of ``radius``, channel-major."""
        side = 2 * self.radius + 1
        inner = window_taps(radius, self.ndim) + self.radius
        spatial = np.ravel_multi_index(tuple(inner.T), (side,) * self.ndim)
        return (np.arange(self.channels)[:, None] * self.spatial_taps + spatial).reshape(-1)

    def gram(self, basis: Basis) -> torch.Tensor:
        """``A = Z cross Zᵀ`` of the basis's regressor rows ``Z`` (…, M, M), float64; picked,
        not multiplied, when every regressor is one tap (the full basis)."""
        if self.cross is None:
            return self.dense().gram(basis)
        z = self.tap_weights(basis)
        taps = _selected_taps(z)
        if taps is None:
            return z @ self.cross @ z.T
        if torch.equal(taps, torch.arange(self.n_taps, device=taps.device)):
            return self.cross
        return _submatrix(self.cross, taps)

    def basis_sums(self, basis: Basis
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One channel's normal equations ``G (…, m, m)``, ``h (…, m)``, ``Σx² (…)``, ``n``:
        the blocks of :meth:`gram`."""
        if basis.channels != 1:
            raise ValueError(f"basis_sums takes a one-channel basis, got {basis}; use .gram")
        a, m = self.gram(basis), basis.n_components
        return a[..., :m, :m], a[..., :m, m], a[..., m, m], self.n_pixels

    def cut_for(self, who: str, radius: int, ndim: int, channels: int) -> "WindowSums":
        """These sums at ``radius`` (same valid pixels, fewer taps) for ``who`` (named in
        the errors), whose window is ``ndim``-D, of ``channels`` channels."""
        if ndim != self.ndim:
            raise ValueError(f"{who} is {ndim}-D but the window sums are {self.ndim}-D")
        if channels != self.channels:
            raise ValueError(f"{who} predicts {channels} channel(s) but the window sums at "
                             f"dilation {self.dilation} are of {self.channels}")
        if radius > self.radius:
            raise ValueError(f"{who} has radius {radius} but the window sums at dilation "
                             f"{self.dilation} have radius {self.radius}: they hold no products "
                             f"of the outer taps. Compute the sums with a radius >= {radius}.")
        return self.restrict(radius) if radius < self.radius else self

    def restrict(self, radius: int) -> "WindowSums":
        """The sums of the inner ``(2 radius + 1)^d`` taps (same valid pixels)."""
        if not 1 <= radius <= self.radius:
            raise ValueError(f"radius must be in 1..{self.radius}, got {radius!r}")
        if self.cross is None:
            return self.dense().restrict(radius)
        index = torch.from_numpy(self._inner_taps(radius)).to(self.cross.device)
        cross = self.cross.index_select(-1, index).index_select(-2, index)
        return WindowSums(cross, self.first.index_select(-1, index), self.n_pixels, radius,
                          self.dilation, self.ndim, self.scale, self.grid, self.channels)


    def dense(self) -> "WindowSums":
        """These sums with ``cross`` built from ``upper`` (themselves when it is there)."""
        if self.cross is not None:
            return self
        t, upper = self.n_taps, np.triu_indices(self.n_taps)
        position = np.empty((t, t), dtype=np.int64)
        position[upper] = position[upper[::-1]] = np.arange(len(upper[0]))
        flat = take_columns(self.upper.reshape(-1, self.upper.shape[-1]),
                            torch.from_numpy(position.reshape(-1)))
        return replace(self, cross=flat.reshape(self.upper.shape[:-1] + (t, t)), upper=None)

    def bilinear(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``left[k]ᵀ cross right[k]`` per image (and cell), (n, [cells,] K) float64, for
        rows (K, T) over the taps. Packed sums need no ``cross``: the forms are linear in
        its upper triangle, one product (the feature stage's kernel features and scores)."""
        left, right = left.to(torch.float64), right.to(torch.float64)
        if self.cross is None:
            i, j = np.triu_indices(self.n_taps)
            weight = left[:, i] * right[:, j] + left[:, j] * right[:, i]
            weight[:, torch.from_numpy(i == j)] /= 2
            return self.upper @ weight.T.to(self.upper.device)
        return ((self.cross @ right.T) * left.T).sum(-2)


def _selected_taps(weights: torch.Tensor) -> torch.Tensor | None:
    """The tap of each row when every row of ``weights`` is one tap with weight 1."""
    ones = weights == 1
    if bool((ones.sum(1) == 1).all()) and int((weights != 0).sum()) == weights.shape[0]:
        return ones.to(torch.int64).argmax(1)
    return None


def _submatrix(matrix: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``matrix[..., taps, :][..., taps]``: one gather of each flattened matrix."""
    t, m = matrix.shape[-1], len(taps)
    flat = (taps[:, None] * t + taps[None, :]).reshape(-1)
    picked = take_columns(matrix.reshape(-1, t * t), flat)
    return picked.reshape(matrix.shape[:-2] + (m, m))


@njit(cache=True, nogil=True)
def _gather_columns(values, index, out):
    for i in range(values.shape[0]):
        row = values[i]
        dst = out[i]
        for j in range(index.shape[0]):
            dst[j] = row[index[j]]


def take_columns(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[:, index]`` of a 2-D tensor, as a new contiguous tensor.

    On the CPU in float64 a compiled loop: the tables' rows are a few hundred values, and
    torch's and NumPy's general gathers took 5-15x longer on them (2,832 rows of 351
    values into 25 × 25 matrices: 15-49 ms against 3 ms), most of the feature stage's time.
    """
    if values.device.type != "cpu" or values.dtype != torch.float64:
        return values.index_select(-1, index.to(values.device))
    values = values.contiguous()
    out = torch.empty((values.shape[0], len(index)), dtype=values.dtype)
    _gather_columns(values.numpy(), np.ascontiguousarray(index.cpu().numpy(), np.int64),
                    out.numpy())
    return out


# ---------------------------------------------------------------------------- computation
def _check(batch: torch.Tensor, radius: int, dilations: Sequence[int], grid: int | None,
           channels: int) -> None:
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
    check_window(radius, 1, 2, channels)
    if channels == 1 and batch.ndim not in (3, 4):
        raise ValueError(f"batch must have shape (n, H, W) or (n, D, H, W), got shape "
                         f"{tuple(batch.shape)}")
    if channels > 1 and (batch.ndim not in (4, 5) or batch.shape[1] != channels):
        raise ValueError(f"batch must have shape (n, {channels}, H, W) or (n, {channels}, D, "
                         f"H, W) for channels={channels}, got shape {tuple(batch.shape)}")
    if batch.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"batch must be float32 or float64, got {batch.dtype}")
    if batch.shape[0] == 0:
        raise ValueError("batch is empty: window sums need at least one image")
    if not len(dilations) or any(not isinstance(d, (int, np.integer)) or d < 1
                                 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of integers >= 1, "
                         f"got {dilations!r}")
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be an integer >= 1 or None, got {grid!r}")
    spatial = batch.shape[1 + int(channels > 1):]
    for dilation in dilations:
        reach = radius * dilation
        if min(spatial) < 2 * reach + 1:
            raise ValueError(f"images of shape {tuple(spatial)} are smaller than the "
                             f"{2 * reach + 1}-pixel window of radius {radius} with dilation "
                             f"{dilation}")
        if grid is not None and min(spatial) - 2 * reach < grid:
            raise ValueError(f"images of shape {tuple(spatial)} have fewer than "
                             f"{grid} valid pixels along some axis at dilation {dilation}; "
                             f"use a smaller grid")


def _cell_sums(batch: torch.Tensor, radius: int, dilation: int, grid: int,
               shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums (n, cells, …) of every cell: the window sums of the crop of ``(n, C, *spatial)``
    images whose valid pixels are the cell (crops of equal shape together)."""
    lead, channels = 2, batch.shape[1]
    n, ndim = batch.shape[0], batch.ndim - lead
    reach = radius * dilation
    bounds = [cell_bounds(s - 2 * reach, grid) for s in batch.shape[lead:]]
    cells = list(np.ndindex(*([grid] * ndim)))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, cell in enumerate(cells):
        shape = tuple(bounds[axis][i][1] - bounds[axis][i][0] for axis, i in enumerate(cell))
        by_shape.setdefault(shape, []).append(index)
    t = channels * (2 * radius + 1) ** ndim
    cross = batch.new_empty((n, len(cells), t, t), dtype=torch.float64)
    first = batch.new_empty((n, len(cells), t), dtype=torch.float64)
    count = torch.empty((n, len(cells)), dtype=torch.int64, device=batch.device)
    for shape, members in by_shape.items():
        crops = [batch[(slice(None),) * lead + tuple(
            slice(bounds[axis][i][0], bounds[axis][i][1] + 2 * reach)
            for axis, i in enumerate(cells[index]))] for index in members]
        repeat = (len(members),) + (1,) * (shift.ndim - 1)
        part_cross, part_first = lag_window_sums(torch.cat(crops), radius, dilation,
                                                 shift.repeat(repeat))
        where = torch.tensor(members, device=batch.device)
        cross[:, where] = part_cross.reshape(len(members), n, t, t).transpose(0, 1)
        first[:, where] = part_first.reshape(len(members), n, t).transpose(0, 1)
        count[:, where] = int(np.prod(shape))
    return cross, first, count


def window_sums(batch: torch.Tensor, radius: int, dilations: Sequence[int], *,
                grid: int | None = None, channels: int = 1) -> list[WindowSums]:
    """Window sums of same-sized images at each dilation, one WindowSums per dilation.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, *spatial) or (n, channels, *spatial)
        Images as they should be modelled (normalised if wanted), float32 or float64; the
        channel axis is there when ``channels > 1``.
    radius : int
    dilations : sequence of int
    grid : int, optional
        Also return per-cell sums of ``grid`` cells per axis (a cells axis after the images).
    channels : int, default=1

    Notes
    -----
    A channel whose mean exceeds its standard deviation has its mean subtracted (in the
    image's dtype) before any product and added back in float64, so float32 images with
    a large offset lose no digits to cancellation.
    """
    dilations = list(dilations)
    _check(batch, radius, dilations, grid, channels)
    return channel_window_sums(batch if channels > 1 else batch[:, None], radius, dilations,
                               grid)


def channel_window_sums(batch: torch.Tensor, radius: int, dilations: Sequence[int],
                        grid: int | None = None) -> list[WindowSums]:
    """:func:`window_sums` of ``(n, C, *spatial)`` images, any ``C`` (one is grey)."""
    n, channels, ndim = batch.shape[0], batch.shape[1], batch.ndim - 2
    t = (2 * radius + 1) ** ndim
    # Channels whose mean exceeds their spread (mean² > E[x²] − mean²) are shifted by their
    # mean: only there can the products' sums cancel digits. The shift actually subtracted
    # (rounded to the batch dtype) is the one added back.
    flat = batch.reshape(n, channels, -1)
    mean = flat.mean(2, dtype=torch.float64)
    square = torch.linalg.vector_norm(flat, dim=2, dtype=torch.float64).square() / flat.shape[2]
    shift = torch.where(2 * mean.square() > square, mean, torch.zeros_like(mean)).to(batch.dtype)
    offset = shift.to(torch.float64).repeat_interleave(t, dim=1)         # per tap, (n, T)
    out = []
    for dilation in dilations:
        reach = radius * dilation
        if grid is None:
            cross, first = lag_window_sums(batch, radius, dilation, shift)
            valid = int(np.prod([s - 2 * reach for s in batch.shape[2:]]))
            count = torch.full((n,), valid, dtype=torch.int64, device=batch.device)
            c = offset
        else:
            cross, first, count = _cell_sums(batch, radius, dilation, grid, shift)
            c = offset[:, None]
        if bool(offset.any()):
            pixels = count.to(torch.float64)[..., None]
            # Σ(y_a+c_a)(y_b+c_b) = Σy_a y_b + c_a h_b + h_a c_b with h = Σy + cn/2: one
            # product and its transpose, added as one symmetric term
            outer = c[..., :, None] * (first + c * pixels / 2)[..., None, :]
            cross += outer.add_(outer.transpose(-1, -2).clone())
            first = first + c * pixels
        out.append(WindowSums(cross, first, count, radius, int(dilation), ndim, grid=grid,
                              channels=channels))
    return out
