"""Independent reference: an explicit per-pixel design matrix, solved by torch.linalg.lstsq.

Built from the dense basis kernels with plain slicing, one column per basis kernel; it
shares no code with the strip engine in kernelbank.core.responses.
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
