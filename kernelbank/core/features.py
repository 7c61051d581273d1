r"""Features of an image from a kernel bank: how well does each kernel predict it?

For an image ``x`` (z-scored by default) and a bank kernel ``k`` at dilation ``δ``, the
prediction is ``p = k ⋆ x`` over the kernel's own valid pixels (one ``conv2d``/``conv3d``
per dilation in the images' dtype; reductions in float64). With the least-squares gain
``g = ⟨p, x⟩ / ⟨p, p⟩`` (0 when ``p = 0``) and the residual ``e = x − g p``, per kernel:
``mae`` (mean |e|), ``mse`` (mean e²), ``var`` (mean e² − (mean e)²), ``gain`` (g),
``energy_i_j`` (mean e² over cell (i, j) of a grid × grid partition: adaptive average
pooling), ``win`` (the fraction of pixels, those whose window fits at the bank's largest
reach, where this kernel has the smallest |e| of the bank) and, with ``joint=True``,
``joint_`` (the least-squares coefficients of the kernels of each dilation used
together). A bank of vector kernels (``bank.channels = C > 1``, images
``(N, C, *spatial)``) predicts channel ``c`` with its row ``k[c]`` over all input
channels; each (kernel, output channel) pair is one "kernel", named ``<kernel>_c<c>``.
:func:`ar_features` is the original ConvAR descriptor: the own AR coefficients at
several dilations.

**From window sums**, :func:`bank_features_from_sums` gives the same columns less ``mae``
and ``win``, with no pixels. With ``k`` a vector over the taps of the sums (``C`` cross,
``f`` first, ``c`` the centre tap of the predicted channel, ``n`` valid pixels,
:mod:`kernelbank.core.sums`)::

    ⟨p, x⟩ = kᵀ C[:, c]      ⟨p, p⟩ = kᵀ C k      Σp = kᵀ f      Σx = f_c      Σx² = C[c, c]
    mse = (Σx² − 2 g ⟨p, x⟩ + g² ⟨p, p⟩) / n        var = mse − ((Σx − g Σp) / n)²

``energy_<cell>`` is the same ``Σe²`` over one cell's sums with the whole-image gain, and
``joint_<kernel>`` is ``(KᵀCK + λ n I)⁻¹ Kᵀ C[:, c]`` over the kernels ``K`` of one dilation.
Sums at the bank's radius cover exactly the pixel path's pixels, so the features agree
to rounding (the MSE, a difference of sums, loses ``log10(Σx² / Σe²)`` digits); sums of a
larger radius cover fewer pixels (:meth:`WindowSums.restrict`).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bank import KernelBank
from .basis import Basis
from .fit import fit, select_sums
from .images import accept, check_finite, check_windows_fit, levels
from .solve import solve_normal_equations
from .sums import WindowSums

__all__ = ["bank_features", "bank_feature_names", "ar_features", "ar_feature_names",
           "bank_features_from_sums", "bank_feature_names_from_sums"]

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
    return _names(bank, _PER_KERNEL, grid, joint, win=True)


def _names(bank: KernelBank, columns: Sequence[str], grid: int | None, joint: bool,
           win: bool = False) -> list[str]:
    cells = [] if grid is None else [f"energy_{c}" for c in _cells(grid, bank.ndim)]
    names = [f"{n}_{s}" for n in bank.output_names for s in [*columns, *cells]]
    names += [f"{n}_win" for n in bank.output_names] if win else []
    return names + ([f"joint_{n}" for n in _joint_order(bank)[1]] if joint else [])


def _joint_order(bank: KernelBank) -> tuple[list[torch.Tensor], list[str]]:
    """Kernel indices of each dilation, and the output names in joint-column order."""
    groups = [torch.nonzero(bank.dilations == d).flatten()
              for d in sorted(set(bank.dilations.tolist()))]
    names, c = bank.output_names, bank.channels
    return groups, [names[i * c + k] for g in groups for i in g.tolist() for k in range(c)]


def _outputs(index: torch.Tensor, channels: int) -> torch.Tensor:
    """Indices of the (kernel, output channel) pairs of kernels ``index``, kernel-major."""
    return (index[:, None] * channels + torch.arange(channels, device=index.device)).flatten()


def _crop(t: torch.Tensor, margin: int, size: tuple[int, ...]) -> torch.Tensor:
    """Spatial window ``[margin, margin + size)`` of a (n, c, *spatial) tensor."""
    return t[(slice(None), slice(None)) + tuple(slice(margin, margin + v) for v in size)]


def _features_same_size(batch: torch.Tensor, bank: KernelBank, grid: int,
                        joint_ridge: float | None) -> torch.Tensor:
    """(n, F) features of same-sized, already normalised images (n, C, *spatial)."""
    channels = bank.channels
    n, spatial = batch.shape[0], tuple(batch.shape[2:])
    r, reach, m = bank.radius, bank.max_reach, len(bank) * channels
    common = tuple(s - 2 * reach for s in spatial)
    # one output channel per (kernel, predicted channel), reading every input channel
    kernels = bank.kernels.to(batch.device, batch.dtype).reshape(
        (m, channels) + bank.kernels.shape[-len(spatial):])
    conv, pool = (F.conv2d, F.adaptive_avg_pool2d) if len(spatial) == 2 else \
        (F.conv3d, F.adaptive_avg_pool3d)
    per_kernel = torch.empty((n, m, len(_PER_KERNEL) + grid ** len(spatial)), dtype=torch.float64,
                             device=batch.device)
    abs_common = batch.new_empty((n, m) + common)
    joint = []
    for d in sorted(set(bank.dilations.tolist())):
        index = _outputs(torch.nonzero(bank.dilations == d).flatten().to(batch.device),
                         channels)
        own = tuple(s - 2 * r * d for s in spatial)
        pred = conv(batch, kernels[index], dilation=d)             # (n, m_d, *own)
        target = _crop(batch, r * d, own)
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
    front = accept(images, bank.ndim, bank.channels)
    check_windows_fit(front, bank, [(1, int(bank.dilations.max()))])
    n_images, names = sum(len(i) for i, _ in front.groups), bank_feature_names(bank, grid, joint)
    out = torch.empty((n_images, len(names)), dtype=torch.float64, device=front.device)
    for indices, batch in front.groups:
        check_finite(batch, indices)
        [(_, batch)] = levels(batch, [1], normalize)
        per_image = len(bank) * bank.channels * int(np.prod([s - 2 * bank.max_reach
                                                            for s in batch.shape[2:]]))
        chunk = max(1, _BLOCK_ELEMENTS // max(1, per_image))
        for i0 in range(0, len(indices), chunk):
            rows = torch.tensor(indices[i0:i0 + chunk], device=front.device)
            out[rows] = _features_same_size(batch[i0:i0 + chunk], bank, grid,
                                            ridge if joint else None)
    return out, names


def ar_feature_names(basis: Basis, dilations: Sequence[int] = (1, 2, 3, 4, 5)
                     ) -> list[str]:
    """Column names of :func:`ar_features`: ``ar_d<dilation>_c<component>``, or
    ``ar_d<dilation>_ch<channel>_c<component>`` with channels (channel-major)."""
    width = max(2, len(str(basis.n_components - 1)))
    outputs = [""] if basis.channels == 1 else [f"_ch{c}" for c in range(basis.channels)]
    return [f"ar_d{d}{o}_c{j:0{width}d}" for d in dilations for o in outputs
            for j in range(basis.n_components)]


def ar_features(images, basis: Basis,
                dilations: Sequence[int] = (1, 2, 3, 4, 5), ridge: float = 1e-6,
                normalize: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The original ConvAR descriptor: fitted AR coefficients at several dilations.

    :func:`~kernelbank.core.fit.fit` of ``basis`` at each of ``dilations``: features
    (N, len(dilations) · [C ·] m), float64, dilation-major, and their names
    (:func:`ar_feature_names`).
    """
    dilations = [int(d) for d in dilations]
    if not dilations:
        raise ValueError("dilations must name at least one dilation")
    result = fit(images, basis, ridge=ridge, normalize=normalize, dilations=dilations)
    return result.coef.to(torch.float64).flatten(1), ar_feature_names(basis, dilations)


