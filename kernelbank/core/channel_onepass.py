r"""One pass over the pixels of multi-channel images: :func:`image_statistics` with channels.

For images of ``C`` channels and a :class:`~kernelbank.core.channel_basis.ChannelBasis`,
per image and per (pyramid scale, dilation) entry of ``scale_index``:

* the window sums with channels of the full ``C``-channel window
  (:func:`~kernelbank.core.sums.window_sums` with ``channels=C``: ``T = C (2r+1)^d`` taps,
  channel-major), from which every later stage's algebra follows;
* the image's own vector kernel, solved on ``A = Z cross Zᵀ`` of those sums
  (:mod:`kernelbank.core.channel_fit`): ``C × m`` coefficients (one row per output
  channel), the ``C × C`` residual covariance ``Σ = U A Uᵀ / n`` and its diagonal, each
  channel's residual MSE;
* optionally the residual descriptors of each channel's residual under that vector
  kernel (:func:`~kernelbank.core.residual.describe_residuals`), channel-major.

The whole batch goes through each step at once (one window-sums call, one batched
solve, one grouped convolution for the residuals): no loop over images or channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .channel_basis import ChannelBasis
from .channel_fit import _check_images, _gram_from_sums, _result
from .fit import (_as_tuple, check_finite, check_windows_fit, group_by_shape,
                  normalize_images, pyramid_level)
from .onepass import _cat_sums, default_descriptors
from .residual import describe_residuals, residual_descriptor_names
from .sums import WindowSums, window_sums

__all__ = ["ChannelImageStatistics", "channel_image_statistics"]

# Pixels (all channels) normalised at a time per chunk of images, as in image_statistics.
_CHUNK_ELEMENTS = 4 << 20


@dataclass
class ChannelImageStatistics:
    """Result of :func:`channel_image_statistics` (leading axis: images, in input order).

    Attributes
    ----------
    coef : torch.Tensor of shape (N, S, C, m), float64
        Own vector-kernel coefficients, one row per output channel.
    mse : torch.Tensor of shape (N, S, C), float64
        Residual mean square of each channel (the covariance's diagonal).
    covariance : torch.Tensor of shape (N, S, C, C), float64
        Residual covariance of the channels under the own kernel.
    sums : list of WindowSums, length S
        Whole-image window sums with ``C`` channels, radius ``basis.radius``.
    cell_sums : list of WindowSums or None
        The same per grid cell (when ``grid`` was given).
    descriptors : torch.Tensor of shape (N, S, C·F) or None
        Residual descriptors of each channel, channel-major.
    descriptor_names : list of str
        The ``C·F`` names of one entry's descriptors (``c<c>_<name>``).
    basis : ChannelBasis
        The basis at the first dilation.
    scale_index : list of (int, int)
    """

    coef: torch.Tensor
    mse: torch.Tensor
    covariance: torch.Tensor
    sums: list[WindowSums]
    cell_sums: list[WindowSums] | None
    descriptors: torch.Tensor | None
    descriptor_names: list[str]
    basis: ChannelBasis
    scale_index: list[tuple[int, int]]

    def __len__(self) -> int:
        return int(self.coef.shape[0])


def channel_image_statistics(images, basis: ChannelBasis, *,
                             dilations: Sequence[int] | None = None,
                             scales: Sequence[int] | None = None, ridge: float = 1e-6,
                             normalize: bool = True, descriptors: bool = True,
                             grid: int | None = None) -> ChannelImageStatistics:
    """Own vector kernels, window sums and residual descriptors of every image, in one pass.

    Parameters
    ----------
    images : array or tensor of shape (N, C, *spatial), or a list of (C, *spatial) images
        ``C = basis.channels``; any real dtype (integers are computed in float32).
    basis : ChannelBasis
    dilations, scales, ridge, normalize, descriptors, grid
        As in :func:`kernelbank.core.onepass.image_statistics`; ``normalize`` z-scores each
        channel on its own (as :func:`~kernelbank.core.channel_fit.fit_channels`).

    Returns
    -------
    ChannelImageStatistics

    Raises
    ------
    ValueError
        For a wrong channel count, NaN/inf values or an image smaller than the window
        (the message names the image index).

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> from kernelbank.core.channel_onepass import channel_image_statistics
    >>> images = np.random.default_rng(0).normal(size=(2, 3, 24, 24))
    >>> stats = channel_image_statistics(images, kb.Basis.full(1, channels=3),
    ...                                  descriptors=False)
    >>> tuple(stats.coef.shape), tuple(stats.covariance.shape)
    ((2, 1, 3, 26), (2, 1, 3, 3))
    """
    if not isinstance(basis, ChannelBasis):
        raise TypeError(f"basis must be a ChannelBasis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be a positive integer or None, got {grid!r}")
    _check_images(images, basis)
    channels = basis.channels
    dilation_list = _as_tuple(dilations, basis.dilation, "dilations")
    scale_list = _as_tuple(scales, 1, "scales")
    scale_index = [(s, d) for s in scale_list for d in dilation_list]
    groups, _, device = group_by_shape(images, basis.ndim + 1)
    check_windows_fit(groups, basis, scale_index, spatial_from=2)
    spec = default_descriptors(basis.ndim) if descriptors else None
    names = residual_descriptor_names(spec, basis.ndim, channels) if spec is not None else []

    per_key: dict[str, list[torch.Tensor]] = {}
    sums: list[list[WindowSums]] = [[] for _ in scale_index]
    cells: list[list[WindowSums]] = [[] for _ in scale_index]
    order: list[int] = []
    for indices, batch in groups:
        check_finite(batch, indices)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, batch[0].numel()))
        for start in range(0, len(batch), chunk):
            part = batch[start:start + chunk]
            n = len(part)
            entries: list[dict[str, torch.Tensor]] = []
            for s in scale_list:
                # channels as images: the pyramid and the z-score act on each channel
                level = pyramid_level(part.reshape((n * channels,) + part.shape[2:]), s)
                if normalize:
                    level = normalize_images(level)
                level = level.reshape((n, channels) + level.shape[1:])
                level_sums = window_sums(level, basis.radius, dilation_list, channels=channels)
                level_cells = (window_sums(level, basis.radius, dilation_list, grid=grid,
                                           channels=channels)
                               if grid is not None else [None] * len(dilation_list))
                for d, ws, cs in zip(dilation_list, level_sums, level_cells):
                    entry = scale_index.index((s, d))
                    ws.scale = s
                    sums[entry].append(ws)
                    if cs is not None:
                        cs.scale = s
                        cells[entry].append(cs)
                    at_d = basis.with_dilation(d)
                    out = _result(_gram_from_sums(ws, at_d), ws.n_pixels, at_d, ridge)
                    row = {"coef": out["coef"], "covariance": out["covariance"],
                           "mse": out["mse"]}
                    if spec is not None:
                        kernels = at_d.to_kernels(out["coef"].to(level.dtype))
                        row["descriptors"] = describe_residuals(level, kernels, d, spec) \
                            .to(torch.float64)
                    entries.append(row)
            for key in entries[0]:
                per_key.setdefault(key, []).append(torch.stack([e[key] for e in entries], 1))
        order.extend(indices)

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(device)
    merged = {k: torch.cat(v)[inverse.to(v[0].device)] for k, v in per_key.items()}
    return ChannelImageStatistics(
        coef=merged["coef"], mse=merged["mse"], covariance=merged["covariance"],
        sums=[_cat_sums(parts, inverse) for parts in sums],
        cell_sums=[_cat_sums(parts, inverse) for parts in cells] if grid is not None else None,
        descriptors=merged.get("descriptors"), descriptor_names=names,
        basis=basis.with_dilation(dilation_list[0]), scale_index=scale_index)
