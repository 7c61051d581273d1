r"""Per-pixel pictures of how a kernel bank explains one image.

For an image ``x`` (z-scored) and each bank kernel ``k`` at dilation ``δ``, the prediction
is ``p = k ⋆ x`` on the kernel's own valid pixels (where its dilated window fits) and,
with the least-squares gain ``g = ⟨p, x⟩ / ⟨p, p⟩`` over those pixels, the residual is
``e = x − g p`` — exactly the residual whose statistics :func:`kernelbank.bank_features`
turns into features. From the residuals of all kernels this module draws

* the residual map of the *best* kernel (smallest mean ``e²`` over its valid pixels), and
* the *winner* map: at each pixel of the common region (where the window fits at the
  bank's largest reach, so every kernel competes on the same pixels), the index of the
  kernel with the smallest ``|e|`` — the per-pixel version of the ``<kernel>_win``
  feature, a segmentation-like picture. With ``smooth = s > 0`` the winner is the kernel
  with the smallest mean ``e²`` over the ``(2s+1)``-wide box around the pixel (clipped to
  the common region), which turns the pixel noise into regions.

Both maps are returned at the image's full size; pixels a map does not cover are NaN
(residual) or -1 (winner).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.bank import KernelBank
from ..core.images import normalize_images

__all__ = ["BankMaps", "bank_maps"]


@dataclass(frozen=True)
class BankMaps:
    """The maps of one image under one bank.

    Attributes
    ----------
    image : ndarray of shape (H, W) or (D, H, W), float64
        The z-scored image.
    residual : ndarray, same shape as ``image``
        Residual ``e`` of the best kernel on its valid pixels; NaN on the border its
        dilated window cannot reach.
    winner : ndarray of int64, same shape as ``image``
        Index of the bank kernel with the smallest ``|e|`` at each pixel of the common
        region; -1 outside it.
    mse : ndarray of shape (n_kernels,)
        Mean ``e²`` of every kernel over its own valid pixels.
    best : int
        ``argmin(mse)``.
    """

    image: np.ndarray
    residual: np.ndarray
    winner: np.ndarray
    mse: np.ndarray
    best: int


def bank_maps(image: np.ndarray, bank: KernelBank, normalize: bool = True,
              smooth: int = 0) -> BankMaps:
    """Residual and winner maps of ``image`` under every kernel of ``bank``.

    Parameters
    ----------
    image : array of shape (H, W) or (D, H, W)
        One image (volume) with ``bank.ndim`` dimensions, each side at least
        ``2 * bank.max_reach + 1``.
    bank : KernelBank
    normalize : bool, default=True
        Z-score the image first, as the fit and feature stages do.
    smooth : int, default=0
        Half-width of the box over which squared residuals are averaged before the
        per-pixel winner is chosen; 0 compares ``|e|`` pixel by pixel.

    Returns
    -------
    BankMaps
    """
    if not isinstance(smooth, (int, np.integer)) or smooth < 0:
        raise ValueError(f"smooth must be an integer >= 0, got {smooth!r}")
    x = torch.as_tensor(np.asarray(image), dtype=torch.float64)
    if x.ndim != bank.ndim:
        raise ValueError(f"image has {x.ndim} dimensions (shape {tuple(x.shape)}) but the bank "
                         f"is {bank.ndim}-D")
    reach, r = bank.max_reach, bank.radius
    need = 2 * reach + 1
    if min(x.shape) < need:
        raise ValueError(f"image of shape {tuple(x.shape)} is smaller than the {need}-pixel "
                         f"window of the bank (radius {r}, largest dilation "
                         f"{int(bank.dilations.max())})")
    if normalize:
        x = normalize_images(x[None].clone())[0]
    common = tuple(s - 2 * reach for s in x.shape)
    inner = tuple(slice(reach, reach + v) for v in common)
    conv = F.conv2d if bank.ndim == 2 else F.conv3d
    kernels = bank.kernels.to(torch.float64)[:, None]
    err_common = torch.empty((len(bank),) + common, dtype=torch.float64)
    mse = torch.empty(len(bank), dtype=torch.float64)
    own_errors: dict[int, tuple[torch.Tensor, tuple[slice, ...]]] = {}
    for d in sorted(set(bank.dilations.tolist())):
        index = torch.nonzero(bank.dilations == d).flatten()
        own = tuple(slice(r * d, s - r * d) for s in x.shape)
        pred = conv(x[None, None], kernels[index], dilation=d)[0]          # (m_d, *own)
        target = x[own]
        flat_p, flat_t = pred.flatten(1), target.flatten()
        pp, pt = (flat_p * flat_p).sum(1), flat_p @ flat_t
        gain = torch.where(pp > 0, pt / pp.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(pp))
        err = target[None] - gain.reshape((-1,) + (1,) * bank.ndim) * pred
        mse[index] = err.flatten(1).square().mean(1)
        off = reach - r * d
        err_common[index] = err[(slice(None),) + tuple(slice(off, off + v) for v in common)]
        for j, i in enumerate(index.tolist()):
            own_errors[i] = (err[j], own)
    best = int(mse.argmin())
    residual = np.full(tuple(x.shape), np.nan)
    err_best, own_best = own_errors[best]
    residual[own_best] = err_best.numpy()
    winner = np.full(tuple(x.shape), -1, dtype=np.int64)
    if smooth:
        pool = F.avg_pool2d if bank.ndim == 2 else F.avg_pool3d
        local = pool(err_common.square()[None], 2 * smooth + 1, stride=1, padding=smooth,
                     count_include_pad=False)[0]
        winner[inner] = local.argmin(0).numpy()
    else:
        winner[inner] = err_common.abs().argmin(0).numpy()
    return BankMaps(image=x.numpy(), residual=residual, winner=winner, mse=mse.numpy(),
                    best=best)