# ---------------------------------------------------------------------------- from sums
_FROM_SUMS = ("mse", "var", "gain")


def bank_feature_names_from_sums(bank: KernelBank, grid: int | None = None,
                                 joint: bool = False) -> list[str]:
    """Column names of :func:`bank_features_from_sums`, in order.

    Per kernel ``<name>_mse, _var, _gain`` and, with a grid, ``_energy_<i>_<j>…``; then
    ``joint_<name>`` when ``joint``. Each is the name of the same value in
    :func:`~kernelbank.core.features.bank_feature_names`.
    """
    return _names(bank, _FROM_SUMS, grid, joint)


def _kernel_sums(sums: WindowSums, weights: torch.Tensor, targets: torch.Tensor,
                 joint: bool = False) -> dict[str, torch.Tensor]:
    """``pp`` ⟨p,p⟩, ``px`` ⟨p,x⟩, ``xx`` Σx² of the target, ``sum_p`` Σp (…, m) and with
    ``joint`` ``gram`` K C Kᵀ (…, m, m) of kernel rows (m, T) predicting the taps
    ``targets`` (their channels' centres): quadratic forms of ``cross``, one product."""
    m = len(weights)
    centre = torch.zeros_like(weights)
    centre[torch.arange(m), targets.to(weights.device)] = 1
    i, j = torch.triu_indices(m, m) if joint else ([], [])
    forms = sums.bilinear(torch.cat([weights, weights, centre, weights[i]]),
                          torch.cat([weights, centre, centre, weights[j]]))
    out = dict(zip(("pp", "px", "xx"), forms[..., :3 * m].split(m, -1)))
    out["sum_p"] = sums.first @ weights.T
    if joint:
        out["gram"] = forms.new_empty(forms.shape[:-1] + (m, m))
        out["gram"][..., i, j] = out["gram"][..., j, i] = forms[..., 3 * m:]
    return out


