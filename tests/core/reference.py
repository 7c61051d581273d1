"""Independent reference: an explicit per-pixel design matrix, solved by torch.linalg.lstsq.

Built from the dense basis kernels with plain slicing, one column per basis kernel; it
shares no code with the strip engine in kernelbank.core._strips.
"""

from __future__ import annotations

import numpy as np
import torch


def zscore(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def design_matrix(image: np.ndarray, kernels: np.ndarray, dilation: int):
    """Columns R_j(p) = Σ_o kernels[j, o] x(p + dilation·o) over valid p; target x(p)."""
    x = torch.as_tensor(image, dtype=torch.float64)
    radius = kernels.shape[1] // 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in x.shape]
    columns = []
    for kernel in kernels:
        acc = torch.zeros(valid, dtype=torch.float64)
        for position in zip(*np.nonzero(kernel)):
            offset = [int(p) - radius for p in position]
            window = tuple(slice(reach + o * dilation, reach + o * dilation + v)
                           for o, v in zip(offset, valid))
            acc += float(kernel[position]) * x[window]
        columns.append(acc.flatten())
    target = x[tuple(slice(reach, reach + v) for v in valid)].flatten()
    return torch.stack(columns, 1), target


def lstsq_fit(image: np.ndarray, kernels: np.ndarray, dilation: int):
    """(coefficients, mse) of the least-squares AR fit on a z-scored image."""
    design, target = design_matrix(zscore(image), np.asarray(kernels), dilation)
    coef = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
    mse = float(((target - design @ coef) ** 2).mean())
    return coef, mse


# ---------------------------------------------------------------------------- window sums
def window_sums(batch: torch.Tensor, radius: int, dilation: int, grid: int | None = None,
                channels: int = 1):
    """(cross, first, n_pixels) from the explicit stack of shifted windows, float64.

    Every tap's view of the valid region is materialised and the Gram taken by one
    matrix product per image: slow (t² products per pixel), simple, independent of the
    lag engine. Cells (``grid``) follow adaptive-pooling bounds as kernelbank documents.
    With ``channels > 1`` the batch is (n, C, *spatial) and the taps are (channel,
    offset) pairs, channel-major.
    """
    batch = batch.to(torch.float64)
    if channels == 1:
        batch = batch[:, None]
    ndim = batch.ndim - 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in batch.shape[2:]]
    axis = np.arange(-radius, radius + 1) * dilation
    taps = np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)

    def sums(images, shape):
        views = torch.stack([images[(slice(None), c) + tuple(
            slice(reach + o, reach + o + v) for o, v in zip(offset, shape))
        ].reshape(len(images), -1) for c in range(images.shape[1]) for offset in taps.tolist()], 1)
        return views @ views.transpose(1, 2), views.sum(-1), int(np.prod(shape))

    if grid is None:
        cross, first, count = sums(batch, valid)
        return cross, first, torch.full((len(batch),), count)
    parts = []
    for cell in np.ndindex(*([grid] * ndim)):
        # adaptive average pooling cells: [floor(i L / g), ceil((i + 1) L / g))
        bounds = [(i * v // grid, -((-(i + 1) * v) // grid)) for v, i in zip(valid, cell)]
        crop = batch[(slice(None), slice(None)) + tuple(slice(a, b + 2 * reach)
                                                        for a, b in bounds)]
        parts.append(sums(crop, [b - a for a, b in bounds]))
    cross = torch.stack([p[0] for p in parts], 1)
    first = torch.stack([p[1] for p in parts], 1)
    count = torch.tensor([p[2] for p in parts]).expand(len(batch), -1)
    return cross, first, count


# ---------------------------------------------------------------------------- vector AR
def channel_design_matrix(image: np.ndarray, kernels: np.ndarray, dilation: int, output: int):
    """Design matrix of output channel ``output`` for a (C, *spatial) image.

    ``kernels`` (C, m, C, *window): column j is Σ_{c', o} kernels[output, j, c', o]
    x_{c'}(p + dilation·o) over the valid p, built by plain slicing; the target is
    x_output(p).
    """
    x = torch.as_tensor(image, dtype=torch.float64)
    own = np.asarray(kernels)[output]                       # (m, C, *window)
    radius = own.shape[2] // 2
    reach = radius * dilation
    valid = [s - 2 * reach for s in x.shape[1:]]
    columns = []
    for kernel in own:
        acc = torch.zeros(valid, dtype=torch.float64)
        for position in zip(*np.nonzero(kernel)):
            channel, offset = int(position[0]), [int(p) - radius for p in position[1:]]
            window = tuple(slice(reach + o * dilation, reach + o * dilation + v)
                           for o, v in zip(offset, valid))
            acc += float(kernel[position]) * x[channel][window]
        columns.append(acc.flatten())
    target = x[output][tuple(slice(reach, reach + v) for v in valid)].flatten()
    return torch.stack(columns, 1), target


def channel_lstsq_fit(image: np.ndarray, kernels: np.ndarray, dilation: int,
                      normalize: bool = True):
    """(coef (C, m), residual covariance (C, C)) of the vector AR fit of one image.

    Each channel is z-scored (when ``normalize``), each output channel solved by lstsq
    on its explicit design matrix, and the covariance taken of the explicit residuals.
    """
    image = np.stack([zscore(c) if normalize else np.asarray(c, np.float64) for c in image])
    coefs, residuals = [], []
    for output in range(image.shape[0]):
        design, target = channel_design_matrix(image, kernels, dilation, output)
        coef = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]
        coefs.append(coef)
        residuals.append(target - design @ coef)
    residuals = torch.stack(residuals)
    return torch.stack(coefs), residuals @ residuals.T / residuals.shape[1]
