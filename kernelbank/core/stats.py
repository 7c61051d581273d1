r"""Mergeable per-class statistics of AR fits.

For every class and a fixed basis, :class:`ClassStats` keeps the sums every bank method
needs::

    n        number of images
    Σα       (k,)    sum of fitted coefficient rows (k = C m)
    Σααᵀ     (k, k)  sum of their outer products          → mean and covariance (pca)
    ΣA       (M, M)  sum of the images' A = Σ z zᵀ        → pooled kernel of the class
    Σh, Σx²  (M, C), (C, C)  its regressors × targets and targets × targets blocks
    Σn_pix   number of valid pixels
    Σmse, Σmse²      per-image own-fit residual variance det(Σ_own)^(1/C) (the MSE for C = 1)
    reservoir        a bounded sample of coefficient rows  → kmeans

``A`` is the Gram of the basis's regressor rows (:mod:`kernelbank.core.solve`; grey:
``[[G, h], [hᵀ, Σx²]]``); the pooled class model is each output channel's solve on the
summed ``A`` (:func:`pooled_model`). Merging is adding (``a + b``, ``sum(parts)``): the
reservoir keeps the ``k`` rows of lowest *priority* among both, a keyed hash of the
row's bytes (:func:`_priorities`), so the sample is a uniformly random subset whatever
the batching or merge order.

All sums are float64 (counts int64); they merge exactly up to float64 rounding. The
file format is :mod:`kernelbank.io.stats_file`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np
import torch

from .basis import Basis
from .fit import FitResult, fit_result_from_sums
from .solve import augmented, generalised_variance, residual_covariance, solve_coefficients
from .sums import WindowSums

__all__ = ["ClassStats", "ClassSums"]

DEFAULT_RESERVOIR = 512


def _priorities(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform 64-bit priority per row: a hash of its float64 words keyed by ``seed``
    (each word mixed into the row's state by splitmix64's finaliser, all rows at once;
    a blake2b per row took 2.6 µs, 8 CPU-seconds of a million-image fit)."""
    words = np.ascontiguousarray(rows, dtype=np.float64).reshape(len(rows), -1).view(np.uint64)
    state = _mix(np.full(len(words), int(seed) & _MASK, dtype=np.uint64) ^ _GOLDEN)
    for column in words.T:
        state = _mix(state ^ column)
    return state


