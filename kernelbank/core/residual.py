r"""Descriptors of an image's AR residual: what a Gaussian AR model leaves unexplained.

For an image ``x`` (z-scored) and its own least-squares kernel ``k`` at dilation ``δ``,
the residual over the valid pixels ``V`` (whose whole dilated window is inside) is

    e(p) = x(p) - Σ_o k(o) x(p + δ o),      p ∈ V.

The coefficients and ``mean e²`` are all a Gaussian AR model keeps: second-order
statistics. Texture classes also differ in the *shape* of the residual distribution
and in the *spatial patterns* of residual signs, which need the pixels. Per image, with
``μ = mean e``, ``m_j = mean (e - μ)^j`` and ``σ = sqrt(mean e²)``:

``log_mse``, ``log_mae``
    ``log mean e²`` and ``log mean |e|`` (their difference measures the tail weight).
``skew``, ``kurt``
    ``m_3 / m_2^{3/2}`` and ``m_4 / m_2²`` (kurtosis 3 for a Gaussian residual).
``absq_<q>``
    Quantiles of ``|e| / σ``.
``lbp_<kind>_lag<L>_<bin>``, ``ltp_up|lo_<kind>_lag<L>_<bin>``
    Histograms of the local binary (ternary, threshold ``t σ``) patterns of ``e`` at
    lag ``L`` pixels (see :mod:`kernelbank.core.patterns`).
``cooc_ax<a>_lag<L>_<v…>``
    Co-occurrences of ``clip(round(e / (q σ)), -T, T)`` along each axis of the grid.
``img_lbp_<kind>_lag<L>_<bin>``
    With ``image_patterns``: the same histograms of the (z-scored) *image* itself (the
    residual of a zero kernel) at lag ``L δ``: what the own kernel explains (edges, spots,
    flat areas), where the residual's patterns describe what it leaves.

With a vector AR kernel (``C > 1`` channels) every descriptor is taken of each channel's
residual ``e_c = x_c − Σ_{c'} k_{cc'} ⋆ x_{c'}`` (columns ``c<c>_<name>``, channel-major;
then each channel's image patterns, ``img_c<c>_lbp_…``). Moments and histograms are
accumulated in float64. Sign patterns need a 2-D grid; 3-D volumes get the moments,
quantiles and co-occurrences only. :func:`describe_residuals` takes images and kernels
already in memory; :func:`kernelbank.fit` with ``descriptors=`` fits the kernels in the
same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from .images import _as_tuple
from .patterns import (_NRI_TABLE, _RI_TABLE, N_NRI, N_RI, binary_codes, cooccurrence_codes,
                       histograms, pattern_bins, quantise, ternary_codes)

__all__ = ["ResidualDescriptors", "describe_residuals", "residual_descriptor_names",
           "residuals"]
_PATTERN_BINS = {"ri": N_RI, "nri": N_NRI}
_KIND_INDEX = {"ri": 0, "nri": 1}
# bin of each 8-bit code in the ri and the nri histogram, rows in _KIND_INDEX order
_TABLES = np.stack([_RI_TABLE.numpy(), _NRI_TABLE.numpy()])


@dataclass(frozen=True)
class ResidualDescriptors:
    """Which descriptors of the residual to compute (see the module docstring).

    Parameters
    ----------
    moments : bool, default=True
        ``log_mse``, ``log_mae``, ``skew``, ``kurt``.
    quantiles : tuple of float, default=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
        Levels of the quantiles of ``|e| / σ``; empty for none.
    patterns : tuple of {"ri", "nri"}, default=("ri", "nri")
        LBP histograms to keep: rotation-invariant uniform (10 bins) and/or uniform
        non-rotation-invariant (59 bins); empty for none. 2-D only.
    ternary : float or None, default=None
        Threshold ``t`` (in units of σ) of local ternary patterns, histogrammed like
        ``patterns``; None for none. 2-D only.
    cooccurrence : int, default=2
        Length of the quantised co-occurrence tuples along each axis (2 = pairs,
        ``(2T+1)^2`` bins per axis); 0 for none.
    levels : int, default=2
        ``T``: quantised values are clipped to ``-T … T``.
    step : float, default=1.0
        Quantisation step in units of σ.
    lags : tuple of int, default=(1,)
        Distances (in residual pixels) of the pattern neighbours and tuple members.
    image_patterns : tuple of {"ri", "nri"}, default=()
        Sign-pattern histograms of the image itself (a zero kernel's residual) at lags
        ``lags × dilation``, columns ``img_lbp_<kind>_lag<L>_<bin>``; empty for none. 2-D
        only.
    """

    moments: bool = True
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    patterns: tuple[str, ...] = ("ri", "nri")
    ternary: float | None = None
    cooccurrence: int = 2
    levels: int = 2
    step: float = 1.0
    lags: tuple[int, ...] = field(default=(1,))
    image_patterns: tuple[str, ...] = ()

    def __post_init__(self):
        quantiles = tuple(float(q) for q in self.quantiles)
        if any(not 0 <= q <= 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {self.quantiles!r}")
        for name in ("patterns", "image_patterns"):
            if any(p not in _PATTERN_BINS for p in getattr(self, name)):
                raise ValueError(f"{name} must be a subset of {tuple(_PATTERN_BINS)}, got "
                                 f"{getattr(self, name)!r}")
        if self.ternary is not None and not self.ternary > 0:
            raise ValueError(f"ternary must be a threshold > 0 (in units of σ) or None, got "
                             f"{self.ternary!r}")
        if not isinstance(self.cooccurrence, (int, np.integer)) or self.cooccurrence < 0:
            raise ValueError(f"cooccurrence must be an integer >= 0, got {self.cooccurrence!r}")
        if not isinstance(self.levels, (int, np.integer)) or self.levels < 1:
            raise ValueError(f"levels must be an integer >= 1, got {self.levels!r}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0, got {self.step!r}")
        lags = _as_tuple(tuple(self.lags), 1, "lags")
        object.__setattr__(self, "quantiles", quantiles)
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "image_patterns", tuple(self.image_patterns))
        object.__setattr__(self, "lags", lags)

    @property
    def uses_patterns(self) -> bool:
        """Whether any 2-D-only sign-pattern histogram is asked for."""
        return bool(self.patterns or self.image_patterns) or self.ternary is not None

    def image_spec(self, dilation: int) -> ResidualDescriptors:
        """The image patterns at ``dilation`` as descriptors of a zero kernel's residual
        (lags in pixels: ``lags × dilation``)."""
        return ResidualDescriptors(moments=False, quantiles=(), patterns=self.image_patterns,
                                   cooccurrence=0, lags=tuple(g * dilation for g in self.lags))

    @property
    def max_lag(self) -> int:
        return max(self.lags)

    def names(self, ndim: int = 2) -> list[str]:
        """Column names for residuals of ``ndim`` dimensions, in output order."""
        self.check_ndim(ndim)
        names = ["log_mse", "log_mae", "skew", "kurt"] if self.moments else []
        names += [f"absq_{round(q * 1000):03d}" for q in self.quantiles]
        for lag in self.lags:
            for kind in self.patterns:
                names += [f"lbp_{kind}_lag{lag}_{b:02d}" for b in range(_PATTERN_BINS[kind])]
            if self.ternary is not None:
                for half in ("up", "lo"):
                    for kind in self.patterns or ("ri",):
                        names += [f"ltp_{half}_{kind}_lag{lag}_{b:02d}"
                                  for b in range(_PATTERN_BINS[kind])]
            if self.cooccurrence:
                values = [f"m{-v}" if v < 0 else f"p{v}"
                          for v in range(-self.levels, self.levels + 1)]
                for axis in range(ndim):
                    names += [f"cooc_ax{axis}_lag{lag}_" + "_".join(t)
                              for t in np.ndindex(*([len(values)] * self.cooccurrence))
                              for t in [[values[i] for i in t]]]
        return names + self.image_names()

    def image_names(self) -> list[str]:
        """Names of the image patterns (the last columns of :meth:`names`)."""
        return [f"img_lbp_{kind}_lag{lag}_{b:02d}" for lag in self.lags
                for kind in self.image_patterns for b in range(_PATTERN_BINS[kind])]

    def check_ndim(self, ndim: int) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"residuals must be 2-D images or 3-D volumes, got ndim={ndim}")
        if ndim == 3 and self.uses_patterns:
            raise ValueError(
                "local sign patterns (patterns/ternary) are defined on 2-D residuals only; for "
                "volumes use ResidualDescriptors(patterns=(), ternary=None) (moments, "
                "quantiles and co-occurrences work in 3-D)")


def residual_descriptor_names(descriptors: ResidualDescriptors | None = None,
                              ndim: int = 2, channels: int = 1) -> list[str]:
    """Column names of :func:`describe_residuals` (``descriptors`` default: all defaults);
    ``c<c>_<name>`` for each channel's residual when ``channels > 1``."""
    spec = descriptors or ResidualDescriptors()
    names = spec.names(ndim)
    if channels == 1:
        return names
    image = spec.image_names()
    own = names[:len(names) - len(image)]
    return ([f"c{c}_{name}" for c in range(channels) for name in own]
            + [f"img_c{c}_{name[4:]}" for c in range(channels) for name in image])


def _check_residual_args(batch: torch.Tensor, kernels: torch.Tensor, dilation: int
                         ) -> tuple[bool, int, int, int, tuple[int, ...]]:
    """Check the arguments of :func:`residuals`; return (vector, lead axes, spatial
    ndim, reach in pixels, valid shape)."""
    vector = kernels.ndim == batch.ndim + 1          # (n, C, C, *window) for (n, C, *spatial)
    lead = 2 if vector else 1
    ndim = batch.ndim - lead
    expected = (batch.shape[0],) + ((batch.shape[1],) * 2 if vector else ())
    if kernels.ndim != ndim + 2 * lead - 1 or tuple(kernels.shape[:2 * lead - 1]) != expected:
        shape = "(n, C, C, *window)" if vector else "(n, *window)"
        raise ValueError(f"kernels must have shape {shape} for images of shape "
                         f"{tuple(batch.shape)} and a {ndim}-D window, got "
                         f"{tuple(kernels.shape)}")
    window = tuple(kernels.shape[2 * lead - 1:])
    if len(set(window)) != 1 or window[0] % 2 == 0:
        raise ValueError(f"kernel window must be odd and equal on every axis, got {window}")
    if not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    radius = window[0] // 2
    reach = radius * int(dilation)
    valid = tuple(s - 2 * reach for s in batch.shape[lead:])
    if min(valid) < 1:
        raise ValueError(f"images of shape {tuple(batch.shape[lead:])} are smaller than the "
                         f"{2 * reach + 1}-pixel window of radius {radius} with dilation "
                         f"{dilation}")
    return vector, lead, ndim, reach, valid


def residuals(batch: torch.Tensor, kernels: torch.Tensor, dilation: int) -> torch.Tensor:
    """``e = x - k ⋆ x`` over the valid pixels of images ``(n, [C,] *spatial)``, each under
    its own kernel ``(n, *window)`` (with channels its vector kernel ``(n, C, C, *window)``,
    ``[c, c']``: weights of channel ``c'`` in the prediction of channel ``c``) at
    ``dilation``: (n, [C,] *(spatial - 2 r dilation)), the batch's dtype and device."""
    vector, lead, ndim, reach, valid = _check_residual_args(batch, kernels, dilation)
    k = kernels.to(batch.device, batch.dtype)
    # One grouped convolution (each image its own kernel as its own group) is ~10x
    # faster on a CPU than shift-and-add over the taps.
    conv = torch.nn.functional.conv2d if ndim == 2 else torch.nn.functional.conv3d
    n = batch.shape[0]
    if vector:            # group = image: its C output channels read its C input channels
        prediction = conv(batch.reshape((1, -1) + batch.shape[2:]),
                          k.reshape((-1,) + k.shape[2:]), dilation=int(dilation),
                          groups=n)[0].reshape((n, batch.shape[1]) + valid)
    else:
        prediction = conv(batch[None], k[:, None], dilation=int(dilation), groups=n)[0]
    target = batch[(slice(None),) * lead + tuple(slice(reach, reach + v) for v in valid)]
    return torch.sub(target, prediction, out=prediction)


def _quantiles(values: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Linear-interpolation quantiles of each row of (n, P), as ``torch.quantile``.

    ``torch.quantile`` refuses inputs of more than 2^24 elements; a sort does not. On a
    CPU NumPy's sort is ~20x faster than ``torch.sort`` (which also builds indices).
    """
    if values.device.type == "cpu":
        ordered = torch.from_numpy(np.sort(values.numpy(), axis=1))
    else:
        ordered = values.sort(1).values
    levels_t = torch.tensor(levels, dtype=torch.float64, device=values.device)
    position = levels_t * (values.shape[1] - 1)
    low = position.floor().long()
    high = position.ceil().long()
    frac = (position - low).to(ordered.dtype)
    return (ordered[:, low] + frac * (ordered[:, high] - ordered[:, low])).to(torch.float64)


def describe_residuals(batch: torch.Tensor, kernels: torch.Tensor, dilation: int,
                       descriptors: ResidualDescriptors | None = None, *,
                       engine: str = "auto") -> torch.Tensor:
    """Residual descriptors of same-sized images under their own kernels.

    Parameters
    ----------
    batch : torch.Tensor of shape (n, [C,] H, W) or (n, [C,] D, H, W), floating
        Images as they were modelled (z-scored if the kernels were fitted so).
    kernels : torch.Tensor of shape (n, *window) or (n, C, C, *window)
        Each image's kernel (e.g. ``kb.fit(...).kernels``), centre zero; a vector kernel
        for images with channels.
    dilation : int
        Tap spacing the kernels were fitted at.
    descriptors : ResidualDescriptors, optional
        Which descriptors; default ``ResidualDescriptors()``.
    engine : {"auto", "compiled", "torch"}, default="auto"
        ``"torch"``: whole-batch tensor operations on the batch's device (the reference,
        and the GPU path); ``"compiled"``: the fused CPU engine of
        :mod:`kernelbank.core._fused`; ``"auto"``: compiled for CPU tensors that require
        no gradients, torch elsewhere. The engines agree to summation order in float64;
        for float32 images the compiled one forms the residual in float64, so a pattern
        count can move by one pixel where a comparison is within rounding of a tie.

    Returns
    -------
    torch.Tensor of shape (n, F), float64, on the batch's device
        Columns named by :func:`residual_descriptor_names` (``descriptors``, ndim,
        channels).

    Examples
    --------
    >>> import torch, kernelbank as kb
    >>> from kernelbank.core.residual import describe_residuals, residual_descriptor_names
    >>> x = torch.randn(2, 32, 32, dtype=torch.float64)
    >>> fitted = kb.fit(x, kb.Basis.full(radius=1), normalize=False)
    >>> out = describe_residuals(x, fitted.kernels, 1)
    >>> out.shape[1] == len(residual_descriptor_names())
    True
    """
    spec = descriptors or ResidualDescriptors()
    if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
        raise TypeError(f"batch must be a floating torch.Tensor, got "
                        f"{type(batch).__name__} {getattr(batch, 'dtype', '')}")
    if engine not in ("auto", "compiled", "torch"):
        raise ValueError(f"engine must be 'auto', 'compiled' or 'torch', got {engine!r}")
    vector, lead, ndim, _, valid = _check_residual_args(batch, kernels, dilation)
    spec.check_ndim(ndim)
    image_lag = spec.max_lag * int(dilation) if spec.image_patterns else 0
    for shape, lag, at in ((valid, spec.max_lag, dilation), (batch.shape[lead:], image_lag, 1)):
        if min(shape) <= 2 * lag:
            raise ValueError(f"the residual at dilation {at} has shape {tuple(shape)}, too "
                             f"small for lag {lag}; use smaller lags or dilations")
    # autograd needs the torch engine (the moments are differentiable there)
    compiled = engine == "compiled" or (
        engine == "auto" and batch.device.type == "cpu"
        and not (batch.requires_grad or kernels.requires_grad))
    if compiled:
        if batch.device.type != "cpu":
            raise ValueError(f"the compiled engine runs on CPU tensors, got a batch on "
                             f"{batch.device}; use engine='torch' (or 'auto')")
        return _compiled_describe(batch, kernels, dilation, spec)
    if spec.image_patterns:        # the image's patterns: the same sweep, a zero kernel
        own = describe_residuals(batch, kernels, dilation,
                                 replace(spec, image_patterns=()), engine=engine)
        zero = kernels.new_zeros(kernels.shape[:kernels.ndim - ndim] + (1,) * ndim)
        image = describe_residuals(batch, zero, 1, spec.image_spec(int(dilation)),
                                   engine=engine)
        return torch.cat([own, image], 1)
    e = residuals(batch, kernels, dilation)
    if vector:                 # every channel's residual described as an image of its own
        n = e.shape[0]
        return _describe(e.reshape((-1,) + e.shape[2:]), spec, ndim).reshape(n, -1)
    return _describe(e, spec, ndim)


def _quantile_positions(levels: Sequence[float], size: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ranks and weights of :func:`_quantiles` for ``size`` values: the distinct ranks
    (sorted), each level's low and high rank as an index into them, and its weight."""
    position = torch.tensor(levels, dtype=torch.float64) * (size - 1)
    low = position.floor().long()
    high = position.ceil().long()
    frac = (position - low).numpy()
    ranks = np.unique(np.concatenate([low.numpy(), high.numpy()]))
    return (ranks, np.searchsorted(ranks, low.numpy()), np.searchsorted(ranks, high.numpy()),
            frac)


def _width(spec: ResidualDescriptors, ndim: int) -> int:
    """Columns of the residual's own descriptors (the image patterns come after)."""
    return len(spec.names(ndim)) - len(spec.image_names())


def _compiled_describe(batch: torch.Tensor, kernels: torch.Tensor, dilation: int,
                       spec: ResidualDescriptors) -> torch.Tensor:
    """:func:`describe_residuals` by the fused engine of :mod:`kernelbank.core._fused`
    (the image's own patterns in the same call: its sweep reads the same widened image)."""
    from . import _fused              # compiled (or loaded from its cache) on first use

    vector, lead, ndim, _, valid = _check_residual_args(batch, kernels, dilation)
    spatial = tuple(batch.shape[lead:])
    image_lags = [g * int(dilation) for g in spec.lags] if spec.image_patterns else []
    n = batch.shape[0]
    channels = batch.shape[1] if vector else 1
    window = tuple(kernels.shape[2 * lead - 1:])
    pad = (1,) * (3 - ndim)
    # (n, C, D, H, W) views; the kernel is rounded to the images' dtype as the torch
    # engine does, then widened (exactly) to float64
    x = batch.detach().reshape((n, channels) + pad + spatial).contiguous().numpy()
    k = kernels.detach().to("cpu", batch.dtype).to(torch.float64).reshape(
        (n, channels, channels) + pad + window).contiguous().numpy()
    size = int(np.prod(valid))
    ranks, low, high, frac = _quantile_positions(spec.quantiles, size) if spec.quantiles \
        else (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64),
              np.empty(0, np.float64))
    kinds = [np.array([_KIND_INDEX[kind] for kind in kinds], dtype=np.int64)
             for kinds in (spec.patterns, spec.patterns or ("ri",), spec.image_patterns)]
    out = np.zeros((n, channels, _width(spec, ndim)), dtype=np.float64)
    image_out = np.zeros((n, channels, len(spec.image_names())), dtype=np.float64)
    _fused.describe_batch(x, k, int(dilation), ndim == 2, spec.moments, ranks.astype(np.int64),
                          low.astype(np.int64), high.astype(np.int64), frac, kinds[0],
                          -1.0 if spec.ternary is None else float(spec.ternary), kinds[1],
                          _TABLES, int(spec.cooccurrence), int(spec.levels),
                          float(spec.step), np.asarray(spec.lags, dtype=np.int64), ndim,
                          kinds[2], np.asarray(image_lags, dtype=np.int64), out, image_out)
    found = np.concatenate([out.reshape(n, -1), image_out.reshape(n, -1)], 1)
    return torch.from_numpy(found).to(batch.device)


