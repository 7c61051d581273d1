r"""Ridge-regularised solves of many small normal equations at once.

For each problem ``α = (G + λ n I)⁻¹ h``, where ``n`` is the number of pixels the sums
ran over, so that the ridge ``λ`` means the same for a 64×64 patch and a 4k image.

The solve scales ``G`` to unit diagonal (Jacobi) before a batched Cholesky. Problems
whose factorisation fails (singular or numerically indefinite ``G``: a constant image
with ``ridge=0``, a basis with linearly dependent kernels) fall back to a pseudo-inverse
from an eigendecomposition, which returns the minimum-norm least-squares solution
instead of garbage. Everything stays on the input's device.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["solve_normal_equations", "SingularGramWarning"]


class SingularGramWarning(UserWarning):
    """The Gram matrix of some problem was singular; a pseudo-inverse was used."""


def solve_normal_equations(gram: torch.Tensor, rhs: torch.Tensor, n_pixels: torch.Tensor,
                           ridge: float = 1e-6, *, warn: bool = False) -> torch.Tensor:
    """Solve ``(G + ridge * n * I) α = h`` for a batch of problems.

    Parameters
    ----------
    gram : torch.Tensor of shape (..., m, m)
        Symmetric positive semi-definite matrices ``G``.
    rhs : torch.Tensor of shape (..., m)
        Right-hand sides ``h``.
    n_pixels : torch.Tensor of shape (...)
        Number of pixels summed into each problem.
    ridge : float, default=1e-6
        Per-pixel ridge ``λ >= 0``.
    warn : bool, default=False
        Emit :class:`SingularGramWarning` when a fallback was needed.

    Returns
    -------
    torch.Tensor of shape (..., m), dtype of ``gram``
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    m = gram.shape[-1]
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    a = gram + (ridge * n_pixels.to(gram.dtype))[..., None, None] * eye
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    scale = torch.where(diag > 0, diag.clamp_min(torch.finfo(a.dtype).tiny).rsqrt(),
                        torch.ones_like(diag))
    a_scaled = a * scale[..., :, None] * scale[..., None, :]
    b_scaled = rhs * scale
    factor, info = torch.linalg.cholesky_ex(a_scaled)
    solution = torch.cholesky_solve(b_scaled[..., None], factor).squeeze(-1)
    # A factorisation can "succeed" on a numerically singular matrix and still give
    # huge values; treat non-finite results and tiny pivots as failures too.
    pivots = torch.diagonal(factor, dim1=-2, dim2=-1)
    tiny = (pivots.abs() < 1e-7).any(-1) if ridge == 0 else torch.zeros_like(info, dtype=torch.bool)
    failed = (info != 0) | ~torch.isfinite(solution).all(-1) | tiny
    if failed.any():
        solution = solution.clone()
        solution[failed] = _pinv_solve(a_scaled[failed], b_scaled[failed])
        if warn:
            warnings.warn(
                f"{int(failed.sum())} of {failed.numel()} Gram matrices were singular; "
                "their coefficients are minimum-norm least-squares solutions. A ridge > 0 "
                "avoids this.", SingularGramWarning, stacklevel=2)
    return solution * scale


def _pinv_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(a)
    cutoff = values.amax(-1, keepdim=True).clamp_min(0) * a.shape[-1] * torch.finfo(a.dtype).eps * 10
    inverse = torch.where(values > cutoff, 1.0 / values.clamp_min(torch.finfo(a.dtype).tiny),
                          torch.zeros_like(values))
    projected = (vectors.transpose(-1, -2) @ b[..., None]).squeeze(-1)
    return (vectors @ (inverse * projected)[..., None]).squeeze(-1)
