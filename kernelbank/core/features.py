r"""Features of an image from a kernel bank: how well does each kernel predict it?

For an image ``x`` (z-scored by default) and a bank kernel ``k`` at dilation ``δ``, the
prediction is ``p = k ⋆ x`` (cross-correlation with taps ``δ`` pixels apart, valid
pixels only). With the optimal scalar gain ``g = ⟨p, x⟩ / ⟨p, p⟩`` (the least-squares
fit of ``x ≈ g p``; 0 when ``p = 0``) the residual is ``e = x - g p``, and per kernel::

    mae     mean |e|
    mse     mean e²
    var     mean e² - (mean e)²
    gain    g
    energy_i_j   mean e² over cell (i, j) of a grid × grid partition of those pixels
                 (adaptive average pooling: any image size, cells differ by ≤ 1 pixel)

over the kernel's own valid pixels (those whose window at its dilation fits inside
the image), and per kernel ``win``: the fraction of pixels where this kernel has the
smallest ``|e|`` of the whole bank, counted on one common region (the pixels whose
window fits at the bank's largest reach) so every kernel competes on the same pixels.
With ``joint=True`` the coefficients of the least-squares fit of the image on the bank
kernels of each dilation, used together as a basis (``(PPᵀ + λnI)⁻¹ P x`` over that
dilation's valid pixels, as :func:`~kernelbank.core.fit.fit` with
``Basis.from_kernels`` computes them), are appended.

A bank of vector kernels (``bank.channels = C > 1``, images ``(N, C, *spatial)``) predicts
every channel ``c`` with its row ``k[c]`` over all input channels; each (kernel, output
channel) pair is then one "kernel" above, named ``<kernel>_c<c>``, whose target is
channel ``c``: the win counts compare the kernels on each channel's pixels, and the
joint coefficients fit each channel on its predictions by the kernels of one dilation.

:func:`ar_features` is the original ConvAR descriptor: the image's own fitted AR
coefficients at several dilations.

Notes
-----
Convolutions run in the images' dtype and device (one ``conv2d``/``conv3d`` per
dilation with all kernels of that dilation as output channels); reductions accumulate
in float64 and features are returned as float64.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bank import KernelBank
from .basis import Basis
from .channel_basis import ChannelBasis
from .fit import check_finite, fit, group_by_shape, normalize_images
from .solve import solve_normal_equations

__all__ = ["bank_features", "bank_feature_names", "ar_features", "ar_feature_names"]

# Elements of one (images × kernels × pixels) prediction block; bounds peak memory.
_BLOCK_ELEMENTS = 8 * 1024 * 1024
_PER_KERNEL = ("mae", "mse", "var", "gain")


def _cells(grid: int, ndim: int) -> list[str]:
    return ["_".join(map(str, c)) for c in itertools.product(range(grid), repeat=ndim)]


def bank_feature_names(bank: KernelBank, grid: int = 2, joint: bool = False) -> list[str]:
    """Column names of :func:`bank_features`, in order.

    Per kernel ``<name>_mae, _mse, _var, _gain, _energy_<i>_<j>…``, then
    ``<name>_win`` for every kernel, then ``joint_<name>`` when ``joint``; for vector
    kernels ``<name>`` is each of :attr:`KernelBank.output_names`.
    """
    per = [f"{n}_{s}" for n in bank.output_names
           for s in list(_PER_KERNEL) + [f"energy_{c}" for c in _cells(grid, bank.ndim)]]
    names = per + [f"{n}_win" for n in bank.output_names]
    if joint:
        names += [f"joint_{n}" for n in _joint_order(bank)[1]]
    return names


def _joint_order(bank: KernelBank) -> tuple[list[torch.Tensor], list[str]]:
    """Kernel indices of each dilation, and the output names in joint-column order."""
    groups = [torch.nonzero(bank.dilations == d).flatten()
              for d in sorted(set(bank.dilations.tolist()))]
    names, c = bank.output_names, bank.channels
    return groups, [names[i * c + k] for g in groups for i in g.tolist() for k in range(c)]


def _outputs(index: torch.Tensor, channels: int) -> torch.Tensor:
    """Indices of the (kernel, output channel) pairs of kernels ``index``, kernel-major."""
    return (index[:, None] * channels + torch.arange(channels, device=index.device)).flatten()


def _conv(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, weight, dilation=dilation)


def _crop(t: torch.Tensor, margin: int, size: tuple[int, ...]) -> torch.Tensor:
    """Spatial window ``[margin, margin + size)`` of a (n, c, *spatial) tensor."""
    return t[(slice(None), slice(None)) + tuple(slice(margin, margin + v) for v in size)]


def _features_same_size(batch: torch.Tensor, bank: KernelBank, grid: int,
                        joint_ridge: float | None) -> torch.Tensor:
    """(n, F) features of same-sized, already normalised images (n, [C,] *spatial)."""
    channels = bank.channels
    x = batch[:, None] if channels == 1 else batch
    n, spatial = batch.shape[0], tuple(x.shape[2:])
    r, reach, m = bank.radius, bank.max_reach, len(bank) * channels
    common = tuple(s - 2 * reach for s in spatial)
    # one output channel per (kernel, predicted channel), reading every input channel
    kernels = bank.kernels.to(batch.device, batch.dtype).reshape(
        (m, channels) + bank.kernels.shape[-len(spatial):])
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    per_kernel = torch.empty((n, m, len(_PER_KERNEL) + grid ** len(spatial)), dtype=torch.float64,
                             device=batch.device)
    abs_common = batch.new_empty((n, m) + common)
    joint = []
    for d in sorted(set(bank.dilations.tolist())):
        index = _outputs(torch.nonzero(bank.dilations == d).flatten().to(batch.device),
                         channels)
        own = tuple(s - 2 * r * d for s in spatial)
        pred = _conv(x, kernels[index], d)                         # (n, m_d, *own)
        target = _crop(x, r * d, own)
        if channels > 1:       # output (kernel, c) predicts channel c
            target = target.repeat((1, len(index) // channels) + (1,) * len(own))
        flat_p, flat_t = pred.flatten(2), target.flatten(2)
        if joint_ridge is not None:
            joint.append(torch.stack([
                _joint_coef(flat_p[:, c::channels], flat_t[:, c:c + 1], joint_ridge)
                for c in range(channels)], -1).flatten(1))
        pp = (flat_p * flat_p).sum(-1, dtype=torch.float64)
        pt = (flat_p * flat_t).sum(-1, dtype=torch.float64)
        gain = torch.where(pp > 0, pt / pp.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(pp))
        err = pred.mul_(-gain.to(pred.dtype).reshape(gain.shape + (1,) * len(own))).add_(target)
        flat_e = err.flatten(2)
        count = flat_e.shape[-1]
        sq = flat_e.square()
        mse = sq.sum(-1, dtype=torch.float64) / count
        mean = flat_e.sum(-1, dtype=torch.float64) / count
        stats = [flat_e.abs().sum(-1, dtype=torch.float64) / count, mse,
                 (mse - mean.square()).clamp_min(0), gain]
        energy = pool(sq.reshape(err.shape).to(torch.float64), grid).flatten(2)
        per_kernel[:, index] = torch.cat([torch.stack(stats, -1), energy], -1)
        abs_common[:, index] = _crop(err, reach - r * d, common).abs()
    # kernels compete per predicted channel
    winner = abs_common.reshape(n, m // channels, channels, -1).argmin(1).transpose(1, 2)
    wins = torch.zeros((n, m // channels, channels), dtype=torch.float64, device=batch.device)
    wins.scatter_add_(1, winner, torch.ones_like(winner, dtype=torch.float64))  # (n, pix, C)
    return torch.cat([per_kernel.flatten(1), wins.flatten(1) / winner.shape[1]] + joint, 1)


def _joint_coef(flat_p: torch.Tensor, flat_t: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares coefficients of the predictions used together as regressors."""
    count = torch.full((flat_p.shape[0],), flat_p.shape[-1], dtype=torch.int64,
                       device=flat_p.device)
    gram = torch.bmm(flat_p, flat_p.transpose(1, 2)).to(torch.float64)
    rhs = torch.bmm(flat_p, flat_t.transpose(1, 2)).squeeze(-1).to(torch.float64)
    return solve_normal_equations(gram, rhs, count, ridge)


