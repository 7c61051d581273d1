r"""Grams of multi-channel responses: one spatial basis on every channel, one product.

For images with ``C`` channels and a one-channel basis ``b_1 … b_m``, the planes of
channel ``c`` are its responses and itself, ``(b_1 ⋆ x_c, …, b_m ⋆ x_c, x_c)``; stacking
the planes of every channel (and, on request, a plane of ones) gives per pixel the
vector ``z`` of ``C (m + 1) [+ 1]`` values, and this module sums ``z zᵀ`` over the valid
pixels. Every cross-channel product of the planes is in it, so

* with the full basis, ``z`` is every tap of every channel and the Gram is the window
  cross matrix of the channels (plus, with the ones plane, the first sums and the pixel
  count): :func:`kernelbank.core.sums.window_sums` with channels;
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


def channel_gram(images: torch.Tensor, basis: Basis, *, ones: bool = False) -> torch.Tensor:
    """Sum over valid pixels of ``z zᵀ`` for the planes of every channel.

    Parameters
    ----------
    images : torch.Tensor of shape (n, C, *spatial)
        Same-sized multi-channel images (2-D or 3-D spatial), floating dtype.
    basis : Basis
        One-channel basis applied to every channel.
    ones : bool, default=False
        Append a plane of ones: its row of the Gram holds the plane sums and its
        diagonal the number of valid pixels.

    Returns
    -------
    torch.Tensor of shape (n, P, P), float64, on the images' device
        ``P = C (m + 1) + ones``; plane ``c (m + 1) + j`` is ``b_j ⋆ x_c`` for ``j < m``
        and ``x_c`` for ``j = m``; the ones plane is last.
    """
    n, channels = images.shape[:2]
    m = basis.n_components
    per_channel = m + 1
    size = channels * per_channel + int(ones)
    if channels == 1 and not ones:     # the one-channel Gram, operation for operation
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
            if ones:
                work[:, size - 1] = 1
        flat = work[:i1 - i0, :, :pixels]
        for c, (_, _, planes) in enumerate(parts):
            flat[:, c * per_channel:(c + 1) * per_channel] = planes[:, :per_channel]
        partial = torch.bmm(flat, flat.transpose(1, 2))
        out[i0:i1] += partial[:, :size, :size].to(torch.float64)
    return out


def channel_window_sums(images: torch.Tensor, radius: int, dilation: int,
                        shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums of ``images − shift`` with channels, over the valid pixels of a dilation.

    The contract of :func:`kernelbank.core.lags.lag_window_sums` for ``C`` channels:
    the Gram of every tap of every channel and a ones plane (:func:`channel_gram` with
    the full basis), reordered to channel-major taps in window C order.

    Parameters
    ----------
    images : torch.Tensor of shape (n, C, *spatial), float32 or float64
    radius, dilation : int
    shift : torch.Tensor of shape (n, C), dtype of ``images``
        Subtracted from each channel before any product (its mean, say).

    Returns
    -------
    cross : torch.Tensor of shape (n, C t, C t), float64
    first : torch.Tensor of shape (n, C t), float64
    """
    channels, ndim = images.shape[1], images.ndim - 2
    t = (2 * radius + 1) ** ndim
    shifted = images - shift.reshape(shift.shape + (1,) * ndim)
    gram = channel_gram(shifted, Basis.full(radius, dilation, ndim), ones=True)
    # planes of one channel: the t − 1 non-centre taps in C order, then the centre
    order = torch.arange(t)
    plane = torch.where(order < t // 2, order, order - 1)
    plane[t // 2] = t - 1
    index = (torch.arange(channels)[:, None] * t + plane[None, :]).reshape(-1).to(images.device)
    cross = gram.index_select(1, index).index_select(2, index)
    return cross, gram[:, -1].index_select(1, index)
