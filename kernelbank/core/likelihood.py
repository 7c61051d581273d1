r"""A generative classifier from class statistics alone: one AR model per class.

Class ``c`` is its pooled vector kernel ``α_c`` and the ``C × C`` residual covariance
``Σ_c`` of its training pixels under it (grey: ``C = 1``, ``Σ_c = σ_c²``), which the
statistics give exactly (:func:`~kernelbank.core.stats.pooled_model`). An image's
residual covariance under class ``c``, ``S_c(x) = U_c A(x) U_cᵀ / n``, is algebra on the
image's own sums ``A`` (:mod:`kernelbank.core.solve`; grey: ``mse_c(x) = (Σx² − 2α_cᵀh +
α_cᵀGα_c) / n``), and its per-pixel Gaussian log-likelihood is

    ℓ_c(x) = -½ (C log 2π + log det Σ_c + tr(Σ_c⁻¹ S_c(x)))

With several models (dilations or pyramid scales, one :class:`ClassStats` each) the
per-pixel log-likelihoods add; the prediction is ``argmax_c Σ_models ℓ_c``.
Probabilities are ``softmax(Σ_models n · ℓ)``, the likelihood of the ``n`` valid pixels
as if residuals were independent (very confident); ``temperature=t`` gives
``softmax(Σ_models ℓ / t)`` instead.

**Unknown.** With the one-number "mse" ``det(S)^(1/C)`` (the MSE for one channel), each
class keeps the mean and spread over its training images of the *level* ``log mse_c(x)``
and the *excess* ``log(mse_c(x) / mse_own(x))`` (≥ 0: how much worse the class kernel
predicts the image than its own kernel). Class ``c`` explains ``x`` when its |level
z-score| and (one-sided) excess z-score, averaged over the models, stay within ``z``;
an image no class explains is "unknown". From statistics alone the means are
``log σ_c²`` and ``log(σ_c² / mean own-fit mse)`` and both widths the log-normal width
of the own-fit MSEs (a rough guess); :meth:`LikelihoodClassifier.calibrate` measures them.

**Without pixels.** Every score needs only each image's own sums and own-fit MSE, so each
scoring method has a ``*_from_sums`` twin taking the images' window sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .basis import Basis
from .fit import FitResult, fit, fit_result_from_sums, select_sums
from .solve import (augmented, generalised_variance, shared_residual_covariance,
                    shared_residual_covariance_from_sums)
from .stats import ClassStats, own_variance, pooled_model
from .sums import WindowSums

__all__ = ["LikelihoodClassifier", "UNKNOWN"]

UNKNOWN = "unknown"
_MIN_LOG_STD = 0.02     # floor on s_c: a class of near-identical images still gets a range
_OWN_FIT_RIDGE = 1e-6   # ridge of each scored image's own fit (the excess z-score's baseline)


@dataclass
class _Model:
    basis: Basis
    scale: int
    coef: torch.Tensor        # (C, channels, m) float64
    variance: torch.Tensor    # (C,) generalised variance (one channel: the MSE)
    log_mean: torch.Tensor    # (C,) training log mse_c
    log_std: torch.Tensor     # (C,)
    excess_mean: torch.Tensor  # (C,) training log(mse_c / own-fit mse)
    excess_std: torch.Tensor   # (C,)
    covariance: torch.Tensor  # (C, channels, channels); (C, 1, 1) for grey


def _model_scores(result, model: _Model) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) "mse" of every image under every class of a model, and ``ℓ``."""
    gram = result.gram.cpu() if result.covariance is not None else \
        augmented(result.gram.cpu(), result.rhs.cpu(), result.sum_sq.cpu())     # grey: A
    residual = shared_residual_covariance(gram, result.n_pixels.cpu(), model.basis, model.coef)
    return _scores_of(residual, model)


