r"""Per-class statistics of vector AR fits: what :class:`ClassStats` keeps for a ChannelBasis.

For a :class:`~kernelbank.core.channel_basis.ChannelBasis` (``C`` channels, ``m``
components per output channel, ``M`` regressor rows of which rows ``τ`` are the channel
centres) the per-class sums of :mod:`kernelbank.core.stats` hold, per image summed::

    coefficient row   the image's own (C, m) coefficients, flattened to C·m values
                      (sum_coef (C m), sum_outer (C m, C m), reservoir rows (·, C m))
    sum_gram  (M, M)  Σ A, A = Σ_p z zᵀ over the regressor rows
    sum_rhs   (M, C)  Σ A[:, τ]      regressors × targets   } sub-blocks of sum_gram,
    sum_sq    (C, C)  Σ A[τ, τ]      targets × targets      } kept under the one-channel
                                                              names of the same products
    sum_mse           Σ of the own fit's generalised variance det(Σ_own)^(1/C)

The one-channel fields are the case ``C = 1``: ``G``, ``h = G·x``, ``Σx²`` and the MSE.
The pooled class model is each output channel's solve on ``Σ A`` and the residual
covariance of those kernels over every pixel of the class, ``U ΣA Uᵀ / Σn``
(:func:`pooled_channel_model`).
"""

from __future__ import annotations

import numpy as np
import torch

from .channel_basis import ChannelBasis
from .channel_fit import ChannelFitResult, _solve, residual_covariance

__all__ = ["channel_field_shapes", "channel_image_rows", "pooled_channel_model",
           "generalised_variance", "channel_basis_to_dict", "channel_basis_from_dict"]


def generalised_variance(covariance: torch.Tensor) -> torch.Tensor:
    """``det(Σ)^(1/C)`` of covariances (…, C, C), float64, at least the smallest normal.

    The one-number residual variance of a vector model: the MSE itself for ``C = 1``.
    Computed as ``exp(logdet / C)`` of the eigenvalues clamped at the smallest normal,
    so a singular covariance (a grey image in three equal channels) gives a tiny value
    instead of a negative or NaN one.
    """
    values = torch.linalg.eigvalsh(covariance.to(torch.float64))
    tiny = torch.finfo(torch.float64).tiny
    return values.clamp_min(tiny).log().mean(-1).exp().clamp_min(tiny)


def channel_field_shapes(basis: ChannelBasis) -> dict[str, tuple[int, ...]]:
    """Shape of each per-class array field for this basis (``sample``: rows of C·m)."""
    k, rows, channels = basis.channels * basis.n_components, len(basis.regressors), \
        basis.channels
    return {"sum_coef": (k,), "sum_outer": (k, k), "sum_gram": (rows, rows),
            "sum_rhs": (rows, channels), "sum_sq": (channels, channels), "sample": (-1, k)}


def channel_image_rows(result: ChannelFitResult, scale: int | None
                       ) -> dict[str, np.ndarray]:
    """Per-image arrays :meth:`ClassStats.from_fit` sums, as float64 numpy.

    ``coef (N, C m)``, ``gram (N, M, M)``, ``rhs (N, M, C)``, ``sum_sq (N, C, C)``,
    ``n_pixels (N,)`` and ``mse (N,)`` (the generalised variance of the own fit).
    """
    pick = (lambda t: t[:, scale]) if scale is not None else (lambda t: t)
    gram = pick(result.gram).detach().cpu().to(torch.float64)
    targets = result.basis.targets
    return {
        "coef": pick(result.coef).detach().cpu().to(torch.float64).flatten(1).numpy(),
        "gram": gram.numpy(),
        "rhs": gram[:, :, targets].numpy(),
        "sum_sq": gram[:, targets[:, None], targets[None, :]].numpy(),
        "n_pixels": pick(result.n_pixels).detach().cpu().numpy().astype(np.int64),
        "mse": generalised_variance(pick(result.covariance).detach().cpu()).numpy(),
    }


def pooled_channel_model(sum_gram: np.ndarray | torch.Tensor, n_pixels, basis: ChannelBasis,
                         ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The class's pooled vector kernel and its residual covariance from ``Σ A``.

    Parameters
    ----------
    sum_gram : array of shape (..., M, M)
        Summed ``A`` of one or more classes.
    n_pixels : int or array of shape (...)
    basis : ChannelBasis
    ridge : float

    Returns
    -------
    coef : torch.Tensor of shape (..., C, m), float64
    covariance : torch.Tensor of shape (..., C, C), float64
    """
    gram = torch.as_tensor(np.asarray(sum_gram, dtype=np.float64))
    count = torch.as_tensor(np.asarray(n_pixels, dtype=np.int64))
    coef = _solve(gram, count, basis, ridge)
    return coef, residual_covariance(gram, count, basis, coef)


def channel_basis_to_dict(basis: ChannelBasis) -> dict:
    """Plain description and arrays of a ChannelBasis (inverse: :func:`channel_basis_from_dict`)."""
    return {**basis.describe(), "ring_distances": list(basis.ring_distances or []),
            "regressors": basis.regressors.numpy().copy(),
            "selection": basis.selection.numpy().copy(), "targets": basis.targets.numpy().copy()}


def channel_basis_from_dict(d: dict) -> ChannelBasis:
    channels, m = int(d["channels"]), int(d["n_components"])
    t = (2 * int(d["radius"]) + 1) ** int(d["ndim"])
    rings = tuple(float(v) for v in d.get("ring_distances", [])) or None
    regressors = np.asarray(d["regressors"], np.float64).reshape(-1, channels * t)
    return ChannelBasis(torch.from_numpy(regressors.copy()),
                        torch.from_numpy(np.asarray(d["selection"], np.int64).reshape(channels, m)),
                        torch.from_numpy(np.asarray(d["targets"], np.int64).reshape(channels)),
                        channels, int(d["radius"]), int(d["dilation"]), int(d["ndim"]),
                        str(d["kind"]), str(d["centre_mask"]), rings)
