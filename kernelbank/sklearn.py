"""scikit-learn estimators: thin adaptors over :mod:`kernelbank.core`.

* :class:`ARFeatures` — transformer: each image's own AR coefficients at several
  dilations (:func:`kernelbank.ar_features`, the original ConvAR descriptor).
* :class:`BankFeatures` — transformer whose ``fit(X, y)`` learns one kernel bank per
  dilation from the labelled images and whose ``transform(X)`` returns the residual
  features of every bank kernel (:func:`kernelbank.bank_features`).
* :class:`ARLikelihoodClassifier` — classifier with no training beyond the per-class
  pooled kernels (:class:`kernelbank.LikelihoodClassifier`).

Images as ``X``: a 3-D array ``(n_samples, H, W)``; a list (or object array) of 2-D
arrays of any sizes; or a 2-D array ``(n_samples, H * W)`` of flattened images whose
shape is ``image_shape`` (square when ``image_shape`` is None). Only the 2-D form is
validated with scikit-learn's ``validate_data`` (and sets ``n_features_in_``); the
others are checked by the core, which names the bad image.

Colour: ``channels=C`` (every estimator) fits vector AR kernels
(:class:`~kernelbank.core.channel_basis.ChannelBasis`); images are then ``(n_samples, C,
H, W)``, a list of ``(C, H, W)`` arrays, or rows of ``C·H·W`` values channel-major
(``image_shape=(C, H, W)``, square ``H = W`` when None).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .core.bank import KernelBank
from .core.basis import Basis
from .core.channel_basis import ChannelBasis
from .core.features import ar_feature_names, ar_features, bank_feature_names, bank_features
from .core.fit import fit as fit_images
from .core.likelihood import UNKNOWN, LikelihoodClassifier
from .core.stats import ClassStats

__all__ = ["ARFeatures", "BankFeatures", "ARLikelihoodClassifier"]

_BASES = ("isotropic", "full")
_LOGGED = ("mae", "mse", "var")


class _ImageInput:
    """Shared handling of image-valued ``X`` and of the basis parameters."""

    def _images(self, X, reset: bool):
        channels = self._channels()
        if sparse.issparse(X):
            validate_data(self, X, reset=reset)   # raises: sparse input is not supported
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object
                                            and X.ndim == 1):
            images = [np.asarray(x, dtype=np.float64) for x in X]
            if not images:
                raise ValueError("X is empty: pass at least one image")
            return images
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = np.asarray(X)
        if X.ndim == 3 + int(channels > 1):
            if not np.issubdtype(X.dtype, np.number):
                raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
            return X
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        shape = self.image_shape
        if shape is None:
            side = int(round(np.sqrt(X.shape[1] / channels)))
            if channels * side * side != X.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} features per row, which is not a square image of "
                    f"{channels} channel(s); pass image_shape, or X as an array of images or "
                    f"a list of images")
            shape = (side, side) if channels == 1 else (channels, side, side)
        if int(np.prod(shape)) != X.shape[1]:
            raise ValueError(f"image_shape {tuple(shape)} has {int(np.prod(shape))} pixels but X "
                             f"has {X.shape[1]} features per row")
        return X.reshape((X.shape[0],) + tuple(shape))

    def _channels(self) -> int:
        if not isinstance(self.channels, (int, np.integer)) or self.channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {self.channels!r}")
        return int(self.channels)

    def _basis(self) -> Basis | ChannelBasis:
        if self.basis not in _BASES:
            raise ValueError(f"basis must be one of {_BASES}, got {self.basis!r}")
        if not isinstance(self.radius, (int, np.integer)) or self.radius < 1:
            raise ValueError(f"radius must be an integer >= 1, got {self.radius!r}")
        return getattr(Basis, self.basis)(int(self.radius), channels=self._channels(),
                                          centre_mask=self.centre_mask)

    def _dilations(self) -> tuple[int, ...]:
        values = (self.dilations,) if isinstance(self.dilations, (int, np.integer)) \
            else tuple(self.dilations)
        if not values or any(not isinstance(d, (int, np.integer)) or d < 1 for d in values):
            raise ValueError(f"dilations must be positive integers, got {self.dilations!r}")
        return tuple(int(d) for d in values)

    def _check_y(self, y) -> np.ndarray:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None: the class labels of the images")
        y = np.asarray(y)
        if y.ndim != 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return y

    def _fit_stats(self, images, y) -> tuple[np.ndarray, list[ClassStats]]:
        if len(y) != len(images):
            raise ValueError(f"y has {len(y)} labels for {len(images)} images")
        basis = self._basis()
        labels = [str(v) for v in y]
        result = fit_images(images, basis, ridge=self.ridge, normalize=self.normalize,
                            dilations=list(self._dilations()))
        stats = [ClassStats.from_fit(result, labels, scale=i) for i in range(len(result.scale_index))]
        return np.unique(y), stats

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags


class _NamedFeatures:
    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns, e.g. ``k03_brick_d2_mse``."""
        check_is_fitted(self, "feature_names_out_")
        return np.asarray(self.feature_names_out_, dtype=object)


