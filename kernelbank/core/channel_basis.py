r"""Vector (multi-channel) AR bases: every channel predicted from the window of every channel.

For an image with ``C`` channels ``x_1 … x_C`` and a window of ``t = (2r+1)^d`` taps at
dilation ``δ``, a *vector* AR model predicts channel ``c`` at pixel ``p`` from the taps
``(c', o)``, ``x_{c'}(p + δ o)``, of all channels::

    x_c(p) ≈ Σ_{c'} Σ_o k_{c c'}(o) x_{c'}(p + δ o)

with the centre tap of the predicted channel itself masked, ``k_{c c}(0) = 0`` (the
other channels' centre taps are allowed: at one pixel the channels of a colour image
are strongly correlated, which is what makes colour informative), or, with
``centre_mask="all"``, every centre masked, ``k_{c c'}(0) = 0`` for all ``c'`` (a
purely spatial model of each channel from the neighbours of all channels).

Conditional-GMRF reading: in a multivariate Gaussian Markov random field with
precision ``Λ⁻¹ (I − K)`` (``K`` the convolution by the vector kernel, ``Λ`` the
diagonal of conditional variances ``σ_c²``), ``E[x_c(p) | every other value]`` is
``Σ k_{cc'}(o) x_{c'}(p + δo)`` over exactly the taps the own-centre mask allows, so the
least-squares kernel of a sample estimates ``k`` consistently. The residuals
``e = (I − K) x`` are uncorrelated with every value but their own pixel's, and at one
pixel their ``C × C`` covariance is ``σ_c²`` on the diagonal and ``−σ_c² k_{c'c}(0)`` off
it; see :mod:`kernelbank.datasets.vector_gmrf`.

Representation
--------------
Taps are numbered channel-major over the whole window, centres included: tap
``c·t + a`` is channel ``c`` at window offset ``a`` (C order), as in
:class:`~kernelbank.core.sums.WindowSums` with channels. A basis holds

* ``regressors`` (M, C·t): every distinct linear combination of taps that some output
  channel uses, plus the ``C`` centre taps (the predicted values) so that one
  ``M × M`` matrix ``Σ z zᵀ`` with ``z = regressors · taps`` holds every Gram, every
  right-hand side and every target product of the model;
* ``selection`` (C, m): the regressor rows output channel ``c`` combines (``m`` per
  output channel, the same for all);
* ``targets`` (C,): the regressor row that is channel ``c``'s centre.

Three kinds are built in, mirroring :class:`~kernelbank.core.basis.Basis`:

``full``
    Every allowed tap is its own coefficient: ``m = C t − 1`` (own centre masked) or
    ``C (t − 1)`` (all centres masked); the regressors are the ``C t`` one-hot taps, so
    ``Σ z zᵀ`` is the window sums' cross matrix itself.
``isotropic``
    Taps at equal distance share one coefficient *within each (output, input) channel
    pair*: per input channel its rings, plus (own centre masked) the centre of every
    other channel as a ring of distance 0; ``m = C · rings + C − 1`` (or ``C · rings``).
``custom``
    Per output channel, any ``m`` kernels on the ``C``-channel window
    (:meth:`ChannelBasis.from_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .basis import CENTRE_MASKS, _check_channels, _check_geometry

__all__ = ["ChannelBasis", "CENTRE_MASKS"]


def _all_taps(radius: int, ndim: int) -> np.ndarray:
    """Every offset of the window, centre included, C order, (t, ndim)."""
    axis = np.arange(-radius, radius + 1)
    return np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)


@dataclass(frozen=True, eq=False)
class ChannelBasis:
    """Kernels of a vector AR model on a dilated ``C``-channel window.

    Build one with :meth:`full`, :meth:`isotropic` or :meth:`from_kernels` (or
    ``Basis.full/isotropic(..., channels=C)``). The layout is described in the module
    docstring.

    Attributes
    ----------
    regressors : torch.Tensor of shape (M, channels * t), float64
        Distinct tap combinations used by some output channel, and the centre taps.
    selection : torch.Tensor of shape (channels, m), int64
        Rows of ``regressors`` combined by each output channel.
    targets : torch.Tensor of shape (channels,), int64
        Row of ``regressors`` holding each channel's centre tap (the predicted value).
    channels : int
    radius, dilation, ndim : int
        The window, as in :class:`~kernelbank.core.basis.Basis`.
    kind : {"full", "isotropic", "custom"}
    centre_mask : {"own", "all"}
        Which centre taps no output channel may use (see the module docstring).
    ring_distances : tuple of float or None
        Isotropic: the distance (in taps) of each ring of one channel pair, as in
        :class:`~kernelbank.core.basis.Basis`; another channel's centre is distance 0.

    Examples
    --------
    >>> import kernelbank as kb
    >>> basis = kb.Basis.full(radius=1, channels=3)
    >>> basis.n_components, basis.kernels.shape
    (26, torch.Size([3, 26, 3, 3, 3]))
    >>> kb.Basis.isotropic(radius=1, channels=3).n_components
    8
    """

    regressors: torch.Tensor
    selection: torch.Tensor
    targets: torch.Tensor
    channels: int
    radius: int
    dilation: int
    ndim: int
    kind: str
    centre_mask: str = "own"
    ring_distances: tuple[float, ...] | None = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def full(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int,
             centre_mask: str = "own") -> "ChannelBasis":
        """Every tap of every channel not masked is its own coefficient."""
        _check_geometry(radius, dilation, ndim)
        _check_channels(channels, centre_mask)
        t = (2 * radius + 1) ** ndim
        centres = np.arange(channels) * t + t // 2
        selection = []
        for c in range(channels):
            masked = centres if centre_mask == "all" else centres[c:c + 1]
            selection.append(np.setdiff1d(np.arange(channels * t), masked))
        return cls(torch.eye(channels * t, dtype=torch.float64),
                   torch.from_numpy(np.stack(selection)), torch.from_numpy(centres),
                   int(channels), int(radius), int(dilation), ndim, "full", centre_mask)

    @classmethod
    def isotropic(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int,
                  centre_mask: str = "own") -> "ChannelBasis":
        """Taps at equal distance share one coefficient within each channel pair.

        Components of output channel ``c`` are ordered input channel by input channel,
        and within one input channel by increasing distance (0 for another channel's
        centre tap, when allowed).
        """
        _check_geometry(radius, dilation, ndim)
        _check_channels(channels, centre_mask)
        taps = _all_taps(radius, ndim)
        t = len(taps)
        squared = (taps ** 2).sum(1)
        rings = np.unique(squared[squared > 0])
        # per input channel: its centre, then its rings
        per_channel = 1 + len(rings)
        rows = np.zeros((channels * per_channel, channels * t))
        for c in range(channels):
            block = rows[c * per_channel:(c + 1) * per_channel, c * t:(c + 1) * t]
            block[0, t // 2] = 1
            block[1:] = squared[None, :] == rings[:, None]
        selection = []
        for c in range(channels):
            chosen = []
            for source in range(channels):
                first = 1 if (centre_mask == "all" or source == c) else 0
                chosen.extend(source * per_channel + np.arange(first, per_channel))
            selection.append(chosen)
        return cls(torch.from_numpy(rows), torch.tensor(selection, dtype=torch.int64),
                   torch.arange(channels, dtype=torch.int64) * per_channel, int(channels),
                   int(radius), int(dilation), ndim, "isotropic", centre_mask,
                   tuple(float(np.sqrt(v)) for v in rings))

    @classmethod
    def from_kernels(cls, kernels: np.ndarray | torch.Tensor, dilation: int = 1, *,
                     centre_mask: str = "own", atol: float = 0.0) -> "ChannelBasis":
        """Use any kernels on the ``C``-channel window as a basis, per output channel.

        Parameters
        ----------
        kernels : array of shape (C, m, C, *window)
            ``kernels[c, j]`` is component ``j`` of output channel ``c``, a kernel over
            every input channel; ``window`` is odd and equal on every axis, 2-D or 3-D.
            Its masked centres (``kernels[c, j, c, centre]``, or every input channel's
            centre with ``centre_mask="all"``) must be zero within ``atol``.
        dilation : int, default=1
        centre_mask : {"own", "all"}, default="own"
        atol : float, default=0.0
        """
        k = torch.as_tensor(kernels).detach().to("cpu", torch.float64)
        if k.ndim not in (5, 6) or k.shape[0] != k.shape[2]:
            raise ValueError(f"kernels must have shape (C, m, C, *window) with a 2-D or 3-D "
                             f"window, got shape {tuple(k.shape)}")
        channels, m, window = k.shape[0], k.shape[1], k.shape[3:]
        if len(set(window)) != 1 or window[0] % 2 == 0:
            raise ValueError(f"kernel window must be odd and equal on every axis, got "
                             f"{tuple(window)}")
        if m == 0:
            raise ValueError("kernels is empty: a basis needs at least one kernel per channel")
        radius, ndim = window[0] // 2, len(window)
        _check_geometry(radius, dilation, ndim)
        _check_channels(channels, centre_mask)
        if not torch.isfinite(k).all():
            raise ValueError("kernels contain NaN or inf values")
        centre = k[(slice(None), slice(None), slice(None)) + (radius,) * ndim]   # (C, m, C)
        allowed = torch.ones(channels, channels, dtype=torch.bool)
        if centre_mask == "all":
            allowed[:] = False
        else:
            allowed.fill_diagonal_(False)
        bad = (centre.abs() > atol) & ~allowed[:, None, :]
        if bad.any():
            c, j, source = (int(v) for v in torch.nonzero(bad)[0])
            raise ValueError(
                f"kernel {j} of output channel {c} has weight {float(centre[c, j, source]):.3g} "
                f"at the centre of channel {source}, which centre_mask={centre_mask!r} masks; "
                f"set it to 0 before building the basis")
        t = int(np.prod(window))
        rows = k.reshape(channels * m, channels * t)
        centres = torch.zeros((channels, channels * t), dtype=torch.float64)
        centres[torch.arange(channels), torch.arange(channels) * t + t // 2] = 1
        selection = torch.arange(channels * m, dtype=torch.int64).reshape(channels, m)
        return cls(torch.cat([rows, centres]), selection,
                   channels * m + torch.arange(channels, dtype=torch.int64), int(channels),
                   int(radius), int(dilation), ndim, "custom", centre_mask)

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        """Components per output channel ``m``."""
        return int(self.selection.shape[1])

    @property
    def n_taps(self) -> int:
        """Spatial taps of the window, ``t = (2r+1)^ndim`` (centre included)."""
        return (2 * self.radius + 1) ** self.ndim

    @property
    def window_shape(self) -> tuple[int, ...]:
        """Spatial shape of one kernel, ``(2r+1,) * ndim``."""
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
        """The components as dense kernels, shape (C, m, C, *window_shape), float64."""
        dense = self.regressors[self.selection]                       # (C, m, C·t)
        return dense.reshape((self.channels, self.n_components, self.channels)
                             + self.window_shape)

    def with_dilation(self, dilation: int) -> "ChannelBasis":
        """The same kernels with another tap spacing."""
        _check_geometry(self.radius, dilation, self.ndim)
        return ChannelBasis(self.regressors, self.selection, self.targets, self.channels,
                            self.radius, int(dilation), self.ndim, self.kind,
                            self.centre_mask, self.ring_distances)

    def to_kernels(self, coef: torch.Tensor) -> torch.Tensor:
        """Turn coefficients into dense vector kernels.

        Parameters
        ----------
        coef : torch.Tensor of shape (..., C, m)

        Returns
        -------
        torch.Tensor of shape (..., C, C, *window_shape)
            ``kernels[..., c, c']``: the weights output channel ``c`` puts on input
            channel ``c'``; masked centres are zero. Dtype and device of ``coef``.
        """
        if coef.shape[-2:] != (self.channels, self.n_components):
            raise ValueError(f"coef must end in ({self.channels}, {self.n_components}) for "
                             f"{self}, got shape {tuple(coef.shape)}")
        dense = self.regressors[self.selection].to(coef.device, coef.dtype)   # (C, m, C·t)
        taps = torch.einsum("...cm,cmt->...ct", coef, dense)
        return taps.reshape(coef.shape[:-1] + (self.channels,) + self.window_shape)

    def describe(self) -> dict:
        """JSON-serialisable metadata (no tensors)."""
        return {"kind": self.kind, "radius": self.radius, "dilation": self.dilation,
                "ndim": self.ndim, "n_components": self.n_components,
                "channels": self.channels, "centre_mask": self.centre_mask}

    def __repr__(self) -> str:
        return (f"ChannelBasis(kind={self.kind!r}, channels={self.channels}, "
                f"radius={self.radius}, dilation={self.dilation}, ndim={self.ndim}, "
                f"n_components={self.n_components}, centre_mask={self.centre_mask!r})")