_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps, as the hash wants)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _lowest(rows: np.ndarray, priority: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of lowest priority, sorted by it. Equal priorities are equal rows
    (the priority hashes the row's bytes), so their order changes nothing; a lexsort by
    the row values as well took 1.9 ms a merge (25 CPU-s of a million-image run)."""
    order = np.argsort(priority, kind="stable")[:k]
    return rows[order], priority[order]


@dataclass
class ClassSums:
    """The sums of one class (see the module docstring). Arrays are float64 numpy."""

    n: int
    sum_coef: np.ndarray
    sum_outer: np.ndarray
    sum_gram: np.ndarray
    sum_rhs: np.ndarray
    sum_sq: np.ndarray
    n_pixels: int
    sum_mse: float
    sum_mse_sq: float
    sample: np.ndarray            # (k, m) reservoir rows, sorted by priority
    sample_priority: np.ndarray   # (k,) uint64

    @property
    def mean_coef(self) -> np.ndarray:
        """Mean coefficient vector, shape (m,)."""
        return self.sum_coef / self.n

    @property
    def covariance(self) -> np.ndarray:
        """Population covariance of the coefficients, shape (m, m)."""
        mean = self.mean_coef
        cov = self.sum_outer / self.n - np.outer(mean, mean)
        return (cov + cov.T) / 2

    def merge(self, other: "ClassSums", reservoir_size: int) -> "ClassSums":
        """Every count and sum adds; the reservoir keeps the lowest priorities of both."""
        rows, priority = _lowest(np.concatenate([self.sample, other.sample]),
                                 np.concatenate([self.sample_priority, other.sample_priority]),
                                 reservoir_size)
        sums = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                if not f.name.startswith("sample")}
        return ClassSums(**sums, sample=rows, sample_priority=priority)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, shapes: dict[str, tuple[int, ...]]) -> "ClassSums":
        """Inverse of :meth:`to_dict`; ``shapes`` (:func:`_field_shapes`) restores flattened
        arrays."""
        arrays = {key: np.array(d[key], np.float64).reshape(shape) for key, shape in shapes.items()}
        return cls(n=int(d["n"]), n_pixels=int(d["n_pixels"]), sum_mse=float(d["sum_mse"]),
                   sum_mse_sq=float(d["sum_mse_sq"]), **arrays,
                   sample_priority=np.array(d["sample_priority"], np.uint64).reshape(-1))


def _field_shapes(basis: Basis) -> dict[str, tuple[int, ...]]:
    """Shape of each per-class array of statistics with this basis."""
    k, rows, channels = basis.channels * basis.n_components, len(basis.regressors), \
        basis.channels
    return {"sum_coef": (k,), "sum_outer": (k, k), "sum_gram": (rows, rows),
            "sum_rhs": (rows, channels), "sum_sq": (channels, channels), "sample": (-1, k)}


def own_variance(result: FitResult) -> torch.Tensor:
    """Residual variance of every image's own fit, ``det(Σ_own)^(1/C)``, float64 on the CPU
    (one channel: its MSE)."""
    if result.basis.channels > 1:
        return generalised_variance(result.covariance.detach().cpu())
    mse = result.mse if result.covariance is None else result.mse[..., 0]
    return mse.detach().cpu().to(torch.float64)


def _image_rows(result: FitResult, scale: int | None) -> dict[str, np.ndarray]:
    """Per-image arrays :meth:`ClassStats.from_fit` sums, float64 numpy (see the module
    docstring); a grey result's ``G``, ``h``, ``Σx²`` are read as its ``A``."""
    pick = (lambda t: t[:, scale]) if scale is not None else (lambda t: t)
    numpy = lambda t: t.detach().cpu().to(torch.float64).numpy()  # noqa: E731
    # the scale is picked before a grey A is assembled: one copy, not one per scale
    gram = pick(result.gram) if result.covariance is not None else \
        augmented(pick(result.gram), pick(result.rhs), pick(result.sum_sq))
    gram, mse, n = numpy(gram), pick(own_variance(result)), len(result)
    targets = result.basis.targets.numpy()
    return {"n_pixels": pick(result.n_pixels).detach().cpu().numpy().astype(np.int64),
            "coef": numpy(pick(result.coef)).reshape(n, -1), "gram": gram,
            "mse": numpy(mse).reshape(n),
            "rhs": gram[:, :, targets], "sum_sq": gram[:, targets[:, None], targets[None, :]]}


def pooled_model(sum_gram: np.ndarray | torch.Tensor, n_pixels, basis: Basis, ridge: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled vector kernel (…, C, m) and its residual covariance (…, C, C) from the
    summed ``A (…, M, M)`` of one or more classes of a multi-channel basis, float64."""
    gram = torch.as_tensor(np.asarray(sum_gram, dtype=np.float64))
    count = torch.as_tensor(np.asarray(n_pixels, dtype=np.int64))
    coef = solve_coefficients(gram, count, basis, ridge)
    return coef, residual_covariance(gram, count, basis, coef)


@dataclass
class ClassStats:
    """Per-class sufficient statistics of AR fits with one basis; merge with ``+``.

    Build one with :meth:`from_fit`; merge partial statistics with ``a + b`` or
    ``sum(parts)``; ship them between processes with :meth:`to_dict` /
    :meth:`from_dict`; turn them into banks with :meth:`KernelBank.from_stats`.

    Attributes
    ----------
    basis : Basis or None
        The basis (at its dilation) every class was fitted with; None when empty.
    sums : dict of str to ClassSums
        The sums of each class.
    scale : int
        Pyramid scale factor the fits were made at (1 = original resolution).
    reservoir_size : int
        Maximum number of coefficient rows kept per class for kmeans.
    seed : int
        Key of the row priorities; only statistics with the same seed merge.

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> images = np.random.default_rng(0).normal(size=(6, 24, 24))
    >>> result = kb.fit(images, kb.Basis.isotropic(radius=2))
    >>> a = kb.ClassStats.from_fit(result, ["x"] * 3 + ["y"] * 3)
    >>> a.classes, a.count("x")
    (['x', 'y'], 3)
    """

    basis: Basis | None = None
    sums: dict[str, ClassSums] = field(default_factory=dict)
    scale: int = 1
    reservoir_size: int = DEFAULT_RESERVOIR
    seed: int = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def empty(cls, reservoir_size: int = DEFAULT_RESERVOIR, seed: int = 0) -> "ClassStats":
        """The identity of ``+``."""
        return cls(None, {}, 1, reservoir_size, seed)

    @classmethod
    def from_fit(cls, result, labels: Sequence[str], *, scale: int | None = None,
                 reservoir_size: int = DEFAULT_RESERVOIR, seed: int = 0) -> "ClassStats":
        """Per-class statistics of a :class:`~kernelbank.core.fit.FitResult` of N images
        with their ``labels`` (converted with ``str``); ``scale``: the index into
        ``result.scale_index`` when the result has a scale axis. ``reservoir_size`` rows of
        coefficients are sampled per class (for kmeans banks), by priorities keyed by
        ``seed``."""
        labels = [str(v) for v in labels]
        n = len(result)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but the fit result has {n} images")
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size!r}")
        multi = result.n_pixels.ndim == 2
        if multi and scale is None:
            raise ValueError(
                f"the fit result has a scale axis of {result.coef.shape[1]} entries "
                f"{result.scale_index}; pass scale=<index> to pick one")
        factor, dilation = result.scale_index[scale if multi else 0]
        basis = result.basis.with_dilation(dilation)
        rows = _image_rows(result, scale if multi else None)
        coef, gram, rhs, sum_sq, n_pix, mse = (rows[k] for k in (
            "coef", "gram", "rhs", "sum_sq", "n_pixels", "mse"))
        priority = _priorities(coef, seed)
        sums = {}
        label_array = np.array(labels, dtype=object)
        for name in sorted(set(labels)):
            rows = np.nonzero(label_array == name)[0]
            c = coef[rows]
            sample, sample_priority = _lowest(c, priority[rows], reservoir_size)
            sums[name] = ClassSums(
                n=len(rows), sum_coef=c.sum(0), sum_outer=c.T @ c, sum_gram=gram[rows].sum(0),
                sum_rhs=rhs[rows].sum(0), sum_sq=sum_sq[rows].sum(0),
                n_pixels=int(n_pix[rows].sum()), sum_mse=float(mse[rows].sum()),
                sum_mse_sq=float((mse[rows] ** 2).sum()),
                sample=sample, sample_priority=sample_priority)
        return cls(basis, sums, int(factor), int(reservoir_size), int(seed))

    @classmethod
    def from_sums(cls, sums: WindowSums, labels: Sequence[str], basis: Basis, *,
                  ridge: float = 1e-6, coef: torch.Tensor | None = None,
                  mse: torch.Tensor | None = None, reservoir_size: int = DEFAULT_RESERVOIR,
                  seed: int = 0) -> "ClassStats":
        """Per-class statistics of ``basis`` from the whole-image window sums of N images,
        without the pixels: :meth:`from_fit` of
        :func:`~kernelbank.core.fit.fit_result_from_sums` (``sums, basis, ridge, coef,
        mse``: its arguments; ``mse`` one channel only), hence equal to
        ``from_fit(fit(images, basis, ridge=ridge), labels)`` on sums of the images as
        ``fit`` models them at the basis's radius."""
        if basis.channels > 1 and mse is not None:
            raise ValueError("mse is not used with several channels (the residual covariance "
                             "comes from the sums); pass coef alone")
        result = fit_result_from_sums(sums, basis, ridge, coef=coef, mse=mse)
        return cls.from_fit(result, labels, reservoir_size=reservoir_size, seed=seed)

    # ------------------------------------------------------------------ merging
    def __add__(self, other: "ClassStats") -> "ClassStats":
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, ClassStats):
            return NotImplemented
        if self.seed != other.seed or self.reservoir_size != other.reservoir_size:
            raise ValueError(
                f"cannot merge statistics with different reservoir settings (seed "
                f"{self.seed} vs {other.seed}, reservoir_size {self.reservoir_size} vs "
                f"{other.reservoir_size}); build both with the same from_fit arguments")
        if self.basis is None:
            return other
        if other.basis is None:
            return self
        if not self.basis.same_as(other.basis) or self.scale != other.scale:
            raise ValueError(
                f"cannot merge statistics of different bases: {self.basis} at scale "
                f"{self.scale} vs {other.basis} at scale {other.scale}")
        sums = dict(self.sums)
        for name, part in other.sums.items():
            sums[name] = sums[name].merge(part, self.reservoir_size) if name in sums else part
        return ClassStats(self.basis, dict(sorted(sums.items())), self.scale,
                          self.reservoir_size, self.seed)

    __radd__ = __add__          # 0 + stats, for sum(parts); merging is commutative

    @classmethod
    def merge(cls, parts: Iterable["ClassStats"]) -> "ClassStats":
        """Sum of any number of statistics (the identity when ``parts`` is empty)."""
        parts = list(parts)
        return sum(parts[1:], parts[0]) if parts else cls.empty()

    # ------------------------------------------------------------------ access
    @property
    def classes(self) -> list[str]:
        """Class names, sorted."""
        return sorted(self.sums)

    def count(self, name: str) -> int:
        """Number of images of class ``name`` (0 when absent)."""
        part = self.sums.get(str(name))
        return 0 if part is None else part.n

    def __getitem__(self, name: str) -> ClassSums:
        try:
            return self.sums[str(name)]
        except KeyError:
            raise KeyError(f"no class {name!r}; classes are {self.classes}") from None

    @property
    def basis_meta(self) -> dict:
        """JSON-friendly description of the basis and scale."""
        if self.basis is None:
            return {}
        return {**self.basis.describe(), "scale": self.scale}

    def require_basis(self) -> Basis:
        if self.basis is None or not self.sums:
            raise ValueError("these statistics are empty: build them with ClassStats.from_fit")
        return self.basis

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Plain numpy arrays, str and int only (picklable; Arrow/JSON friendly)."""
        return {"version": 1, "scale": self.scale, "reservoir_size": self.reservoir_size,
                "seed": self.seed,
                "basis": None if self.basis is None else self.basis.to_dict(),
                "classes": {name: part.to_dict() for name, part in sorted(self.sums.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassStats":
        """Inverse of :meth:`to_dict`."""
        if int(d.get("version", 0)) != 1:
            raise ValueError(f"unsupported ClassStats dict version {d.get('version')!r}")
        basis = None if d["basis"] is None else Basis.from_dict(d["basis"])
        shapes = None if basis is None else _field_shapes(basis)
        sums = {str(k): ClassSums.from_dict(v, shapes) for k, v in sorted(d["classes"].items())}
        return cls(basis, sums, int(d["scale"]), int(d["reservoir_size"]), int(d["seed"]))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v.n}" for k, v in sorted(self.sums.items()))
        return f"ClassStats(basis={self.basis}, scale={self.scale}, classes: {counts})"