class ARFeatures(_ImageInput, _NamedFeatures, TransformerMixin, BaseEstimator):
    """Fitted AR coefficients of each image at several dilations.

    Parameters
    ----------
    radius : int, default=4
        Window half-width in taps.
    basis : {"isotropic", "full"}, default="isotropic"
    dilations : sequence of int, default=(1, 2, 3, 4, 5)
    ridge : float, default=1e-6
    normalize : bool, default=True
        Z-score each image before fitting.
    image_shape : tuple of int, optional
        Shape of the images when ``X`` is 2-D (flattened rows); default square.
    channels : int, default=1
        Channels of the images; above 1, vector AR coefficients (``C·m`` per dilation).
    centre_mask : {"own", "all"}, default="own"
        With channels: mask only the predicted channel's centre tap, or every channel's.

    Attributes
    ----------
    basis_ : Basis or ChannelBasis
    feature_names_out_ : list of str
    n_features_in_ : int
        Only when fitted on 2-D ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from kernelbank.sklearn import ARFeatures
    >>> X = np.random.default_rng(0).normal(size=(4, 32, 32))
    >>> ARFeatures(radius=2, dilations=(1, 2)).fit_transform(X).shape
    (4, 10)
    """

    def __init__(self, radius=4, basis="isotropic", dilations=(1, 2, 3, 4, 5), ridge=1e-6,
                 normalize=True, image_shape=None, channels=1,
                 centre_mask="own"):
        self.radius = radius
        self.basis = basis
        self.dilations = dilations
        self.ridge = ridge
        self.normalize = normalize
        self.image_shape = image_shape
        self.channels = channels
        self.centre_mask = centre_mask

    def fit(self, X, y=None):
        """Check the parameters and ``X``; nothing is learned."""
        self._images(X, reset=True)
        self.basis_ = self._basis()
        self.feature_names_out_ = ar_feature_names(self.basis_, self._dilations())
        return self

    def transform(self, X) -> np.ndarray:
        """AR coefficients, shape (n_samples, len(dilations) * n_components), float64."""
        check_is_fitted(self, "basis_")
        images = self._images(X, reset=False)
        feats, _ = ar_features(images, self.basis_, self._dilations(), ridge=self.ridge,
                               normalize=self.normalize)
        return feats.cpu().numpy()


