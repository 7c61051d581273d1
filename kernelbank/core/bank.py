r"""Kernel banks: sets of centre-masked predictors, learned per class or predefined.

From :class:`~kernelbank.core.stats.ClassStats` (basis kernels ``b_j``, per class ``c``):

``pooled``
    The one least-squares kernel of the whole class, each output channel's solve on the
    class's summed ``A`` (grey: ``(ΣG + λ Σn I)⁻¹ Σh``): the fit of all its images at once.
``pca``
    The mean kernel ``μ_c = Σα / n`` and, for each of the top principal directions
    ``v_j`` of the class's coefficient covariance (eigenvalue ``σ_j²``), the two kernels
    ``μ_c ± σ_j v_j``, one standard deviation from the mean (eigenvector signs fixed:
    largest-magnitude entry positive).
``kmeans``
    Centroids of k-means on the class's reservoir sample of coefficient rows.

Every learned kernel is ``Σ_j α_j b_j``, so its centre is zero by construction. With
``C > 1`` channels every entry is a vector kernel ``(C, C, *window)`` (output, input
channel) and a coefficient row is an image's ``(C, m)`` coefficients flattened.
Predefined banks: ``gabor`` (a Gaussian-windowed cosine per orientation and frequency)
and ``random`` (Gaussian taps), centre zeroed, unit L2 norm. Banks at several dilations
combine with :meth:`KernelBank.concat`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .stats import ClassStats, pooled_model

__all__ = ["KernelBank", "BANK_METHODS"]

BANK_METHODS = ("pooled", "pca", "kmeans")


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_") or "x"


def kmeans(rows: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 4,
           max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means of ``rows (n, m)`` with k-means++ seeding, best of ``n_init`` runs:
    ``k`` centroids (at most the distinct rows), sorted by decreasing cluster size, then
    lexicographically."""
    distinct = np.unique(rows, axis=0)
    k = min(k, len(distinct))
    if k == len(distinct):
        return distinct
    best, best_inertia, best_sizes = None, np.inf, None
    for _ in range(n_init):
        centres = [rows[rng.integers(len(rows))]]
        for _ in range(1, k):
            d2 = ((rows[:, None, :] - np.array(centres)[None]) ** 2).sum(-1).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(rows), 1 / len(rows))
            centres.append(rows[rng.choice(len(rows), p=p)])
        centres = np.array(centres)
        for _ in range(max_iter):
            d2 = ((rows[:, None, :] - centres[None]) ** 2).sum(-1)
            assign = d2.argmin(1)
            new = np.array([rows[assign == j].mean(0) if np.any(assign == j) else centres[j]
                            for j in range(k)])
            if np.allclose(new, centres, rtol=0, atol=1e-12):
                centres = new
                break
            centres = new
        d2 = ((rows[:, None, :] - centres[None]) ** 2).sum(-1)
        inertia = d2.min(1).sum()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
            best_sizes = np.bincount(d2.argmin(1), minlength=k)
    order = np.lexsort(tuple(best.T[::-1]) + (-best_sizes,))
    return best[order]


