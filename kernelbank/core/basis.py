r"""Window geometry and kernel bases.

A convolutional AR model predicts a pixel from its neighbours inside a window of
``(2 r + 1)^d`` taps whose spacing is the dilation ``δ``; the centre tap is never used.
A *basis* is a set of ``m`` centre-masked kernels ``b_1 … b_m`` on that window. The AR
kernel of an image is a combination ``k = Σ_j α_j b_j``, and fitting it is a least-squares
problem on the ``m`` responses ``R_j = b_j * x`` (see :mod:`kernelbank.core.fit`).

Internally a basis is stored sparsely, as what the fit needs:

* ``offsets`` of shape ``(n_taps, ndim)``: the non-centre window positions any basis
  kernel touches, in window units (multiply by the dilation for pixels);
* ``weights`` of shape ``(m, n_taps)``: kernel ``j`` has weight ``weights[j, t]`` at
  ``offsets[t]``.

Three kinds are built in:

``full``
    One-hot offsets: every non-centre tap is its own coefficient, ``m = (2r+1)^d - 1``.
``isotropic``
    All taps at the same Euclidean distance from the centre share one coefficient
    (an indicator of each distance ring), so the kernel is invariant to the
    rotations and reflections of the grid. The coefficient is the weight of every tap
    in its ring.
``custom``
    Any stack of centre-masked kernels, e.g. a kernel bank used as a basis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .channel_basis import ChannelBasis

__all__ = ["Basis"]


def _window_offsets(radius: int, ndim: int) -> np.ndarray:
    """All non-centre offsets of a ``(2r+1)^ndim`` window in C order, shape (n, ndim)."""
    axis = range(-radius, radius + 1)
    grid = np.array(list(itertools.product(axis, repeat=ndim)), dtype=np.int64)
    return grid[np.any(grid != 0, axis=1)]


CENTRE_MASKS = ("own", "all")


def _check_channels(channels: int, centre_mask: str) -> None:
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    if centre_mask not in CENTRE_MASKS:
        raise ValueError(f"centre_mask must be one of {CENTRE_MASKS}, got {centre_mask!r}")


def _check_geometry(radius: int, dilation: int, ndim: int) -> None:
    if not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    if not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim!r}")


@dataclass(frozen=True, eq=False)
class Basis:
    """A set of centre-masked kernels on a dilated window.

    Build one with :meth:`full`, :meth:`isotropic` or :meth:`from_kernels`.

    Attributes
    ----------
    offsets : torch.Tensor of shape (n_taps, ndim), int64
        Window positions (in taps, not pixels) that the basis kernels touch.
    weights : torch.Tensor of shape (n_components, n_taps), float64
        Weight of each basis kernel at each offset.
    radius : int
        Half-width of the window in taps.
    dilation : int
        Pixel spacing between taps.
    ndim : int
        2 for images, 3 for volumes.
    kind : {"full", "isotropic", "custom"}
        How the basis was built.
    ring_distances : tuple of float or None
        For an isotropic basis, the distance (in taps) of each component's ring.

    Examples
    --------
    >>> import kernelbank as kb
    >>> kb.Basis.isotropic(radius=4).n_components
    14
    >>> kb.Basis.full(radius=1, dilation=2).window_shape
    (3, 3)
    """

    offsets: torch.Tensor
    weights: torch.Tensor
    radius: int
    dilation: int
    ndim: int
    kind: str
    ring_distances: tuple[float, ...] | None = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def full(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int = 1,
             centre_mask: str = "own") -> "Basis | ChannelBasis":
        """Every non-centre tap of the window is its own coefficient.

        With ``channels > 1``, the vector AR basis of that many channels
        (:meth:`ChannelBasis.full <kernelbank.core.channel_basis.ChannelBasis.full>`):
        ``centre_mask="own"`` masks only the predicted channel's centre tap, ``"all"``
        every channel's. One channel gives this class, whatever ``centre_mask``.
        """
        _check_channels(channels, centre_mask)
        if channels != 1:
            from .channel_basis import ChannelBasis
            return ChannelBasis.full(radius, dilation, ndim, channels=channels,
                                     centre_mask=centre_mask)
        _check_geometry(radius, dilation, ndim)
        offsets = _window_offsets(radius, ndim)
        weights = np.eye(len(offsets))
        return cls(torch.from_numpy(offsets), torch.from_numpy(weights), int(radius),
                   int(dilation), ndim, "full")

    @classmethod
    def isotropic(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int = 1,
                  centre_mask: str = "own") -> "Basis | ChannelBasis":
        """Taps at equal distance from the centre share one coefficient.

        Components are ordered by increasing distance; for ``radius=4`` in 2-D there
        are 14 rings (squared distances 1, 2, 4, 5, 8, 9, 10, 13, 16, 17, 18, 20, 25, 32).
        With ``channels > 1``, rings are tied within each (output, input) channel pair
        (:meth:`ChannelBasis.isotropic <kernelbank.core.channel_basis.ChannelBasis.isotropic>`).
        """
        _check_channels(channels, centre_mask)
        if channels != 1:
            from .channel_basis import ChannelBasis
            return ChannelBasis.isotropic(radius, dilation, ndim, channels=channels,
                                          centre_mask=centre_mask)
        _check_geometry(radius, dilation, ndim)
        offsets = _window_offsets(radius, ndim)
        squared = (offsets**2).sum(axis=1)
        rings = np.unique(squared)
        weights = (squared[None, :] == rings[:, None]).astype(np.float64)
        return cls(torch.from_numpy(offsets), torch.from_numpy(weights), int(radius),
                   int(dilation), ndim, "isotropic",
                   tuple(float(np.sqrt(s)) for s in rings))

    @classmethod
    def from_kernels(cls, kernels: np.ndarray | torch.Tensor, dilation: int = 1,
                     *, atol: float = 0.0) -> "Basis":
        """Use any stack of centre-masked kernels as a basis.

        Parameters
        ----------
        kernels : array of shape (m, 2r+1, 2r+1) or (m, 2r+1, 2r+1, 2r+1)
            Kernels on an odd, cubic window. Their centre weight must be zero
            (within ``atol``).
        dilation : int, default=1
            Pixel spacing between taps.
        atol : float, default=0.0
            Tolerance for the zero-centre check.
        """
        k = torch.as_tensor(kernels).detach().to("cpu", torch.float64)
        if k.ndim not in (3, 4):
            raise ValueError(
                f"kernels must have shape (m, *window) with a 2-D or 3-D window, got shape "
                f"{tuple(k.shape)}")
        window = k.shape[1:]
        if len(set(window)) != 1 or window[0] % 2 == 0:
            raise ValueError(f"kernel window must be odd and equal on every axis, got {tuple(window)}")
        if k.shape[0] == 0:
            raise ValueError("kernels is empty: a basis needs at least one kernel")
        radius, ndim = window[0] // 2, k.ndim - 1
        _check_geometry(radius, dilation, ndim)
        centre = k[(slice(None),) + (radius,) * ndim]
        bad = torch.nonzero(centre.abs() > atol).flatten().tolist()
        if bad:
            raise ValueError(
                f"basis kernels {bad[:10]} have a non-zero centre weight "
                f"(e.g. {float(centre[bad[0]]):.3g}); an AR kernel must not use the pixel it "
                f"predicts. Set the centre to 0 before building the basis.")
        if not torch.isfinite(k).all():
            raise ValueError("kernels contain NaN or inf values")
        offsets = _window_offsets(radius, ndim)
        flat = k.reshape(k.shape[0], -1)
        index = np.ravel_multi_index(tuple((offsets + radius).T), window)
        return cls(torch.from_numpy(offsets), flat[:, torch.from_numpy(index)], int(radius),
                   int(dilation), ndim, "custom")

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        """Number of basis kernels ``m``."""
        return int(self.weights.shape[0])

    @property
    def channels(self) -> int:
        """Channels of the images this basis models: always 1 (see ChannelBasis)."""
        return 1

    @property
    def window_shape(self) -> tuple[int, ...]:
        """Shape of one kernel, ``(2r+1,) * ndim``."""
        return (2 * self.radius + 1,) * self.ndim

    @property
    def reach(self) -> int:
        """Pixels between the centre and the farthest tap: ``radius * dilation``."""
        return self.radius * self.dilation

    @property
    def min_image_size(self) -> int:
        """Smallest side an image needs for at least one fully-inside window."""
        return 2 * self.reach + 1

    @property
    def kernels(self) -> torch.Tensor:
        """The basis kernels as dense windows, shape (m, *window_shape), float64."""
        return self.to_kernels(torch.eye(self.n_components, dtype=torch.float64))

    def with_dilation(self, dilation: int) -> "Basis":
        """The same kernels with another tap spacing."""
        _check_geometry(self.radius, dilation, self.ndim)
        return Basis(self.offsets, self.weights, self.radius, int(dilation), self.ndim,
                     self.kind, self.ring_distances)

    def to_kernels(self, coef: torch.Tensor) -> torch.Tensor:
        """Turn coefficients into dense kernels.

        Parameters
        ----------
        coef : torch.Tensor of shape (..., m)

        Returns
        -------
        torch.Tensor of shape (..., *window_shape)
            ``Σ_j coef[..., j] b_j``, with a zero centre; dtype and device of ``coef``.
        """
        taps = coef @ self.weights.to(coef.device, coef.dtype)
        dense = taps.new_zeros(coef.shape[:-1] + (int(np.prod(self.window_shape)),))
        index = np.ravel_multi_index(tuple((self.offsets.numpy() + self.radius).T),
                                     self.window_shape)
        dense[..., torch.from_numpy(index).to(coef.device)] = taps
        return dense.reshape(coef.shape[:-1] + self.window_shape)

    def describe(self) -> dict:
        """JSON-serialisable metadata (no tensors)."""
        return {"kind": self.kind, "radius": self.radius, "dilation": self.dilation,
                "ndim": self.ndim, "n_components": self.n_components}

    def __repr__(self) -> str:
        return (f"Basis(kind={self.kind!r}, radius={self.radius}, dilation={self.dilation}, "
                f"ndim={self.ndim}, n_components={self.n_components})")