def _residual_energy(sums: WindowSums, forms: dict[str, torch.Tensor],
                     gain: torch.Tensor) -> torch.Tensor:
    """Mean ``e²`` of ``e = x − g p``, (…, m); ``gain`` broadcasts against ``pp``."""
    count = sums.n_pixels.to(torch.float64)[..., None]
    return ((forms["xx"] - 2 * gain * forms["px"] + gain.square() * forms["pp"]) / count
            ).clamp_min(0)


def _bank_sums(sums: Sequence[WindowSums], bank: KernelBank, dilation: int, scale: int,
               grid: int | None, kernel: str) -> WindowSums:
    """The sums kernel features at ``dilation`` need, checked and cut to the bank's radius."""
    chosen = select_sums(sums, dilation, scale=scale, grid=grid, needed_by=f"bank kernel {kernel}")
    return chosen.cut_for("the bank", bank.radius, bank.ndim, bank.channels)


def bank_features_from_sums(sums: Sequence[WindowSums], bank: KernelBank, *,
                            joint: bool = False, ridge: float = 1e-6, scale: int = 1
                            ) -> tuple[torch.Tensor, list[str]]:
    """The quadratic features of :func:`~kernelbank.core.features.bank_features`, from sums.

    Parameters
    ----------
    sums : sequence of WindowSums
        Sums of the same N images (normalised as ``bank_features`` would), one
        whole-image entry at each dilation of the bank and, for the energy columns, one
        per-cell entry (one grid); radius >= the bank's (equal to reproduce the pixel
        path). Entries at other dilations or scales are ignored.
    bank : KernelBank
    joint, ridge : as :func:`bank_features`
    scale : int, default=1
        Pyramid scale of the sums to use (1: the images themselves, as ``bank_features``).

    Returns
    -------
    features : torch.Tensor of shape (N, F), float64, on the sums' device
    names : list of str of length F
        :func:`bank_feature_names_from_sums` with the sums' grid (None without cells).

    Examples
    --------
    >>> import numpy as np, torch, kernelbank as kb
    >>> from kernelbank.core import normalize_images, window_sums
    >>> images = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 16, 16)))
    >>> bank = kb.KernelBank.gabor(radius=2, n_orientations=2, frequencies=(0.25,))
    >>> sums = window_sums(normalize_images(images), 2, [1])
    >>> feats, names = kb.bank_features_from_sums(sums, bank)
    >>> pixel, pixel_names = kb.bank_features(images, bank)
    >>> names[:3]
    ['k00_gabor_d1_mse', 'k00_gabor_d1_var', 'k00_gabor_d1_gain']
    >>> bool(torch.allclose(feats, pixel[:, [pixel_names.index(n) for n in names]]))
    True
    """
    if not isinstance(bank, KernelBank):
        raise TypeError(f"bank must be a kernelbank.KernelBank, got {type(bank).__name__}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    sums = list(sums)
    if not sums:
        raise ValueError("sums is empty: pass the window sums of every dilation of the bank")
    groups, _ = _joint_order(bank)
    dilations = [int(bank.dilations[g[0]]) for g in groups]
    grids = {s.grid for s in sums if s.grid is not None and s.scale == scale
             and s.dilation in dilations}
    if len(grids) > 1:
        raise ValueError(f"per-cell window sums of several grids {sorted(grids)}; pass one grid")
    grid = grids.pop() if grids else None
    names = bank.kernel_names
    whole = {d: _bank_sums(sums, bank, d, scale, None, names[int(g[0])])
             for d, g in zip(dilations, groups)}
    cells = {d: _bank_sums(sums, bank, d, scale, grid, names[int(g[0])])
             for d, g in zip(dilations, groups)} if grid is not None else {}
    n_images = {len(s) for s in list(whole.values()) + list(cells.values())}
    if len(n_images) != 1:
        raise ValueError(f"the window sums hold different numbers of images {sorted(n_images)}; "
                         "pass sums of the same images at every dilation")
    for d, part in cells.items():
        if part.radius != whole[d].radius:
            raise ValueError(f"the whole-image and per-cell sums at dilation {d} cover different "
                             f"pixels (radius {whole[d].radius} vs {part.radius})")

    n, device = n_images.pop(), whole[dilations[0]].first.device
    n_cells = 0 if grid is None else grid ** bank.ndim
    channels = bank.channels
    per_kernel = torch.empty((n, len(bank) * channels, len(_FROM_SUMS) + n_cells),
                             dtype=torch.float64, device=device)
    joint_coef = []
    for d, index in zip(dilations, groups):
        own = whole[d]
        # one row over the sums' taps per (kernel, output channel), kernel-major, and the
        # tap each row predicts (its channel's centre): (m_d·C, T), (m_d·C,)
        weights = own.place_rows(bank.kernels[index].reshape(len(index) * channels, -1),
                                 bank.radius)
        targets = own.centres.cpu().repeat(len(index)).to(weights.device)
        forms = _kernel_sums(own, weights, targets, joint)
        pp, px = forms["pp"], forms["px"]
        gain = torch.where(pp > 0, px / pp.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(pp))
        mse = _residual_energy(own, forms, gain)
        mean = (own.first[:, targets] - gain * forms["sum_p"]) / own.n_pixels[:, None]
        columns = [mse, (mse - mean.square()).clamp_min(0), gain]
        if grid is not None:
            energy = _residual_energy(cells[d], _kernel_sums(cells[d], weights, targets),
                                      gain[:, None, :])
            columns.extend(energy.unbind(1))
        per_kernel[:, _outputs(index, channels).to(device)] = torch.stack(columns, -1)
        if joint:
            # each channel on its own predictions: (n, m_d, C) → kernel-major columns
            gram = forms["gram"]
            joint_coef.append(torch.stack([solve_normal_equations(
                gram[:, c::channels, c::channels], px[:, c::channels], own.n_pixels, ridge)
                for c in range(channels)], -1).flatten(1))
    features = torch.cat([per_kernel.flatten(1)] + joint_coef, 1)
    return features, bank_feature_names_from_sums(bank, grid, joint)

