r"""One pass over the pixels: everything later stages need from an image, computed once.

For every image and every (pyramid scale, dilation) entry of ``scale_index``:

* the image's own AR kernel in the chosen basis (coefficients, residual MSE);
* the window sums of the full window of that radius (:class:`~kernelbank.core.sums.WindowSums`),
  from which any bank's features, the pooled class kernels and the likelihood follow
  with no pixels (:mod:`kernelbank.core.stats_features`);
* optionally the same sums per cell of a ``grid × grid`` partition (residual energy maps);
* optionally descriptors of the residual of the image's own kernel — the shape of its
  distribution and its local sign patterns (:mod:`kernelbank.core.residual`), which are
  higher-order and so cannot be recovered from the sums.

:func:`image_statistics` is what the Ray fit stage runs on each batch and what an
in-process user calls to get the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .basis import Basis
from .fit import (_as_tuple, check_finite, check_windows_fit, group_by_shape,
                  normalize_images, pyramid_level, residual_mse)
from .residual import ResidualDescriptors, describe_residuals
from .solve import solve_normal_equations
from .sums import WindowSums, window_sums

__all__ = ["ImageStatistics", "image_statistics", "default_descriptors"]

# Pixels normalised at a time (per chunk of images), as in kb.fit.
_CHUNK_ELEMENTS = 4 << 20


@dataclass
class ImageStatistics:
    """Result of :func:`image_statistics` (leading axis: images, in input order).

    Attributes
    ----------
    coef : torch.Tensor of shape (N, S, m), float64
        Own-kernel coefficients in ``basis`` for each entry of ``scale_index``.
    mse : torch.Tensor of shape (N, S), float64
        Residual mean squared error of the own kernel.
    sums : list of WindowSums, length S
        Whole-image window sums of radius ``basis.radius`` per entry.
    cell_sums : list of WindowSums or None
        The same per grid cell (when ``grid`` was given).
    descriptors : torch.Tensor of shape (N, S, F) or None
        Residual descriptors per entry (when asked for).
    descriptor_names : list of str
        The ``F`` names of one entry's descriptors.
    basis : Basis
        The basis at dilation 1.
    scale_index : list of (int, int)
        ``(scale, dilation)`` of each entry.
    """

    coef: torch.Tensor
    mse: torch.Tensor
    sums: list[WindowSums]
    cell_sums: list[WindowSums] | None
    descriptors: torch.Tensor | None
    descriptor_names: list[str]
    basis: Basis
    scale_index: list[tuple[int, int]]

    def __len__(self) -> int:
        return int(self.coef.shape[0])


def default_descriptors(ndim: int):
    """The residual descriptors of the one pass: every default for images; for volumes,
    all but the 2-D sign patterns."""
    return ResidualDescriptors() if ndim == 2 else ResidualDescriptors(patterns=())


def _cat_sums(parts: list[WindowSums], order: torch.Tensor) -> WindowSums:
    first = parts[0]
    return WindowSums(torch.cat([p.cross for p in parts])[order],
                      torch.cat([p.first for p in parts])[order],
                      torch.cat([p.n_pixels for p in parts])[order],
                      first.radius, first.dilation, first.ndim, first.scale, first.grid,
                      first.channels)


def image_statistics(images, basis: Basis, *, dilations: Sequence[int] | None = None,
                     scales: Sequence[int] | None = None, ridge: float = 1e-6,
                     normalize: bool = True, descriptors: bool = True,
                     grid: int | None = None) -> ImageStatistics:
    """Own kernels, window sums and residual descriptors of every image, in one pass.

    Parameters
    ----------
    images : array or tensor of shape (N, *spatial), or a list of images of any sizes
        Any real dtype (uint8 images are computed in float32).
    basis : Basis
        The basis of the own-kernel coefficients; the window sums cover its full window.
    dilations, scales : sequence of int, optional
        Entries are every (scale, dilation) pair, scale-major; default: the basis's
        dilation, scale 1.
    ridge : float, default=1e-6
    normalize : bool, default=True
        Z-score each image at each scale first.
    descriptors : bool, default=True
        Also describe each own-kernel residual (:mod:`kernelbank.core.residual`).
    grid : int, optional
        Also keep the window sums per cell of a ``grid``-per-axis partition.

    Returns
    -------
    ImageStatistics

    Raises
    ------
    ValueError
        As :func:`kernelbank.fit` (the message names the image index).
    """
    if not isinstance(basis, Basis):
        raise TypeError(f"basis must be a kernelbank.Basis, got {type(basis).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if grid is not None and (not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"grid must be a positive integer or None, got {grid!r}")
    dilation_list = _as_tuple(dilations, basis.dilation, "dilations")
    scale_list = _as_tuple(scales, 1, "scales")
    scale_index = [(s, d) for s in scale_list for d in dilation_list]
    groups, dtype, device = group_by_shape(images, basis.ndim)
    check_windows_fit(groups, basis, scale_index)
    spec = default_descriptors(basis.ndim) if descriptors else None
    names = spec.names(basis.ndim) if spec is not None else []

    coefs, mses, descs, order = [], [], [], []
    sums: list[list[WindowSums]] = [[] for _ in scale_index]
    cells: list[list[WindowSums]] = [[] for _ in scale_index]
    for indices, batch in groups:
        check_finite(batch, indices)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, batch[0].numel()))
        for start in range(0, len(batch), chunk):
            part = batch[start:start + chunk]
            entry_coef, entry_mse, entry_desc = [], [], []
            for s in scale_list:
                level = pyramid_level(part, s)
                if normalize:
                    level = normalize_images(level)
                level_sums = window_sums(level, basis.radius, dilation_list)
                level_cells = (window_sums(level, basis.radius, dilation_list, grid=grid)
                               if grid is not None else [None] * len(dilation_list))
                for d, ws, cs in zip(dilation_list, level_sums, level_cells):
                    entry = scale_index.index((s, d))
                    ws.scale = s
                    sums[entry].append(ws)
                    if cs is not None:
                        cs.scale = s
                        cells[entry].append(cs)
                    at_d = basis.with_dilation(d)
                    gram, rhs, sum_sq, n_pixels = ws.basis_sums(at_d)
                    coef = solve_normal_equations(gram, rhs, n_pixels, ridge)
                    entry_coef.append(coef)
                    entry_mse.append(residual_mse(gram, rhs, sum_sq, n_pixels, coef))
                    if spec is not None:
                        kernels = at_d.to_kernels(coef.to(level.dtype))
                        entry_desc.append(describe_residuals(level, kernels, d, spec))
            coefs.append(torch.stack(entry_coef, 1))
            mses.append(torch.stack(entry_mse, 1))
            if spec is not None:
                descs.append(torch.stack(entry_desc, 1).to(torch.float64))
        order.extend(indices)

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(device)
    return ImageStatistics(
        coef=torch.cat(coefs)[inverse], mse=torch.cat(mses)[inverse],
        sums=[_cat_sums(parts, inverse) for parts in sums],
        cell_sums=[_cat_sums(parts, inverse) for parts in cells] if grid is not None else None,
        descriptors=torch.cat(descs)[inverse] if descs else None,
        descriptor_names=names, basis=basis.with_dilation(dilation_list[0]),
        scale_index=scale_index)