def bank_features(images, bank: KernelBank, grid: int = 2, normalize: bool = True,
                  joint: bool = False, ridge: float = 1e-6) -> tuple[torch.Tensor, list[str]]:
    """Residual features of every image under every bank kernel.

    Parameters
    ----------
    images : array or tensor of shape (N, H, W) or (N, D, H, W), or a list of them
        Images of any (possibly different) sizes, each at least ``2 * bank.max_reach + 1``
        on every side. Same-sized images are processed together. For a bank of vector
        kernels, ``(N, C, *spatial)`` (or a list of ``(C, *spatial)`` images).
    bank : KernelBank
    grid : int, default=2
        Cells per axis of the residual-energy grid.
    normalize : bool, default=True
        Z-score each image (each channel) first (as :func:`~kernelbank.core.fit.fit` does).
    joint : bool, default=False
        Append the joint least-squares coefficients of the bank kernels of each dilation
        (ordered dilation by dilation).
    ridge : float, default=1e-6
        Ridge of the joint fit.

    Returns
    -------
    features : torch.Tensor of shape (N, F), float64, on the images' device
    names : list of str of length F
        See :func:`bank_feature_names`.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> bank = kb.KernelBank.gabor(radius=2, n_orientations=2, frequencies=(0.25,))
    >>> feats, names = kb.bank_features(np.random.default_rng(0).normal(size=(3, 16, 16)), bank)
    >>> feats.shape, names[:2], names[-1]
    (torch.Size([3, 18]), ['k00_gabor_d1_mae', 'k00_gabor_d1_mse'], 'k01_gabor_d1_win')
    """
    if not isinstance(bank, KernelBank):
        raise TypeError(f"bank must be a kernelbank.KernelBank, got {type(bank).__name__}")
    if not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
    channels = bank.channels
    if channels > 1:
        _check_channel_images(images, channels, bank.ndim)
    groups, dtype, device = group_by_shape(images, bank.ndim + int(channels > 1))
    need = 2 * bank.max_reach + 1
    lead = 1 + int(channels > 1)
    for indices, batch in groups:
        if min(batch.shape[lead:]) < need:
            raise ValueError(
                f"image {indices[0]} has shape {tuple(batch.shape[1:])}, smaller than the "
                f"{need}-pixel window of the bank (radius {bank.radius}, largest dilation "
                f"{int(bank.dilations.max())}); drop it or use a bank with smaller dilations")
    n_images = sum(len(indices) for indices, _ in groups)
    n_cols = len(bank) * channels * (len(_PER_KERNEL) + grid ** bank.ndim + 1 + int(joint))
    out = torch.empty((n_images, n_cols), dtype=torch.float64, device=device)
    for indices, batch in groups:
        shape = tuple(batch.shape[lead:])
        check_finite(batch, indices)
        if normalize:       # each channel on its own
            batch = normalize_images(batch.reshape((-1,) + shape)).reshape(batch.shape)
        per_image = len(bank) * channels * int(np.prod([s - 2 * bank.max_reach
                                                       for s in shape]))
        chunk = max(1, _BLOCK_ELEMENTS // max(1, per_image))
        for i0 in range(0, len(indices), chunk):
            rows = torch.tensor(indices[i0:i0 + chunk], device=device)
            out[rows] = _features_same_size(batch[i0:i0 + chunk], bank, grid,
                                            ridge if joint else None)
    return out, bank_feature_names(bank, grid, joint)


def _check_channel_images(images, channels: int, ndim: int) -> None:
    spatial = "D, H, W" if ndim == 3 else "H, W"
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != ndim + 2 or images.shape[1] != channels:
            raise ValueError(f"images must have shape (N, {channels}, {spatial}) for a bank of "
                             f"{channels}-channel kernels, got shape {tuple(images.shape)}")
        return
    for index, item in enumerate(images):
        if np.ndim(item) != ndim + 1 or np.shape(item)[0] != channels:
            raise ValueError(f"image {index} has shape {tuple(np.shape(item))}; a bank of "
                             f"{channels}-channel kernels needs ({channels}, {spatial}) images")


def ar_feature_names(basis: Basis | ChannelBasis, dilations: Sequence[int] = (1, 2, 3, 4, 5)
                     ) -> list[str]:
    """Column names of :func:`ar_features`: ``ar_d<dilation>_c<component>``, or
    ``ar_d<dilation>_ch<channel>_c<component>`` for a ChannelBasis (channel-major)."""
    width = max(2, len(str(basis.n_components - 1)))
    outputs = [""] if basis.channels == 1 else [f"_ch{c}" for c in range(basis.channels)]
    return [f"ar_d{d}{o}_c{j:0{width}d}" for d in dilations for o in outputs
            for j in range(basis.n_components)]


def ar_features(images, basis: Basis | ChannelBasis,
                dilations: Sequence[int] = (1, 2, 3, 4, 5), ridge: float = 1e-6,
                normalize: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The original ConvAR descriptor: fitted AR coefficients at several dilations.

    Parameters
    ----------
    images : array, tensor or list of images
    basis : Basis or ChannelBasis
        Its dilation is replaced by each of ``dilations``; a ChannelBasis takes
        ``(N, C, *spatial)`` images and gives each output channel's coefficients.
    dilations : sequence of int, default=(1, 2, 3, 4, 5)
    ridge : float, default=1e-6
    normalize : bool, default=True

    Returns
    -------
    features : torch.Tensor of shape (N, len(dilations) * [C *] m), float64
        Dilation-major: the m coefficients at the first dilation (of each output channel),
        then the next.
    names : list of str
    """
    dilations = [int(d) for d in dilations]
    if not dilations:
        raise ValueError("dilations must name at least one dilation")
    result = fit(images, basis, ridge=ridge, normalize=normalize, dilations=dilations)
    return result.coef.to(torch.float64).flatten(1), ar_feature_names(basis, dilations)