@dataclass(eq=False)
class KernelBank:
    """A set of centre-masked kernels with where each came from.

    Attributes
    ----------
    kernels : torch.Tensor of shape (M, *window) or (M, C, C, *window), float64
        Centre zero; with ``channels = C > 1`` vector kernels, ``[j, c, c']`` the weights
        output channel ``c`` puts on input channel ``c'`` (zero at its own centre).
    dilations : torch.Tensor of shape (M,), int64
        Tap spacing each kernel is applied with.
    class_index : torch.Tensor of shape (M,), int64
        Index into ``class_names`` of the class a kernel was learned from; -1 for
        class-free kernels (gabor, random).
    class_names : list of str
    method : str
        ``pooled``, ``pca``, ``kmeans``, ``gabor``, ``random`` or ``mixed`` (after concat
        of different methods).
    explained_variance : torch.Tensor of shape (M,) or None
        For ``pca`` banks: the coefficient variance along the kernel's principal
        direction (NaN for the mean kernels).
    metadata : dict
        JSON-friendly: basis description, ridge, n_components, counts, …
    kernel_methods : list of str
        Method each kernel came from (differs from ``method`` only after concat).
    channels : int
        Channels of the images the kernels predict (1: plain kernels).

    Examples
    --------
    >>> import kernelbank as kb
    >>> bank = kb.KernelBank.gabor(radius=3, n_orientations=4, frequencies=(0.25,))
    >>> bank.kernels.shape, bank.kernel_names[0]
    (torch.Size([4, 7, 7]), 'k00_gabor_d1')
    """

    kernels: torch.Tensor
    dilations: torch.Tensor
    class_index: torch.Tensor
    class_names: list[str]
    method: str
    explained_variance: torch.Tensor | None = None
    metadata: dict = field(default_factory=dict)
    kernel_methods: list[str] | None = None
    channels: int = 1

    def __post_init__(self):
        k = torch.as_tensor(self.kernels).detach().to("cpu", torch.float64)
        if not isinstance(self.channels, (int, np.integer)) or self.channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {self.channels!r}")
        self.channels = int(self.channels)
        lead = 1 if self.channels == 1 else 3
        window = k.shape[lead:]
        if (k.ndim - lead not in (2, 3) or len(set(window)) != 1 or window[0] % 2 == 0
                or tuple(k.shape[1:lead]) != (self.channels,) * (lead - 1)):
            expected = "(M, *window)" if self.channels == 1 else \
                f"(M, {self.channels}, {self.channels}, *window)"
            raise ValueError(f"kernels must have shape {expected} with an odd cubic window, "
                             f"got {tuple(k.shape)}")
        m = k.shape[0]
        self.kernels = k
        self.dilations = torch.as_tensor(self.dilations, dtype=torch.int64).reshape(-1)
        self.class_index = torch.as_tensor(self.class_index, dtype=torch.int64).reshape(-1)
        if len(self.dilations) != m or len(self.class_index) != m:
            raise ValueError(f"dilations and class_index need {m} entries, got "
                             f"{len(self.dilations)} and {len(self.class_index)}")
        if (self.dilations < 1).any():
            raise ValueError("dilations must be >= 1")
        if self.class_index.numel() and int(self.class_index.max()) >= len(self.class_names):
            raise ValueError("class_index refers past class_names")
        centre = k[(slice(None),) * lead + (self.radius,) * self.ndim]
        if self.channels > 1:
            centre = torch.diagonal(centre, dim1=1, dim2=2)            # each output's own
        if torch.any(centre != 0):
            raise ValueError("bank kernels must have a zero centre weight (for vector "
                             "kernels: on each output channel's own input)")
        if self.explained_variance is not None:
            self.explained_variance = torch.as_tensor(self.explained_variance,
                                                      dtype=torch.float64).reshape(m)
        self.class_names = [str(c) for c in self.class_names]
        if self.kernel_methods is None:
            self.kernel_methods = [self.method] * m
        self.kernel_methods = [str(v) for v in self.kernel_methods]
        if len(self.kernel_methods) != m:
            raise ValueError(f"kernel_methods needs {m} entries, got {len(self.kernel_methods)}")

    # ------------------------------------------------------------------ geometry
    @property
    def radius(self) -> int:
        return int(self.kernels.shape[-1] // 2)

    @property
    def ndim(self) -> int:
        return int(self.kernels.ndim - (1 if self.channels == 1 else 3))

    def __len__(self) -> int:
        return int(self.kernels.shape[0])

    @property
    def max_reach(self) -> int:
        """Largest ``radius * dilation`` of any kernel, in pixels."""
        return self.radius * int(self.dilations.max())

    @property
    def kernel_names(self) -> list[str]:
        """Stable names ``k<index>_<class or method>_d<dilation>``."""
        width = max(2, len(str(len(self) - 1)))
        names = []
        for i, (c, d) in enumerate(zip(self.class_index.tolist(), self.dilations.tolist())):
            origin = _slug(self.class_names[c]) if c >= 0 else self.kernel_methods[i]
            names.append(f"k{i:0{width}d}_{origin}_d{d}")
        return names

    @property
    def output_names(self) -> list[str]:
        """One name per predicted channel of each kernel: :attr:`kernel_names` for one
        channel, ``<kernel name>_c<channel>`` (kernel-major) for vector kernels."""
        if self.channels == 1:
            return self.kernel_names
        return [f"{name}_c{c}" for name in self.kernel_names for c in range(self.channels)]

    # ------------------------------------------------------------------ learned banks
    @classmethod
    def from_stats(cls, stats: ClassStats, method: str = "pooled", *,
                   n_components: int | float | None = None, ridge: float = 1e-6,
                   random_state: int | np.random.Generator | None = 0) -> "KernelBank":
        """A bank of ``method`` (see the module docstring) from per-class statistics,
        kernels grouped by class in ``stats.classes`` order.

        Parameters
        ----------
        stats : ClassStats
        method : {"pooled", "pca", "kmeans"}, default="pooled"
        n_components : int or float, optional
            ``pca``: an int is the number of principal directions per class (default 2);
            a float in (0, 1) keeps the fewest directions explaining that fraction of
            the coefficient variance. ``kmeans``: centroids per class (default 4).
        ridge : float, default=1e-6
            Per-pixel ridge of the pooled solve.
        random_state : int, Generator or None, default=0
            Seeds k-means.
        """
        if method not in BANK_METHODS:
            raise ValueError(f"method must be one of {BANK_METHODS}, got {method!r}")
        basis = stats.require_basis()
        rng = np.random.default_rng(random_state)
        channel = basis.channels > 1
        coefs, owners, variances = [], [], []
        for index, name in enumerate(stats.classes):
            part = stats[name]
            if method == "pooled":
                rows = pooled_model(part.sum_gram, part.n_pixels, basis,
                                    ridge)[0].flatten().numpy()[None]
                var = [np.nan]
            elif method == "pca":
                rows, var = _pca_rows(part.mean_coef, part.covariance,
                                      2 if n_components is None else n_components)
            else:
                k = 4 if n_components is None else int(n_components)
                if k < 1:
                    raise ValueError(f"n_components must be >= 1 for kmeans, got {n_components!r}")
                rows = kmeans(part.sample, k, rng)
                var = [np.nan] * len(rows)
            coefs.append(rows)
            variances.extend(var)
            owners.extend([index] * len(rows))
        coef = torch.from_numpy(np.concatenate(coefs))
        if channel:
            coef = coef.reshape(len(coef), basis.channels, basis.n_components)
        meta = {"basis": stats.basis_meta, "ridge": ridge, "n_components": n_components,
                "counts": {c: stats.count(c) for c in stats.classes}}
        return cls(basis.to_kernels(coef), [basis.dilation] * len(coef), owners,
                   stats.classes, method,
                   torch.tensor(variances) if method == "pca" else None, meta,
                   channels=basis.channels)

    # ------------------------------------------------------------------ predefined banks
    @classmethod
    def gabor(cls, radius: int = 4, n_orientations: int = 4,
              frequencies: Sequence[float] = (0.125, 0.25), dilation: int = 1,
              sigma: float | None = None) -> "KernelBank":
        """Gabor predictors: ``exp(-|p|²/2σ²) cos(2π f ⟨p, u_θ⟩)``, centre zeroed, unit L2.

        Parameters
        ----------
        radius : int, default=4
        n_orientations : int, default=4
            Orientations ``θ = π i / n_orientations``.
        frequencies : sequence of float, default=(0.125, 0.25)
            Cycles per tap, in (0, 0.5].
        dilation : int, default=1
        sigma : float, optional
            Gaussian width in taps; default ``radius / 2``.
        """
        if n_orientations < 1 or not frequencies:
            raise ValueError("gabor needs n_orientations >= 1 and at least one frequency")
        s = radius / 2 if sigma is None else float(sigma)
        axis = np.arange(-radius, radius + 1, dtype=np.float64)
        yy, xx = np.meshgrid(axis, axis, indexing="ij")
        envelope = np.exp(-(xx**2 + yy**2) / (2 * s * s))
        kernels = []
        for f in frequencies:
            if not 0 < f <= 0.5:
                raise ValueError(f"gabor frequencies must lie in (0, 0.5] cycles/tap, got {f!r}")
            for i in range(n_orientations):
                theta = np.pi * i / n_orientations
                k = envelope * np.cos(2 * np.pi * f * (xx * np.cos(theta) + yy * np.sin(theta)))
                k[radius, radius] = 0
                kernels.append(k / np.linalg.norm(k))
        m = len(kernels)
        return cls(np.stack(kernels), [dilation] * m, [-1] * m, [], "gabor", None,
                   {"radius": radius, "n_orientations": n_orientations,
                    "frequencies": [float(f) for f in frequencies], "sigma": s})

    @classmethod
    def random(cls, radius: int = 4, n_kernels: int = 8, dilation: int = 1, ndim: int = 2,
               random_state: int | np.random.Generator | None = 0, *,
               channels: int = 1) -> "KernelBank":
        """Gaussian random kernels, centre zeroed, unit L2 norm.

        With ``channels > 1``, vector kernels ``(C, C, *window)`` with each output
        channel's own centre zeroed, unit L2 norm per output channel.
        """
        if n_kernels < 1:
            raise ValueError(f"n_kernels must be >= 1, got {n_kernels!r}")
        rng = np.random.default_rng(random_state)      # one channel: (M, 1, 1, *window)
        k = rng.normal(size=(n_kernels, channels, channels) + (2 * radius + 1,) * ndim)
        own = np.arange(channels)
        k[(slice(None), own, own) + (radius,) * ndim] = 0
        norm = np.linalg.norm(k.reshape(n_kernels, channels, -1), axis=-1)
        k /= norm.reshape(norm.shape + (1,) * (ndim + 1))
        return cls(k[:, 0, 0] if channels == 1 else k, [dilation] * n_kernels, [-1] * n_kernels,
                   [], "random", None, {"radius": radius}, channels=channels)

    # ------------------------------------------------------------------ combining
    @classmethod
    def concat(cls, banks: Sequence["KernelBank"]) -> "KernelBank":
        """One bank holding the kernels of several (same radius and ndim), in order.

        Class names are unioned in order of first appearance.
        """
        banks = list(banks)
        if not banks:
            raise ValueError("concat needs at least one bank")
        shapes = {tuple(b.kernels.shape[1:]) for b in banks}
        if len(shapes) != 1 or len({b.channels for b in banks}) != 1:
            raise ValueError(f"banks to concat must share one window shape and channel count, "
                             f"got {sorted(shapes)}")
        names: list[str] = []
        for b in banks:
            names.extend(c for c in b.class_names if c not in names)
        index = [torch.tensor([names.index(b.class_names[i]) if i >= 0 else -1
                               for i in b.class_index.tolist()], dtype=torch.int64)
                 for b in banks]
        methods = {b.method for b in banks}
        ev = None
        if any(b.explained_variance is not None for b in banks):
            ev = torch.cat([b.explained_variance if b.explained_variance is not None
                            else torch.full((len(b),), float("nan"), dtype=torch.float64)
                            for b in banks])
        return cls(torch.cat([b.kernels for b in banks]), torch.cat([b.dilations for b in banks]),
                   torch.cat(index), names, methods.pop() if len(methods) == 1 else "mixed", ev,
                   {"parts": [b.metadata for b in banks]},
                   [m for b in banks for m in b.kernel_methods], banks[0].channels)

    def __repr__(self) -> str:
        channels = f"channels={self.channels}, " if self.channels > 1 else ""
        return (f"KernelBank(method={self.method!r}, n_kernels={len(self)}, radius={self.radius}, "
                f"ndim={self.ndim}, {channels}dilations={sorted(set(self.dilations.tolist()))}, "
                f"classes={self.class_names})")


def _pca_rows(mean: np.ndarray, cov: np.ndarray, n_components: int | float
              ) -> tuple[np.ndarray, list[float]]:
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
    # deterministic signs: each direction's largest-magnitude entry is positive
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1, signs)
    if isinstance(n_components, (float, np.floating)):
        if not 0 < n_components < 1:
            raise ValueError(f"a float n_components must lie in (0, 1), got {n_components!r}")
        total = values.sum()
        ratio = np.cumsum(values) / total if total > 0 else np.ones_like(values)
        count = int(np.searchsorted(ratio, n_components) + 1)
    else:
        count = int(n_components)
        if count < 0:
            raise ValueError(f"n_components must be >= 0 for pca, got {n_components!r}")
    count = min(count, len(values))
    rows, var = [mean], [np.nan]
    for j in range(count):
        step = np.sqrt(values[j]) * vectors[:, j]
        rows.extend([mean + step, mean - step])
        var.extend([values[j], values[j]])
    return np.array(rows), var
