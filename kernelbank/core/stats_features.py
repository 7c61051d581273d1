r"""Bank features from window sums: :func:`~kernelbank.core.features.bank_features` without pixels.

For a bank kernel ``k`` at dilation ``δ``, written as a t-vector over the taps of the
window sums at that dilation (``C`` cross, ``f`` first, ``c`` the centre tap, ``n``
valid pixels, see :mod:`kernelbank.core.sums`), its prediction ``p = k ⋆ x`` satisfies

    ⟨p, x⟩ = kᵀ C[:, c]      ⟨p, p⟩ = kᵀ C k      Σp = kᵀ f      Σx = f_c      Σx² = C[c, c]

so, with the gain ``g = ⟨p, x⟩ / ⟨p, p⟩`` (0 when ``⟨p, p⟩ = 0``) and the residual
``e = x − g p``:

    mse      Σe² / n = (Σx² − 2 g ⟨p, x⟩ + g² ⟨p, p⟩) / n
    var      mse − (Σe / n)²,   Σe = Σx − g Σp
    gain     g
    energy_<cell>   the same Σe² over one cell's sums / its pixel count, with the
                    *whole-image* gain (as the pixel path pools e² of the whole-image fit)
    joint_<kernel>  (KᵀCK + λ n I)⁻¹ Kᵀ C[:, c] over the kernels ``K`` of one dilation:
                    the least-squares fit of the image on those predictions together

These are the quadratic features of the pixel path, with the same column names, in the
pixel path's order less the columns that need pixels (``mae`` and ``win``).

A bank of vector kernels (window sums with as many channels) does the same for each
(kernel, output channel) pair: ``k`` is row ``c`` of the vector kernel over every
channel's taps and ``x`` is channel ``c``, so ``C[:, c]`` above is the column of channel
``c``'s centre tap; the joint coefficients fit each channel on its predictions.

Valid pixels
------------
The pixel path evaluates kernel ``k`` on its own dilation's valid pixels for the bank's
radius ``r`` (margin ``r·δ``). Window sums of radius ``r`` at ``δ`` cover exactly those,
and the features equal the pixel path's to rounding. Sums of a larger radius ``R > r``
cover fewer pixels (margin ``R·δ``): the features are then exact for those pixels, but
are not the pixel path's values (:meth:`WindowSums.restrict` keeps the larger window's
valid pixels). Compute the sums at the bank's radius to reproduce ``bank_features``.

Notes
-----
Everything is float64 on the sums' device. The MSE comes from a difference of sums,
which loses ``log10(Σx² / Σe²)`` digits against summing ``e²`` pixel by pixel; for the
textures a bank can tell apart that is a few digits of float64's sixteen.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .bank import KernelBank
from .basis import Basis
from .features import _cells, _joint_order, _outputs
from .solve import solve_normal_equations
from .sums import WindowSums
from .sums_fit import select_sums

__all__ = ["bank_features_from_sums", "bank_feature_names_from_sums"]

_PER_KERNEL = ("mse", "var", "gain")


def bank_feature_names_from_sums(bank: KernelBank, grid: int | None = None,
                                 joint: bool = False) -> list[str]:
    """Column names of :func:`bank_features_from_sums`, in order.

    Per kernel ``<name>_mse, _var, _gain`` and, with a grid, ``_energy_<i>_<j>…``; then
    ``joint_<name>`` when ``joint``. Each is the name of the same value in
    :func:`~kernelbank.core.features.bank_feature_names`.
    """
    cells = [] if grid is None else [f"energy_{c}" for c in _cells(grid, bank.ndim)]
    names = [f"{n}_{s}" for n in bank.output_names for s in _PER_KERNEL + tuple(cells)]
    if joint:
        names += [f"joint_{n}" for n in _joint_order(bank)[1]]
    return names


def _kernel_sums(sums: WindowSums, weights: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``⟨p,p⟩``, ``⟨p,x⟩``, ``Σp`` (…, m) and ``K C Kᵀ`` (…, m, m) of kernel rows (m, T)
    predicting the taps ``targets`` (m,) (the centre of the channel each row predicts)."""
    cross_k = sums.cross @ weights.T                               # (…, T, m)
    gram = weights @ cross_k                                       # (…, m, m)
    pp = torch.diagonal(gram, dim1=-2, dim2=-1)
    columns = torch.arange(len(targets), device=targets.device)
    px = cross_k[..., targets, columns]                            # C symmetric: W C[:, c]
    return pp, px, sums.first @ weights.T, gram