class BankFeatures(_ImageInput, TransformerMixin, BaseEstimator):
    """Residual features of every kernel of a bank learned from labelled images.

    ``fit(X, y)`` fits every training image at each dilation, merges the fits into
    per-class statistics and builds one bank per dilation (``method``), concatenated
    in ``bank_``. ``transform(X)`` returns :func:`kernelbank.bank_features`.

    Parameters
    ----------
    radius : int, default=4
    basis : {"full", "isotropic"}, default="full"
        Basis the class kernels are fitted in.
    method : {"pooled", "pca", "kmeans"}, default="pooled"
    dilations : sequence of int, default=(1, 2, 3)
    n_components : int or float, optional
        Passed to :meth:`KernelBank.from_stats` (pca / kmeans).
    grid : int, default=2
        Residual-energy grid per axis.
    joint : bool, default=False
        Append the joint coefficients of the bank kernels of each dilation.
    log : bool, default=True
        Return ``log`` of the positive statistics (mae, mse, var, energy); their
        ratios between kernels are what separates classes, and a linear model sees
        ratios as differences of logs. Names then read ``…_log_mse``.
    ridge : float, default=1e-6
    normalize : bool, default=True
    random_state : int, Generator or None, default=0
        Seeds k-means.
    image_shape : tuple of int, optional
    channels : int, default=1
        Channels of the images; above 1, banks of vector kernels.
    centre_mask : {"own", "all"}, default="own"
        With channels: mask only the predicted channel's centre tap, or every channel's.

    Attributes
    ----------
    bank_ : KernelBank
    stats_ : list of ClassStats
        One per dilation.
    classes_ : ndarray
    """

    def __init__(self, radius=4, basis="full", method="pooled", dilations=(1, 2, 3),
                 n_components=None, grid=2, joint=False, log=True, ridge=1e-6, normalize=True,
                 random_state=0, image_shape=None, channels=1,
                 centre_mask="own"):
        self.radius = radius
        self.basis = basis
        self.method = method
        self.dilations = dilations
        self.n_components = n_components
        self.grid = grid
        self.joint = joint
        self.log = log
        self.ridge = ridge
        self.normalize = normalize
        self.random_state = random_state
        self.image_shape = image_shape
        self.channels = channels
        self.centre_mask = centre_mask

    def fit(self, X, y):
        """Learn the bank from images ``X`` with class labels ``y``."""
        y = self._check_y(y)
        images = self._images(X, reset=True)
        self.classes_, self.stats_ = self._fit_stats(images, y)
        rng = np.random.default_rng(self.random_state) \
            if not isinstance(self.random_state, np.random.Generator) else self.random_state
        self.bank_ = KernelBank.concat([
            KernelBank.from_stats(s, self.method, n_components=self.n_components,
                                  ridge=self.ridge, random_state=rng) for s in self.stats_])
        return self

    def _names_and_logged(self) -> tuple[list[str], np.ndarray]:
        names = bank_feature_names(self.bank_, self.grid, self.joint)
        logged = np.array([bool(self.log) and (n.rsplit("_", 1)[-1] in _LOGGED or "_energy_" in n)
                           for n in names], dtype=bool)
        return [_log_name(n) if flag else n for n, flag in zip(names, logged)], logged

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns, e.g. ``k03_brick_d2_log_mse``."""
        check_is_fitted(self, "bank_")
        return np.asarray(self._names_and_logged()[0], dtype=object)

    def transform(self, X) -> np.ndarray:
        """Bank features, shape (n_samples, n_features_out), float64.

        ``grid``, ``joint`` and ``log`` act here only, so changing them with
        ``set_params`` after ``fit`` needs no refit.
        """
        check_is_fitted(self, "bank_")
        images = self._images(X, reset=False)
        feats, _ = bank_features(images, self.bank_, self.grid, self.normalize, self.joint,
                                 ridge=self.ridge)
        out = feats.cpu().numpy()
        logged = self._names_and_logged()[1]
        out[:, logged] = np.log(np.maximum(out[:, logged], 1e-12))
        return out


def _log_name(name: str) -> str:
    if "_energy_" in name:
        head, tail = name.split("_energy_", 1)
        return f"{head}_log_energy_{tail}"
    head, stat = name.rsplit("_", 1)
    return f"{head}_log_{stat}"


class ARLikelihoodClassifier(_ImageInput, ClassifierMixin, BaseEstimator):
    """Classify images by the Gaussian residual likelihood of per-class pooled AR kernels.

    Parameters
    ----------
    radius : int, default=4
    basis : {"full", "isotropic"}, default="full"
    dilations : sequence of int, default=(1, 2, 3)
        One model per dilation; their per-pixel log-likelihoods add.
    ridge : float, default=1e-6
    normalize : bool, default=True
    unknown_z : float or None, default=None
        When set, :meth:`predict` answers ``"unknown"`` for images outside every class's
        training range by more than ``unknown_z`` standard deviations (calibrated on the
        training images). None never answers unknown.
    temperature : float or None, default=None
        None: probabilities from the full-image likelihood; a float t: ``softmax(ℓ / t)``.
    image_shape : tuple of int, optional
    channels : int, default=1
        Channels of the images; above 1, vector kernels and their residual covariance.
    centre_mask : {"own", "all"}, default="own"
        With channels: mask only the predicted channel's centre tap, or every channel's
        (a greyscale image in equal channels is then modelled by its spatial texture
        instead of being predicted exactly from another channel's centre).

    Attributes
    ----------
    classes_ : ndarray
    model_ : LikelihoodClassifier
    stats_ : list of ClassStats
    """

    def __init__(self, radius=4, basis="full", dilations=(1, 2, 3), ridge=1e-6, normalize=True,
                 unknown_z=None, temperature=None, image_shape=None, channels=1,
                 centre_mask="own"):
        self.radius = radius
        self.basis = basis
        self.dilations = dilations
        self.ridge = ridge
        self.normalize = normalize
        self.unknown_z = unknown_z
        self.temperature = temperature
        self.image_shape = image_shape
        self.channels = channels
        self.centre_mask = centre_mask

    def fit(self, X, y):
        """Per-class statistics at each dilation → pooled kernels and variances."""
        y = self._check_y(y)
        images = self._images(X, reset=True)
        self.classes_, self.stats_ = self._fit_stats(images, y)
        self.model_ = LikelihoodClassifier.from_stats(
            self.stats_, ridge=self.ridge, z=self.unknown_z, temperature=self.temperature,
            normalize=self.normalize)
        if self.unknown_z is not None:
            self.model_.calibrate(images, [str(v) for v in np.asarray(y)])
        self._order = np.array([self.model_.classes.index(str(c)) for c in self.classes_])
        return self

    def predict_log_proba(self, X) -> np.ndarray:
        """Log posterior, shape (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self, "model_")
        return self.model_.predict_log_proba(self._images(X, reset=False)).numpy()[:, self._order]

    def predict_proba(self, X) -> np.ndarray:
        """Posterior probabilities, shape (n_samples, n_classes)."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most likely class; ``"unknown"`` where rejected (only with ``unknown_z``)."""
        check_is_fitted(self, "model_")
        images = self._images(X, reset=False)
        loglik = self.model_.log_likelihood(images).numpy()[:, self._order]
        labels = self.classes_[loglik.argmax(1)]
        if self.unknown_z is None:
            return labels
        rejected = (self.model_.deviation(images) > self.unknown_z).all(1).numpy()
        labels = labels.astype(object)
        labels[rejected] = UNKNOWN
        return labels
