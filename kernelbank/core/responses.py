r"""Basis responses and their Gram matrices, computed strip by strip.

For an image ``x`` and a basis ``b_1 … b_m`` the fit needs, over every *valid* pixel
``p`` (one whose whole dilated window lies inside the image), the augmented Gram
matrix of ``z(p) = (R_1(p), …, R_m(p), x(p))``::

    A = Σ_p z(p) z(p)ᵀ          (m+1) × (m+1)

whose blocks are ``G = Σ R Rᵀ``, ``h = Σ R x`` and ``Σ x²``. Materialising ``R`` for
a whole batch costs ``m`` image-sized planes per image, so the work is done on strips
of rows (slices for volumes) small enough to stay in cache: responses of one strip
for a chunk of images, then one batched matrix product into the running sum.

Three ways to build the responses of a strip, picked from the basis:

* sparse shift-add: each component is a short sum of shifted views of ``x`` (full
  basis: one view each);
* separable rings: a 2-D isotropic basis is built from horizontal pair sums
  ``x[j-b] + x[j+b]`` followed by vertical pair sums, about 34 additions per pixel for
  radius 4 instead of 80;
* dense: every tap is gathered once and mixed by a matrix product (custom bases whose
  kernels use most taps).

Notes
-----
Partial Gram matrices of one strip are formed in the input precision and summed in
float64: a float32 sum over hundreds of thousands of pixels loses digits that the
solve of a nearly predictable (ill-conditioned) image needs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import torch

from .basis import Basis

__all__ = ["augmented_gram", "residual_sums"]

# Elements of one response plane of one strip (images × rows × columns). Measured on a
# 2 MiB-L2 core: 64k–150k keeps the working set of ~15 planes cache-resident while
# amortising the per-operation overhead of PyTorch.
_STRIP_ELEMENTS = 96 * 1024

StripFn = Callable[[torch.Tensor, int, int], torch.Tensor]


def _valid_shape(spatial: tuple[int, ...], reach: int) -> tuple[int, ...]:
    return tuple(s - 2 * reach for s in spatial)


def _view(x: torch.Tensor, start: int, stop: int, offset_px: tuple[int, ...],
          reach: int, valid: tuple[int, ...]) -> torch.Tensor:
    """Shifted view of x for output rows [start, stop) of the valid region."""
    index = [slice(None), slice(reach + start + offset_px[0], reach + stop + offset_px[0])]
    for axis, o in enumerate(offset_px[1:], start=1):
        index.append(slice(reach + o, reach + o + valid[axis]))
    return x[tuple(index)]


def _sparse_plan(basis: Basis, reach: int, valid: tuple[int, ...]) -> StripFn:
    offsets_px = (basis.offsets * basis.dilation).tolist()
    weights = basis.weights.numpy()
    components = []
    for row in weights:
        taps = np.nonzero(row)[0]
        components.append([(tuple(offsets_px[t]), float(row[t])) for t in taps])

    def strip(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        m = len(components)
        z = x.new_empty((x.shape[0], m + 1, stop - start) + valid[1:])
        for j, taps in enumerate(components):
            out = z[:, j]
            if not taps:
                out.zero_()
                continue
            (o, w), rest = taps[0], taps[1:]
            torch.mul(_view(x, start, stop, o, reach, valid), w, out=out)
            for o, w in rest:
                out.add_(_view(x, start, stop, o, reach, valid), alpha=w)
        z[:, m] = _view(x, start, stop, (0,) * len(valid), reach, valid)
        return z

    return strip


def _is_ring_indicator(basis: Basis) -> bool:
    return (basis.kind == "isotropic" and basis.ndim == 2
            and bool(torch.all((basis.weights == 0) | (basis.weights == 1))))


def _separable_ring_plan(basis: Basis, reach: int, valid: tuple[int, ...]) -> StripFn:
    """2-D isotropic rings from pair sums: ring(a, b) = Σ x[i±a, j±b] + x[i±b, j±a]."""
    r, d = basis.radius, basis.dilation
    # ring index of each unordered (a, b), 0 <= a <= b <= r, (a, b) != (0, 0)
    squared = [round(s * s) for s in basis.ring_distances]
    ring_of = {}
    for a in range(r + 1):
        for b in range(a, r + 1):
            if (a, b) != (0, 0):
                ring_of[(a, b)] = squared.index(a * a + b * b)
    members = defaultdict(list)
    for pair, ring in ring_of.items():
        members[ring].append(pair)
    m = basis.n_components
    width = valid[1]

    def strip(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        rows = stop - start
        # rows of x needed for this strip, with the vertical halo
        band = x[:, start:stop + 2 * reach]
        centre_cols = slice(reach, reach + width)
        horiz = {0: band[:, :, centre_cols]}
        for b in range(1, r + 1):
            horiz[b] = band[:, :, reach - b * d:reach - b * d + width] + \
                band[:, :, reach + b * d:reach + b * d + width]

        def vert(plane: torch.Tensor, a: int) -> torch.Tensor:
            if a == 0:
                return plane[:, reach:reach + rows]
            return plane[:, reach - a * d:reach - a * d + rows] + \
                plane[:, reach + a * d:reach + a * d + rows]

        z = x.new_empty((x.shape[0], m + 1, rows, width))
        filled = [False] * m
        for ring, pairs in sorted(members.items()):
            out = z[:, ring]
            for a, b in pairs:
                if a == 0:                       # (0, b): horizontal and vertical pairs
                    part = horiz[b][:, reach:reach + rows] + vert(horiz[0], b)
                elif a == b:                     # diagonals
                    part = vert(horiz[a], a)
                else:                            # (a, b) and its transpose (b, a)
                    part = vert(horiz[b], a) + vert(horiz[a], b)
                if filled[ring]:
                    out.add_(part)
                else:
                    out.copy_(part)
                    filled[ring] = True
        z[:, m] = horiz[0][:, reach:reach + rows]
        return z

    return strip


def _dense_plan(basis: Basis, reach: int, valid: tuple[int, ...]) -> StripFn:
    offsets_px = [tuple(o) for o in (basis.offsets * basis.dilation).tolist()]
    weights64 = basis.weights

    def strip(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        taps = torch.stack([_view(x, start, stop, o, reach, valid) for o in offsets_px], 1)
        mix = weights64.to(x.device, x.dtype)
        responses = torch.einsum("jt,nt...->nj...", mix, taps)
        centre = _view(x, start, stop, (0,) * len(valid), reach, valid)
        return torch.cat([responses, centre[:, None]], 1)

    return strip


def _plan(basis: Basis, reach: int, valid: tuple[int, ...]) -> StripFn:
    if _is_ring_indicator(basis):
        return _separable_ring_plan(basis, reach, valid)
    nnz = int((basis.weights != 0).sum())
    if nnz <= basis.weights.shape[1] + basis.n_components:
        return _sparse_plan(basis, reach, valid)
    return _dense_plan(basis, reach, valid)


def _strips(images: torch.Tensor, basis: Basis, m: int):
    """Yield (first image, last image, strip responses) over cache-sized strips."""
    n, spatial = images.shape[0], tuple(images.shape[1:])
    reach = basis.reach
    valid = _valid_shape(spatial, reach)
    plane = int(np.prod(valid[1:]))
    rows = max(1, min(valid[0], _STRIP_ELEMENTS // max(1, plane)))
    chunk = max(1, min(n, _STRIP_ELEMENTS // max(1, plane * rows)))
    if images.device.type != "cpu":
        # accelerators want big launches, not cache-sized ones
        rows, chunk = valid[0], max(1, min(n, (64 << 20) // max(1, (m + 1) * int(np.prod(valid)))))
    make = _plan(basis, reach, valid)
    for i0 in range(0, n, chunk):
        block = images[i0:i0 + chunk]
        for s0 in range(0, valid[0], rows):
            yield i0, i0 + block.shape[0], make(block, s0, min(valid[0], s0 + rows))


def augmented_gram(images: torch.Tensor, basis: Basis) -> torch.Tensor:
    """Sum over valid pixels of ``z zᵀ`` with ``z = (R_1 … R_m, x)``.

    Parameters
    ----------
    images : torch.Tensor of shape (n, *spatial)
        Same-sized images (2-D) or volumes (3-D), already normalised; floating dtype.
    basis : Basis

    Returns
    -------
    torch.Tensor of shape (n, m+1, m+1), float64, on the images' device
    """
    m = basis.n_components
    out = torch.zeros((images.shape[0], m + 1, m + 1), dtype=torch.float64,
                      device=images.device)
    for i0, i1, z in _strips(images, basis, m):
        flat = z.reshape(z.shape[0], m + 1, -1)
        out[i0:i1] += torch.bmm(flat, flat.transpose(1, 2)).to(torch.float64)
    return out


def residual_sums(images: torch.Tensor, basis: Basis, coef: torch.Tensor,
                  eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual statistics of given coefficients, optionally reweighted for L1.

    Parameters
    ----------
    images : torch.Tensor of shape (n, *spatial)
    basis : Basis
    coef : torch.Tensor of shape (n, m)
    eps : float, optional
        When given, also return the augmented Gram matrix weighted per pixel by
        ``1 / max(|e|, eps)`` (one iteratively-reweighted least-squares step).

    Returns
    -------
    abs_sum : torch.Tensor of shape (n,), float64
        ``Σ |x - Σ_j coef_j R_j|`` over valid pixels.
    weighted_gram : torch.Tensor of shape (n, m+1, m+1) or None
    """
    m = basis.n_components
    n = images.shape[0]
    abs_sum = torch.zeros(n, dtype=torch.float64, device=images.device)
    weighted = (torch.zeros((n, m + 1, m + 1), dtype=torch.float64, device=images.device)
                if eps is not None else None)
    c = coef.to(images.dtype)
    for i0, i1, z in _strips(images, basis, m):
        flat = z.reshape(z.shape[0], m + 1, -1)
        pred = torch.bmm(c[i0:i1, None, :], flat[:, :m]).squeeze(1)
        err = (flat[:, m] - pred).abs()
        abs_sum[i0:i1] += err.sum(1, dtype=torch.float64)
        if weighted is not None:
            root = err.clamp_min(eps).rsqrt()
            scaled = flat * root[:, None, :]
            weighted[i0:i1] += torch.bmm(scaled, scaled.transpose(1, 2)).to(torch.float64)
    return abs_sum, weighted
