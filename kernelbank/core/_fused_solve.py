r"""Compiled CPU engine of :func:`kernelbank.core.solve.solve_normal_equations`.

The fit solves one small ridge system per image and dilation (24 × 24 for the full
radius-2 basis; 3,072 of them per 1,024 images at dilations 1-3). LAPACK's batched
Cholesky through torch spends ~9 µs on each, for ~5k flop: call and dispatch overheads
per matrix. This loop does the same algebra — Jacobi scaling of ``G + λ n I`` exactly as
the torch code forms it, a Cholesky factorisation, two triangular solves — 3.5-5× faster
(one thread, 512 problems of 24 × 24 to 80 × 80), and flags the problems it leaves to
the torch path: ill-conditioned or singular ones (:data:`MIN_PIVOT`), non-finite
solutions. On the others the two agree to rounding (~1e-12 on the coefficients).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["LANES", "MIN_PIVOT", "ridge_solve"]


# problems factorised side by side: every scalar step of one Cholesky becomes a step
# on this many independent problems (one AVX2 register of float64; written out as four
# scalars in the inner loops, which keeps them in registers)
LANES = 4
# Problems with a smaller pivot of the unit-diagonal matrix (condition ≳ 1e4) are left
# to the torch path: there two factorisations' rounding orders can differ by ~1e-10 in
# the coefficients (a 4-pixel fit held up by its ridge did), and the fit's results must
# stay those of LAPACK to 1e-10; this path's agree to ~1e-12. Singular problems are
# among them, and take the torch path's pseudo-inverse as before.
MIN_PIVOT = 1e-2


@njit(cache=True, nogil=True, error_model="numpy")
def ridge_solve(gram, rhs, count, ridge, out, failed):
    """``out[p] = (G_p + ridge · count_p · I)⁻¹ h_p`` for every problem ``p``.

    ``gram`` (n, m, m), ``rhs`` (n, m), ``count`` (n,) float64; ``failed`` (n,) bool is
    set where a pivot of the scaled matrix is below :data:`MIN_PIVOT` or the solution
    is not finite.

    One problem's Cholesky is ~m³/6 multiply-adds in loops of length < m: too short to
    vectorise, and at m = 24 their overheads cost more than the arithmetic. So
    :data:`LANES` problems go through the same steps together (layout ``(m, m, lanes)``,
    the innermost loop over problems): every step is one vector operation and there is
    no branch per problem — a failing one just turns its own lane into NaN.
    """
    n, m = rhs.shape
    tiny = np.finfo(np.float64).tiny
    a = np.empty((m, m, LANES))
    scale = np.empty((m, LANES))
    y = np.empty((m, LANES))
    acc = np.empty(LANES)
    bad = np.empty(LANES, dtype=np.bool_)
    for p0 in range(0, n, LANES):
        for lane in range(LANES):            # D (G + λnI) D as torch forms it: (a · s_i) · s_j
            p = min(p0 + lane, n - 1)        # past the end: repeat the last problem
            for i in range(m):
                d = gram[p, i, i] + ridge * count[p]
                scale[i, lane] = 1.0 / np.sqrt(max(d, tiny)) if d > 0 else 1.0
                a[i, i, lane] = d * scale[i, lane] * scale[i, lane]
                y[i, lane] = rhs[p, i] * scale[i, lane]
            for i in range(m):
                for j in range(i):
                    a[i, j, lane] = gram[p, i, j] * scale[i, lane] * scale[j, lane]
            bad[lane] = False
        for j in range(m):                   # lower Cholesky, column by column
            for i in range(j, m):
                # the lanes' dot products in four scalars: registers, no store per step
                s0, s1, s2, s3 = a[i, j, 0], a[i, j, 1], a[i, j, 2], a[i, j, 3]
                for k in range(j):
                    s0 -= a[i, k, 0] * a[j, k, 0]
                    s1 -= a[i, k, 1] * a[j, k, 1]
                    s2 -= a[i, k, 2] * a[j, k, 2]
                    s3 -= a[i, k, 3] * a[j, k, 3]
                if i == j:
                    acc[0], acc[1], acc[2], acc[3] = s0, s1, s2, s3
                    for lane in range(LANES):
                        root = np.sqrt(acc[lane])
                        bad[lane] |= not root >= MIN_PIVOT
                        a[j, j, lane] = root
                else:
                    a[i, j, 0] = s0 / a[j, j, 0]
                    a[i, j, 1] = s1 / a[j, j, 1]
                    a[i, j, 2] = s2 / a[j, j, 2]
                    a[i, j, 3] = s3 / a[j, j, 3]
        for i in range(m):                   # L z = D h
            s0, s1, s2, s3 = y[i, 0], y[i, 1], y[i, 2], y[i, 3]
            for k in range(i):
                s0 -= a[i, k, 0] * y[k, 0]
                s1 -= a[i, k, 1] * y[k, 1]
                s2 -= a[i, k, 2] * y[k, 2]
                s3 -= a[i, k, 3] * y[k, 3]
            y[i, 0], y[i, 1] = s0 / a[i, i, 0], s1 / a[i, i, 1]
            y[i, 2], y[i, 3] = s2 / a[i, i, 2], s3 / a[i, i, 3]
        for i in range(m - 1, -1, -1):       # Lᵀ x = z
            s0, s1, s2, s3 = y[i, 0], y[i, 1], y[i, 2], y[i, 3]
            for k in range(i + 1, m):
                s0 -= a[k, i, 0] * y[k, 0]
                s1 -= a[k, i, 1] * y[k, 1]
                s2 -= a[k, i, 2] * y[k, 2]
                s3 -= a[k, i, 3] * y[k, 3]
            y[i, 0], y[i, 1] = s0 / a[i, i, 0], s1 / a[i, i, 1]
            y[i, 2], y[i, 3] = s2 / a[i, i, 2], s3 / a[i, i, 3]
        for lane in range(min(LANES, n - p0)):
            p = p0 + lane
            for i in range(m):
                out[p, i] = y[i, lane] * scale[i, lane]
                bad[lane] |= not np.isfinite(out[p, i])
            failed[p] = bad[lane]