def _residual_energy(sums: WindowSums, pp: torch.Tensor, px: torch.Tensor,
                     gain: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``e²`` of ``e = x − g p``, (…, m); ``gain`` broadcasts against ``pp``."""
    sum_sq = sums.cross[..., targets, targets]
    count = sums.n_pixels.to(torch.float64)[..., None]
    return ((sum_sq - 2 * gain * px + gain.square() * pp) / count).clamp_min(0)


def _bank_sums(sums: Sequence[WindowSums], bank: KernelBank, dilation: int, scale: int,
               grid: int | None, kernel: str) -> WindowSums:
    """The sums kernel features at ``dilation`` need, checked and cut to the bank's radius."""
    chosen = select_sums(sums, dilation, scale=scale, grid=grid, needed_by=f"bank kernel {kernel}")
    if chosen.ndim != bank.ndim:
        raise ValueError(f"the bank is {bank.ndim}-D but the window sums at dilation {dilation} "
                         f"are {chosen.ndim}-D")
    if chosen.channels != bank.channels:
        raise ValueError(f"the bank's kernels predict {bank.channels} channel(s) but the window "
                         f"sums at dilation {dilation} are of {chosen.channels}")
    if bank.radius > chosen.radius:
        raise ValueError(f"the bank has radius {bank.radius} but the window sums at dilation "
                         f"{dilation} have radius {chosen.radius}: they hold no products of "
                         f"the outer taps. Compute the sums with a radius >= {bank.radius}.")
    # same valid pixels (those of the sums' radius), fewer taps
    return chosen.restrict(bank.radius) if chosen.radius > bank.radius else chosen


def _output_rows(sums: WindowSums, bank: KernelBank, index: torch.Tensor, dilation: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows over the sums' taps of the (kernel, output channel) pairs of kernels ``index``
    (kernel-major), and the tap each predicts (its channel's centre)."""
    if bank.channels == 1:
        basis = Basis.from_kernels(bank.kernels[index], dilation=dilation)
        weights = sums.tap_weights(basis)
        targets = torch.full((len(index),), sums.centre, dtype=torch.int64)
    else:
        rows = bank.kernels[index].reshape(len(index) * bank.channels, -1)
        weights = sums.place_rows(rows, bank.radius)
        targets = sums.centres.cpu().repeat(len(index))
    return weights, targets.to(weights.device)


def bank_features_from_sums(sums: Sequence[WindowSums], bank: KernelBank, *,
                            joint: bool = False, ridge: float = 1e-6, scale: int = 1
                            ) -> tuple[torch.Tensor, list[str]]:
    """The quadratic features of :func:`~kernelbank.core.features.bank_features`, from sums.

    Parameters
    ----------
    sums : sequence of WindowSums
        Sums of the same N images (normalised as ``bank_features`` would, z-scored by
        default), whole-image at every dilation of the bank; add per-cell sums (one grid)
        at every dilation for the energy columns. Entries at other dilations, scales or
        radii are ignored; one whole-image (and one per-cell) entry must match each
        dilation. Radius >= the bank's (see the module docstring: equal to reproduce
        the pixel path).
    bank : KernelBank
        Kernels of any origin (full, isotropic or custom basis, gabor, random).
    joint : bool, default=False
        Append the joint least-squares coefficients of each dilation's kernels.
    ridge : float, default=1e-6
        Per-pixel ridge of the joint fit.
    scale : int, default=1
        Pyramid scale of the sums to use (1: the images themselves, as ``bank_features``).

    Returns
    -------
    features : torch.Tensor of shape (N, F), float64, on the sums' device
    names : list of str of length F
        :func:`bank_feature_names_from_sums` with the sums' grid (None without cells).

    Raises
    ------
    ValueError
        For sums missing a dilation of the bank, sums of a smaller radius than the bank,
        of another dimension, of different image counts, or per-cell sums of several grids.

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

    n, device = n_images.pop(), whole[dilations[0]].cross.device
    n_cells = 0 if grid is None else grid ** bank.ndim
    channels = bank.channels
    per_kernel = torch.empty((n, len(bank) * channels, len(_PER_KERNEL) + n_cells),
                             dtype=torch.float64, device=device)
    joint_coef = []
    for d, index in zip(dilations, groups):
        own = whole[d]
        weights, targets = _output_rows(own, bank, index, d)           # (m_d·C, T), (m_d·C,)
        pp, px, sum_p, gram = _kernel_sums(own, weights, targets)
        gain = torch.where(pp > 0, px / pp.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(pp))
        mse = _residual_energy(own, pp, px, gain, targets)
        mean = (own.first[:, targets] - gain * sum_p) / own.n_pixels[:, None]
        columns = [mse, (mse - mean.square()).clamp_min(0), gain]
        if grid is not None:
            cell_pp, cell_px, _, _ = _kernel_sums(cells[d], weights, targets)
            energy = _residual_energy(cells[d], cell_pp, cell_px, gain[:, None, :], targets)
            columns.extend(energy.unbind(1))
        per_kernel[:, _outputs(index, channels).to(device)] = torch.stack(columns, -1)
        if joint:
            # each channel on its own predictions: (n, m_d, C) → kernel-major columns
            joint_coef.append(torch.stack([solve_normal_equations(
                gram[:, c::channels, c::channels], px[:, c::channels], own.n_pixels, ridge)
                for c in range(channels)], -1).flatten(1))
    features = torch.cat([per_kernel.flatten(1)] + joint_coef, 1)
    return features, bank_feature_names_from_sums(bank, grid, joint)