def _describe(e: torch.Tensor, spec: ResidualDescriptors, ndim: int) -> torch.Tensor:
    """Descriptors (n, F) of residual maps ``e`` (n, *valid)."""
    n = e.shape[0]
    flat = e.reshape(n, -1)
    mse = flat.square().sum(1, dtype=torch.float64) / flat.shape[1]
    sigma = mse.sqrt()
    # A perfectly predicted image (e = 0) gets finite values: σ is floored.
    safe = sigma.clamp_min(1e-12)
    parts = []
    if spec.moments:
        mae = flat.abs().sum(1, dtype=torch.float64) / flat.shape[1]
        centred = flat - flat.mean(1, dtype=torch.float64).to(flat.dtype)[:, None]
        square = centred.square()
        m2 = square.sum(1, dtype=torch.float64) / flat.shape[1]
        m3 = (square * centred).sum(1, dtype=torch.float64) / flat.shape[1]
        m4 = square.square_().sum(1, dtype=torch.float64) / flat.shape[1]
        var = m2.clamp_min(1e-24)
        parts.append(torch.stack([mse.clamp_min(1e-24).log(), mae.clamp_min(1e-12).log(),
                                  m3 / var.pow(1.5), m4 / var.square()], 1))
    if spec.quantiles:
        parts.append(_quantiles(flat.abs() / safe.to(flat.dtype)[:, None], spec.quantiles))
    quantised = None
    for lag in spec.lags:
        if spec.patterns:
            codes = binary_codes(e, lag)
            parts += [histograms(pattern_bins(codes, kind), _PATTERN_BINS[kind])
                      for kind in spec.patterns]
        if spec.ternary is not None:
            for codes in ternary_codes(e, lag, spec.ternary * sigma):
                parts += [histograms(pattern_bins(codes, kind), _PATTERN_BINS[kind])
                          for kind in spec.patterns or ("ri",)]
        if spec.cooccurrence:
            if quantised is None:
                quantised = quantise(e, spec.step * safe, spec.levels)
            n_bins = (2 * spec.levels + 1) ** spec.cooccurrence
            for axis in range(ndim):
                codes = cooccurrence_codes(quantised, spec.levels, spec.cooccurrence, lag, axis)
                parts.append(histograms(codes, n_bins))
    if not parts:
        return torch.empty((n, 0), dtype=torch.float64, device=e.device)
    return torch.cat(parts, 1)

