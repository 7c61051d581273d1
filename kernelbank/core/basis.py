r"""Window geometry and kernel bases of the (vector) AR model; grey is one channel.

A convolutional AR model predicts channel ``c`` of a ``C``-channel image at pixel ``p``
from the taps ``x_{c'}(p + δ o)`` of a window of ``t = (2r+1)^d`` offsets ``o`` spaced by
the dilation ``δ``, ``x_c(p) ≈ Σ_{c'} Σ_o k_{c c'}(o) x_{c'}(p + δ o)``, with the
predicted value itself masked, ``k_{c c}(0) = 0`` (``centre_mask="own"``: at one pixel
the channels of a colour image are strongly correlated, which makes colour
informative), or every centre masked (``"all"``). A *basis* is ``m`` kernels per output
channel; the AR kernel is ``k_c = Σ_j α_{cj} b_{cj}``, fitted by least squares
(:mod:`kernelbank.core.fit`). A grey image is ``C = 1``: one kernel with a zero centre.

Taps are numbered channel-major, centres included (tap ``c·t + a``, as in
:class:`~kernelbank.core.sums.WindowSums`). A basis holds ``regressors`` (M, C·t), every
distinct tap combination some output channel uses plus the ``C`` centre taps, so that one
``M × M`` matrix ``A = Σ z zᵀ`` (``z = regressors · taps``) holds every Gram, right-hand
side and target product; ``selection`` (C, m), the rows output channel ``c`` combines;
and ``targets`` (C,), the row of channel ``c``'s centre. With one channel the regressors
are the ``m`` kernels then the centre: ``A = [[G, h], [hᵀ, Σx²]]``.

Kinds: ``full`` (every allowed tap its own coefficient: ``m = C t − 1``, or ``C (t − 1)``
with every centre masked), ``isotropic`` (taps at equal Euclidean distance share one
coefficient within each channel pair; other channels' centres are rings of distance 0;
radius 4 in 2-D has 14 rings per channel) and ``custom`` (any kernels,
:meth:`Basis.from_kernels`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Basis", "CENTRE_MASKS", "check_window", "window_taps"]

CENTRE_MASKS = ("own", "all")


def window_taps(radius: int, ndim: int) -> np.ndarray:
    """All offsets of a ``(2r+1)^ndim`` window in C order, centre included, (t, ndim)."""
    axis = range(-radius, radius + 1)
    return np.array(list(itertools.product(axis, repeat=ndim)), dtype=np.int64)


def check_window(radius: int, dilation: int, ndim: int, channels: int = 1,
                 centre_mask: str = "own") -> None:
    """Raise a ValueError naming the first of these window parameters that is invalid."""
    for name, value in (("radius", radius), ("dilation", dilation), ("channels", channels)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim!r}")
    if centre_mask not in CENTRE_MASKS:
        raise ValueError(f"centre_mask must be one of {CENTRE_MASKS}, got {centre_mask!r}")


@dataclass(frozen=True, eq=False)
class Basis:
    """Kernels of a (vector) AR model on a dilated ``C``-channel window; ``C = 1`` by default.

    Build one with :meth:`full`, :meth:`isotropic` or :meth:`from_kernels`.

    Attributes
    ----------
    regressors, selection, targets : torch.Tensor
        ``(M, channels · t)`` float64, ``(channels, m)`` and ``(channels,)`` int64: the
        layout of the module docstring.
    channels, radius, dilation, ndim : int
        The window: ``(2 radius + 1)^ndim`` taps per channel, ``dilation`` pixels apart.
    kind : {"full", "isotropic", "custom"}
    centre_mask : {"own", "all"}
        Which centre taps no output channel may use (see the module docstring).
    ring_distances : tuple of float or None
        Isotropic: the distance (in taps) of each ring of one channel pair.

    Examples
    --------
    >>> import kernelbank as kb
    >>> kb.Basis.isotropic(radius=4).n_components
    14
    >>> kb.Basis.full(radius=1, dilation=2).window_shape
    (3, 3)
    >>> basis = kb.Basis.full(radius=1, channels=3)
    >>> basis.n_components, basis.kernels.shape
    (26, torch.Size([3, 26, 3, 3, 3]))
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
    def _one_channel(cls, weights: np.ndarray | torch.Tensor, radius: int, dilation: int,
                     ndim: int, kind: str, rings: tuple[float, ...] | None = None) -> "Basis":
        """One channel from weights ``(m, t − 1)`` over the non-centre taps: regressors are
        the kernels, then the centre (the augmented Gram's layout)."""
        weights = torch.as_tensor(weights, dtype=torch.float64)
        t = (2 * radius + 1) ** ndim
        m = weights.shape[0]
        rows = torch.zeros((m + 1, t), dtype=torch.float64)
        rows[:m, _non_centre(t)] = weights
        rows[m, t // 2] = 1
        return cls(rows, torch.arange(m, dtype=torch.int64)[None],
                   torch.tensor([m], dtype=torch.int64), 1, int(radius), int(dilation), ndim,
                   kind, "own", rings)

    @classmethod
    def full(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int = 1,
             centre_mask: str = "own") -> "Basis":
        """Every tap of every channel not masked is its own coefficient."""
        check_window(radius, dilation, ndim, channels, centre_mask)
        t = (2 * radius + 1) ** ndim
        if channels == 1:
            return cls._one_channel(np.eye(t - 1), radius, dilation, ndim, "full")
        centres = np.arange(channels) * t + t // 2
        selection = [np.setdiff1d(np.arange(channels * t),
                                  centres if centre_mask == "all" else centres[c:c + 1])
                     for c in range(channels)]
        return cls(torch.eye(channels * t, dtype=torch.float64),
                   torch.from_numpy(np.stack(selection)), torch.from_numpy(centres),
                   int(channels), int(radius), int(dilation), ndim, "full", centre_mask)

    @classmethod
    def isotropic(cls, radius: int, dilation: int = 1, ndim: int = 2, *, channels: int = 1,
                  centre_mask: str = "own") -> "Basis":
        """Taps at equal distance share one coefficient within each channel pair.

        Components are ordered by increasing distance; with channels, input channel by
        input channel (0 for another channel's centre tap, when allowed).
        """
        check_window(radius, dilation, ndim, channels, centre_mask)
        taps = window_taps(radius, ndim)
        t = len(taps)
        squared = (taps ** 2).sum(1)
        rings = np.unique(squared[squared > 0])
        distances = tuple(float(np.sqrt(v)) for v in rings)
        indicator = (squared[None, :] == rings[:, None]).astype(np.float64)
        if channels == 1:
            return cls._one_channel(indicator[:, _non_centre(t)], radius, dilation, ndim,
                                    "isotropic", distances)
        per_channel = 1 + len(rings)          # per input channel: its centre, then its rings
        rows = np.zeros((channels * per_channel, channels * t))
        for c in range(channels):
            block = rows[c * per_channel:(c + 1) * per_channel, c * t:(c + 1) * t]
            block[0, t // 2] = 1
            block[1:] = indicator
        selection = [[source * per_channel + j for source in range(channels)
                      for j in range(1 if (centre_mask == "all" or source == c) else 0,
                                     per_channel)] for c in range(channels)]
        return cls(torch.from_numpy(rows), torch.tensor(selection, dtype=torch.int64),
                   torch.arange(channels, dtype=torch.int64) * per_channel, int(channels),
                   int(radius), int(dilation), ndim, "isotropic", centre_mask, distances)

    @classmethod
    def from_kernels(cls, kernels: np.ndarray | torch.Tensor, dilation: int = 1, *,
                     centre_mask: str = "own", atol: float = 0.0) -> "Basis":
        """Use any stack of centre-masked kernels as a basis.

        Parameters
        ----------
        kernels : array of shape (m, *window) or (C, m, C, *window)
            One channel: ``m`` kernels on an odd, cubic 2-D or 3-D window with a zero
            centre. ``C`` channels: ``kernels[c, j]`` is component ``j`` of output channel
            ``c``, a kernel over every input channel, whose masked centres
            (``kernels[c, j, c, centre]``, or every channel's with ``centre_mask="all"``)
            are zero.
        dilation : int, default=1
        centre_mask : {"own", "all"}, default="own"
        atol : float, default=0.0
            Tolerance of the zero-centre check.
        """
        k = torch.as_tensor(kernels).detach().to("cpu", torch.float64)
        if k.ndim in (3, 4):            # one channel: (m, *window)
            k = k[None, :, None]
        if k.ndim not in (5, 6) or k.shape[0] != k.shape[2]:
            raise ValueError(f"kernels must have shape (m, *window) or (C, m, C, *window) with "
                             f"a 2-D or 3-D window, got shape {tuple(kernels.shape)}")
        channels, m, window = k.shape[0], k.shape[1], k.shape[3:]
        if len(set(window)) != 1 or window[0] % 2 == 0:
            raise ValueError(f"kernel window must be odd and equal on every axis, got "
                             f"{tuple(window)}")
        if m == 0:
            raise ValueError("kernels is empty: a basis needs at least one kernel")
        radius, ndim = window[0] // 2, len(window)
        check_window(radius, dilation, ndim, channels, centre_mask)
        if not torch.isfinite(k).all():
            raise ValueError("kernels contain NaN or inf values")
        centre = k[(slice(None),) * 3 + (radius,) * ndim]                   # (C, m, C)
        masked = torch.eye(channels, dtype=torch.bool) if centre_mask == "own" else \
            torch.ones(channels, channels, dtype=torch.bool)
        bad = (centre.abs() > atol) & masked[:, None, :]
        if bad.any():         # an AR kernel must not use the pixel it predicts
            c, j, source = (int(v) for v in torch.nonzero(bad)[0])
            raise ValueError(
                f"kernel {j} of output channel {c} has weight {float(centre[c, j, source]):.3g} "
                f"at the centre of channel {source}, which centre_mask={centre_mask!r} masks; "
                f"set it to 0 before building the basis")
        t = int(np.prod(window))
        if channels == 1:
            flat = k.reshape(m, t)
            return cls._one_channel(flat[:, _non_centre(t)], radius, dilation, ndim, "custom")
        centres = torch.zeros((channels, channels * t), dtype=torch.float64)
        centres[torch.arange(channels), torch.arange(channels) * t + t // 2] = 1
        return cls(torch.cat([k.reshape(channels * m, channels * t), centres]),
                   torch.arange(channels * m, dtype=torch.int64).reshape(channels, m),
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
    def offsets(self) -> torch.Tensor:
        """One channel: the non-centre window offsets, (t − 1, ndim) int64, C order."""
        taps = window_taps(self.radius, self.ndim)
        return torch.from_numpy(taps[_non_centre(len(taps))])

    @property
    def weights(self) -> torch.Tensor:
        """One channel: each kernel's weight at each of :attr:`offsets`, (m, t − 1)."""
        if self.channels != 1:
            raise ValueError(f"{self} has {self.channels} channels: its kernels are "
                             f"regressor rows over every channel (use .regressors)")
        return self.regressors[self.selection[0]][:, _non_centre(self.n_taps)]

    @property
    def kernels(self) -> torch.Tensor:
        """The components as dense kernels, float64: (m, *window) for one channel,
        (C, m, C, *window) for ``C`` channels."""
        dense = self.regressors[self.selection]                             # (C, m, C·t)
        if self.channels == 1:
            return dense[0].reshape((self.n_components,) + self.window_shape)
        return dense.reshape((self.channels, self.n_components, self.channels)
                             + self.window_shape)

    def with_dilation(self, dilation: int) -> "Basis":
        """The same kernels with another tap spacing."""
        check_window(self.radius, dilation, self.ndim)
        return Basis(self.regressors, self.selection, self.targets, self.channels,
                     self.radius, int(dilation), self.ndim, self.kind, self.centre_mask,
                     self.ring_distances)

    def to_kernels(self, coef: torch.Tensor) -> torch.Tensor:
        """Dense kernels ``(..., *window)`` of coefficients ``(..., m)``; with channels
        ``(..., C, C, *window)`` of ``(..., C, m)``, ``[..., c, c']`` the weights output
        channel ``c`` puts on input channel ``c'``. Dtype and device of ``coef``."""
        grey = self.channels == 1
        if grey:
            coef = coef[..., None, :]
        if coef.shape[-2:] != (self.channels, self.n_components):
            raise ValueError(f"coef must end in ({self.channels}, {self.n_components}) for "
                             f"{self}, got shape {tuple(coef.shape)}")
        dense = self.regressors[self.selection].to(coef.device, coef.dtype)   # (C, m, C·t)
        taps = torch.einsum("...cm,cmt->...ct", coef, dense)
        if grey:
            return taps[..., 0, :].reshape(coef.shape[:-2] + self.window_shape)
        return taps.reshape(coef.shape[:-1] + (self.channels,) + self.window_shape)

    def same_as(self, other: "Basis") -> bool:
        """Whether ``other`` is the same model: same window, kind and regressors."""
        return (isinstance(other, Basis) and self.describe() == other.describe()
                and torch.equal(self.regressors, other.regressors)
                and torch.equal(self.selection, other.selection)
                and torch.equal(self.targets, other.targets))

    def describe(self) -> dict:
        """JSON-serialisable metadata (no tensors); ``channels`` only when above 1."""
        meta = {"kind": self.kind, "radius": self.radius, "dilation": self.dilation,
                "ndim": self.ndim, "n_components": self.n_components}
        if self.channels > 1:
            meta.update(channels=self.channels, centre_mask=self.centre_mask)
        return meta

    def to_dict(self) -> dict:
        """Description and arrays (inverse: :meth:`from_dict`)."""
        return {**self.describe(), "ring_distances": list(self.ring_distances or []),
                "regressors": self.regressors.numpy().copy(),
                "selection": self.selection.numpy().copy(),
                "targets": self.targets.numpy().copy()}

    @classmethod
    def from_dict(cls, d: dict) -> "Basis":
        """Inverse of :meth:`to_dict`; also reads the one-channel ``offsets``/``weights``
        form written before bases had channels."""
        radius, dilation, ndim = int(d["radius"]), int(d["dilation"]), int(d["ndim"])
        channels, m = int(d.get("channels", 1)), int(d["n_components"])
        rings = tuple(float(v) for v in d.get("ring_distances", [])) or None
        if "regressors" not in d:
            weights = np.asarray(d["weights"], np.float64).reshape(m, -1)
            return cls._one_channel(weights.copy(), radius, dilation, ndim, str(d["kind"]),
                                    rings)
        t = (2 * radius + 1) ** ndim
        regressors = np.asarray(d["regressors"], np.float64).reshape(-1, channels * t)
        return cls(torch.from_numpy(regressors.copy()),
                   torch.from_numpy(np.array(d["selection"], np.int64).reshape(channels, m)),
                   torch.from_numpy(np.array(d["targets"], np.int64).reshape(channels)),
                   channels, radius, dilation, ndim, str(d["kind"]),
                   str(d.get("centre_mask", "own")), rings)

    def __repr__(self) -> str:
        extra = "" if self.channels == 1 else \
            f"channels={self.channels}, centre_mask={self.centre_mask!r}, "
        return (f"Basis(kind={self.kind!r}, {extra}radius={self.radius}, "
                f"dilation={self.dilation}, ndim={self.ndim}, n_components={self.n_components})")


def _non_centre(t: int) -> np.ndarray:
    """Indices of the non-centre taps of a window of ``t`` taps (C order)."""
    return np.delete(np.arange(t), t // 2)