def _scores_of(residual: torch.Tensor, model: _Model) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) "mse" and ``ℓ`` of residual covariances (N, C, ch, ch) under a model."""
    channels = residual.shape[-1]
    trace = (torch.linalg.inv(model.covariance)[None] * residual).sum((-2, -1))
    logdet = torch.logdet(model.covariance)
    loglik = -0.5 * (channels * np.log(2 * np.pi) + logdet + trace)
    return generalised_variance(residual), loglik


class LikelihoodClassifier:
    """Per-class pooled AR models scored by Gaussian residual likelihood.

    Build with :meth:`from_stats`; see the module docstring for the math.

    Attributes
    ----------
    classes : list of str
    models : list
        One per ClassStats given: basis, scale, class coefficients (C, m), variances,
        and the training range of log MSE per class.
    z : float or None
        Rejection threshold in training standard deviations; None never rejects.
    temperature : float or None
    normalize : bool

    Examples
    --------
    >>> import numpy as np, kernelbank as kb
    >>> rng = np.random.default_rng(0)
    >>> smooth, rough = rng.normal(size=(8, 24, 24)).cumsum(2), rng.normal(size=(8, 24, 24))
    >>> basis = kb.Basis.isotropic(radius=1)
    >>> result = kb.fit(np.concatenate([smooth, rough]), basis)
    >>> stats = kb.ClassStats.from_fit(result, ["smooth"] * 8 + ["rough"] * 8)
    >>> clf = kb.LikelihoodClassifier.from_stats(stats)
    >>> list(clf.predict(np.stack([smooth[0], rough[0]])))
    ['smooth', 'rough']
    """

    def __init__(self, classes: Sequence[str], models: list[_Model], z: float | None = 4.0,
                 temperature: float | None = None, normalize: bool = True):
        self.classes = list(classes)
        self.models = models
        self.z = z
        self.temperature = temperature
        self.normalize = normalize

    @classmethod
    def from_stats(cls, stats: ClassStats | Sequence[ClassStats], *, ridge: float = 1e-6,
                   z: float | None = 4.0, temperature: float | None = None,
                   normalize: bool = True) -> "LikelihoodClassifier":
        """One model per :class:`ClassStats` (e.g. one per dilation), same classes in each.

        Parameters
        ----------
        stats : ClassStats or sequence of ClassStats
        ridge : float, default=1e-6
            Per-pixel ridge of the pooled solve.
        z : float or None, default=4.0
            Rejection threshold (see the module docstring); None disables "unknown".
        temperature : float or None, default=None
            None: probabilities ``softmax(n · ℓ)``; a float t: ``softmax(ℓ / t)``.
        normalize : bool, default=True
            Must match how the statistics were fitted (z-scored images by default).
        """
        parts = [stats] if isinstance(stats, ClassStats) else list(stats)
        if not parts:
            raise ValueError("stats is empty: pass at least one ClassStats")
        classes = parts[0].classes
        models = []
        for part in parts:
            basis = part.require_basis()
            if part.classes != classes:
                raise ValueError(f"every ClassStats needs the same classes; got {part.classes} "
                                 f"and {classes}")
            sums = [part[c] for c in classes]
            coef, covariance = pooled_model(np.stack([s.sum_gram for s in sums]),
                                            [s.n_pixels for s in sums], basis, ridge)
            variance = generalised_variance(covariance)
            covariance = _regularised(covariance)
            mean_own = torch.tensor([s.sum_mse / s.n for s in sums], dtype=torch.float64)
            var_own = torch.tensor([max(s.sum_mse_sq / s.n - (s.sum_mse / s.n) ** 2, 0.0)
                                    for s in sums], dtype=torch.float64)
            log_std = torch.sqrt(torch.log1p(var_own / mean_own.clamp_min(1e-300) ** 2))
            log_std = log_std.clamp_min(_MIN_LOG_STD)
            excess = (variance / mean_own.clamp_min(1e-300)).log().clamp_min(0)
            models.append(_Model(basis, part.scale, coef, variance, variance.log(), log_std,
                                 excess, log_std.clone(), covariance))
        return cls(classes, models, z, temperature, normalize)

    # ------------------------------------------------------------------ own fits
    # each image's own fit per model, from the pixels or from window sums, then the same
    # private scoring below
    def _fits(self, images) -> list[FitResult]:
        return [fit(images, m.basis, ridge=_OWN_FIT_RIDGE, normalize=self.normalize,
                    scales=m.scale) for m in self.models]

    def _model_sums(self, sums: Sequence[WindowSums]) -> list[WindowSums]:
        """Each model's entry of ``sums`` (its dilation and scale), of the same images."""
        sums = list(sums)
        chosen = [select_sums(sums, m.basis.dilation, scale=m.scale,
                              needed_by=f"the model of {m.basis} at scale {m.scale}")
                  for m in self.models]
        if len({len(c) for c in chosen}) != 1:
            raise ValueError(f"the window sums of the models hold different numbers of images "
                             f"{sorted({len(c) for c in chosen})}; pass sums of the same "
                             "images for every model")
        return chosen

    def _fits_from_sums(self, sums: Sequence[WindowSums]) -> list[FitResult]:
        return [fit_result_from_sums(c, m.basis, _OWN_FIT_RIDGE)
                for c, m in zip(self._model_sums(sums), self.models)]

    # ------------------------------------------------------------------ scoring
    def _residual_mse(self, fits: list[FitResult]) -> torch.Tensor:
        return torch.stack([_model_scores(r, m)[0] for r, m in zip(fits, self.models)], 1)

    def _scores(self, fits: list[FitResult], deviation: bool = True):
        scores = [_model_scores(r, m) for r, m in zip(fits, self.models)]
        mse = torch.stack([s[0] for s in scores], 1)                      # (N, S, C)
        loglik = torch.stack([s[1] for s in scores], 1)                   # (N, S, C)
        n_pix = torch.stack([r.n_pixels.cpu() for r in fits], 1).to(torch.float64)  # (N, S)
        return loglik, n_pix, self._deviation(mse, fits) if deviation else None

    def _deviation(self, mse: torch.Tensor, fits: list[FitResult]) -> torch.Tensor:
        """(N, C): per class, the larger of the level and excess z-scores, mean over models."""
        stack = lambda key: torch.stack([getattr(m, key) for m in self.models])  # noqa: E731
        own = torch.stack([own_variance(r) for r in fits], 1)                    # (N, S)
        log_mse = mse.log()
        level = ((log_mse - stack("log_mean")) / stack("log_std")).abs()
        excess = (log_mse - own.clamp_min(1e-300).log()[:, :, None] - stack("excess_mean")) \
            / stack("excess_std")
        return torch.maximum(level, excess).mean(1)

    def _log_proba(self, fits: list[FitResult]) -> torch.Tensor:
        loglik, n_pix, _ = self._scores(fits)
        if self.temperature is None:
            logits = (loglik * n_pix[:, :, None]).sum(1)
        else:
            logits = loglik.sum(1) / self.temperature
        return torch.log_softmax(logits, dim=1)

    def _predict(self, fits: list[FitResult]) -> np.ndarray:
        loglik, _, deviation = self._scores(fits, deviation=self.z is not None)
        names = np.array(self.classes, dtype=object)[loglik.sum(1).argmax(1).numpy()]
        if self.z is not None:
            names[(deviation > self.z).all(1).numpy()] = UNKNOWN
        return names

    def _calibrate(self, fits: list[FitResult], labels: Sequence[str]) -> "LikelihoodClassifier":
        labels = np.array([str(v) for v in labels], dtype=object)
        log_mse = self._residual_mse(fits).log()                          # (N, S, C)
        own = torch.stack([own_variance(r) for r in fits], 1).clamp_min(1e-300).log()
        if len(labels) != log_mse.shape[0]:
            raise ValueError(f"labels has {len(labels)} entries for {log_mse.shape[0]} images")
        for c, name in enumerate(self.classes):
            rows = torch.from_numpy(np.nonzero(labels == name)[0])
            if len(rows) == 0:
                continue
            values = log_mse[rows, :, c]                                  # (n_c, S)
            excess = values - own[rows]
            for s, model in enumerate(self.models):
                model.log_mean[c], model.log_std[c] = _mean_std(values[:, s])
                model.excess_mean[c], model.excess_std[c] = _mean_std(excess[:, s])
        return self

    # ------------------------------------------------------------------ from images
    def residual_mse(self, images) -> torch.Tensor:
        """Residual MSE of every image under every class and model, shape (N, n_models, C)."""
        return self._residual_mse(self._fits(images))

    def log_likelihood(self, images) -> torch.Tensor:
        """Per-pixel average Gaussian log-likelihood ``ℓ_c``, summed over models, (N, C)."""
        return self._scores(self._fits(images))[0].sum(1)

    def predict_log_proba(self, images) -> torch.Tensor:
        """Log posterior over classes (uniform prior), shape (N, C), float64."""
        return self._log_proba(self._fits(images))

    def predict_proba(self, images) -> torch.Tensor:
        """Posterior probabilities over classes, shape (N, C)."""
        return self.predict_log_proba(images).exp()

    def deviation(self, images) -> torch.Tensor:
        """Training-standard-deviations between each image's log MSE and each class's, (N, C)."""
        return self._scores(self._fits(images))[2]

    def predict(self, images) -> np.ndarray:
        """Most likely class name per image, or ``"unknown"`` where no class explains it.

        Returns
        -------
        ndarray of shape (N,), dtype object
        """
        return self._predict(self._fits(images))

    def calibrate(self, images, labels: Sequence[str]) -> "LikelihoodClassifier":
        """Replace each class's log-MSE range by the one measured on ``images`` of the
        classes (usually the training set) with their ``labels``; returns self."""
        return self._calibrate(self._fits(images), labels)

    # ------------------------------------------------------------------ from window sums
    # ``sums``: whole-image WindowSums of the images (normalised as ``normalize`` says) at
    # each model's dilation and scale and a radius >= its basis's; others are ignored
    def residual_mse_from_sums(self, sums: Sequence[WindowSums]) -> torch.Tensor:
        """:meth:`residual_mse` from window sums instead of pixels, (N, n_models, C)."""
        return self._residual_mse(self._fits_from_sums(sums))

    def log_likelihood_from_sums(self, sums: Sequence[WindowSums]) -> torch.Tensor:
        """:meth:`log_likelihood` from window sums instead of pixels, (N, C)."""
        return self._scores(self._fits_from_sums(sums))[0].sum(1)

    def predict_log_proba_from_sums(self, sums: Sequence[WindowSums]) -> torch.Tensor:
        """:meth:`predict_log_proba` from window sums instead of pixels, (N, C)."""
        return self._log_proba(self._fits_from_sums(sums))

    def predict_proba_from_sums(self, sums: Sequence[WindowSums]) -> torch.Tensor:
        """:meth:`predict_proba` from window sums instead of pixels, (N, C)."""
        return self.predict_log_proba_from_sums(sums).exp()

    def deviation_from_sums(self, sums: Sequence[WindowSums]) -> torch.Tensor:
        """:meth:`deviation` from window sums instead of pixels, (N, C)."""
        return self._scores(self._fits_from_sums(sums))[2]

    def predict_from_sums(self, sums: Sequence[WindowSums]) -> np.ndarray:
        """:meth:`predict` from window sums instead of pixels, (N,) object array."""
        if self.z is None:   # the class scores alone: forms of each image's sums, no own fit
            loglik = sum(_scores_of(shared_residual_covariance_from_sums(c, m.basis, m.coef),
                                    m)[1] for c, m in zip(self._model_sums(sums), self.models))
            return np.array(self.classes, dtype=object)[loglik.argmax(1).numpy()]
        return self._predict(self._fits_from_sums(sums))

    def calibrate_from_sums(self, sums: Sequence[WindowSums],
                            labels: Sequence[str]) -> "LikelihoodClassifier":
        """:meth:`calibrate` from the window sums of the images instead of their pixels."""
        return self._calibrate(self._fits_from_sums(sums), labels)

    def __repr__(self) -> str:
        return (f"LikelihoodClassifier(classes={self.classes}, models={len(self.models)}, "
                f"z={self.z}, temperature={self.temperature})")


def _regularised(covariance: torch.Tensor) -> torch.Tensor:
    """A class covariance the likelihood can invert: eigenvalues at least 1e-12 of its
    largest (a class of grey images in equal channels has a singular one)."""
    values, vectors = torch.linalg.eigh(covariance)
    floor = values.amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny) * 1e-12
    return (vectors * values.clamp_min(floor)[..., None, :]) @ vectors.transpose(-1, -2)


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    spread = float(values.std(correction=0)) if len(values) > 1 else 0.0
    return float(values.mean()), max(spread, _MIN_LOG_STD)
