r"""Grams of multi-channel responses: one spatial basis on every channel, one product.

For images with ``C`` channels and a one-channel basis ``b_1 … b_m``, the planes of
channel ``c`` are its responses and itself, ``(b_1 ⋆ x_c, …, b_m ⋆ x_c, x_c)``; stacking
the planes of every channel gives per pixel the vector ``z`` of ``C (m + 1)`` values, and
this module sums ``z zᵀ`` over the valid pixels. Every cross-channel product of the
planes is in it, so

* with the full basis, ``z`` is every tap of every channel and the Gram is the window
  cross matrix of the channels, which :func:`kernelbank.core.sums.window_sums` with
  channels computes faster from lag products;
* with the isotropic basis, ``z`` holds each channel's rings and centre, every regressor
  and target of the isotropic vector AR model (:mod:`kernelbank.core.channel_fit`).

The planes of each channel come from the one-channel strip engine
(:mod:`kernelbank.core.responses`), channel by channel on the same strip of rows, and are
multiplied together once per strip: the Gram costs ``C²`` times the one-channel Gram,
the plane arithmetic ``C`` times.
"""

from __future__ import annotations

import torch

from .basis import Basis
from .responses import _strips, augmented_gram

__all__ = ["channel_gram"]


def channel_gram(images: torch.Tensor, basis: Basis) -> torch.Tensor:
    """Sum over valid pixels of ``z zᵀ`` for the planes of every channel.

    Parameters
    ----------
    images : torch.Tensor of shape (n, C, *spatial)
        Same-sized multi-channel images (2-D or 3-D spatial), floating dtype.
    basis : Basis
        One-channel basis applied to every channel.

    Returns
    -------
    torch.Tensor of shape (n, P, P), float64, on the images' device
        ``P = C (m + 1)``; plane ``c (m + 1) + j`` is ``b_j ⋆ x_c`` for ``j < m`` and
        ``x_c`` for ``j = m``.
    """
    n, channels = images.shape[:2]
    m = basis.n_components
    per_channel = m + 1
    size = channels * per_channel
    if channels == 1:     # the one-channel Gram, operation for operation
        return augmented_gram(images[:, 0], basis)
    out = torch.zeros((n, size, size), dtype=torch.float64, device=images.device)
    streams = [_strips(images[:, c], basis, m) for c in range(channels)]
    work = None
    for parts in zip(*streams):
        i0, i1, _ = parts[0]
        pixels = parts[0][2].shape[-1]
        if work is None:
            # the first strip is the largest (chunk of images × strip of rows); zero
            # planes pad the count to a multiple of 8, where BLAS Grams run fastest
            padded = -(-size // 8) * 8
            work = images.new_zeros((i1 - i0, padded, pixels))
        flat = work[:i1 - i0, :, :pixels]
        for c, (_, _, planes) in enumerate(parts):
            flat[:, c * per_channel:(c + 1) * per_channel] = planes[:, :per_channel]
        partial = torch.bmm(flat, flat.transpose(1, 2))
        out[i0:i1] += partial[:, :size, :size].to(torch.float64)
    return out
