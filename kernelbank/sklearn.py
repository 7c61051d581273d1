"""scikit-learn estimators: thin adaptors over :mod:`kernelbank.core`.

* :class:`ARFeatures` — transformer: each image's own AR coefficients at several
  dilations (:func:`kernelbank.ar_features`, the original ConvAR descriptor).
* :class:`BankFeatures` — transformer whose ``fit(X, y)`` learns one kernel bank per
  dilation from the labelled images and whose ``transform(X)`` returns the residual
  features of every bank kernel (:func:`kernelbank.bank_features`).
* :class:`ARLikelihoodClassifier` — classifier with no training beyond the per-class
  pooled kernels (:class:`kernelbank.LikelihoodClassifier`).
* :class:`ResidualFeatures` — transformer: descriptors of each image's residual under its
  own kernel (:func:`kernelbank.residual_features`): distribution shape, local sign
  patterns, quantised co-occurrences.
* :class:`TextureFeatures` — the recommended recipe as one transformer: own full-basis
  coefficients and residual descriptors at several dilations (and scales), optionally
  with the features of per-class pooled kernels.

Images as ``X``: a 3-D array ``(n_samples, H, W)``; a list (or object array) of 2-D
arrays of any sizes; or a 2-D array ``(n_samples, H * W)`` of flattened images whose
shape is ``image_shape`` (square when ``image_shape`` is None). Only the 2-D form is
validated with scikit-learn's ``validate_data`` (and sets ``n_features_in_``); the
others are checked by the core, which names the bad image.

Colour: ``channels=C`` (every estimator) fits vector AR kernels
(:class:`~kernelbank.core.basis.Basis` with ``channels=C``); images are then ``(n_samples, C,
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
from .core.features import ar_feature_names, ar_features, bank_feature_names, bank_features
from .core.fit import fit as fit_images
from .core.likelihood import UNKNOWN, LikelihoodClassifier
from .core.fit import residual_features
from .core.residual import ResidualDescriptors, residual_descriptor_names
from .core.stats import ClassStats

__all__ = ["ARFeatures", "BankFeatures", "ARLikelihoodClassifier", "ResidualFeatures",
           "TextureFeatures"]

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

    def _basis(self) -> Basis:
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

    def _scales(self) -> tuple[int, ...]:
        values = (self.scales,) if isinstance(self.scales, (int, np.integer)) \
            else tuple(self.scales)
        if not values or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
            raise ValueError(f"scales must be positive integers, got {self.scales!r}")
        return tuple(int(v) for v in values)

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
    basis_ : Basis
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


class ResidualFeatures(_ImageInput, _NamedFeatures, TransformerMixin, BaseEstimator):
    """Descriptors of each image's residual under its own least-squares AR kernel.

    Per image, scale and dilation: the own kernel (:func:`kernelbank.fit`), the residual
    ``e = x - k ⋆ x`` and its descriptors (:func:`kernelbank.residual_features`; the
    descriptor parameters are those of :class:`kernelbank.core.residual.ResidualDescriptors`).
    Nothing is learned from the training images.

    Parameters
    ----------
    radius : int, default=2
    basis : {"full", "isotropic"}, default="full"
    dilations : sequence of int, default=(1, 2, 3)
    scales : sequence of int, default=(1,)
        Anti-aliased pyramid factors.
    coefficients : bool, default=False
        Prepend the own kernel's coefficients of each scale and dilation.
    moments : bool, default=True
        Log MSE, log MAE, skewness, kurtosis.
    quantiles : tuple of float, default=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
        Quantile levels of ``|e| / σ``.
    patterns : tuple of {"ri", "nri"}, default=("ri", "nri")
        Histograms of the residual's local binary patterns.
    ternary : float or None, default=None
        Threshold (in σ) of local ternary patterns; None for none.
    cooccurrence : int, default=2
        Tuple length of the quantised co-occurrences along each axis; 0 for none.
    levels : int, default=2
        Quantised values are clipped to ``-levels … levels``.
    lags : tuple of int, default=(1,)
        Neighbour distances (residual pixels) of patterns and co-occurrences.
    image_patterns : tuple of {"ri", "nri"}, default=()
        Histograms of the image's own local binary patterns at lags ``lags × dilation``
        (columns ``res_s<s>_d<d>_img_lbp_…``), from the same pass.
    ridge : float, default=1e-6
    normalize : bool, default=True
    image_shape : tuple of int, optional
        Shape of the images when ``X`` is 2-D (flattened rows); default square.
    channels : int, default=1
        Channels of the images; above 1, each image's vector kernel and the descriptors
        of every channel's residual.
    centre_mask : {"own", "all"}, default="own"
        With channels: mask only the predicted channel's centre tap, or every channel's.

    Attributes
    ----------
    basis_ : Basis
    descriptors_ : ResidualDescriptors
    feature_names_out_ : list of str
    n_features_in_ : int
        Only when fitted on 2-D ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from kernelbank.sklearn import ResidualFeatures
    >>> X = np.random.default_rng(0).normal(size=(4, 32, 32))
    >>> est = ResidualFeatures(radius=1, dilations=(1,), patterns=("ri",), cooccurrence=0)
    >>> est.fit_transform(X).shape, est.get_feature_names_out()[3]
    ((4, 20), 'res_s1_d1_kurt')
    """

    def __init__(self, radius=2, basis="full", dilations=(1, 2, 3), scales=(1,),
                 coefficients=False, moments=True, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99),
                 patterns=("ri", "nri"), ternary=None, cooccurrence=2, levels=2, lags=(1,),
                 ridge=1e-6, normalize=True, image_shape=None, channels=1, centre_mask="own",
                 image_patterns=()):
        self.radius = radius
        self.basis = basis
        self.dilations = dilations
        self.scales = scales
        self.coefficients = coefficients
        self.moments = moments
        self.quantiles = quantiles
        self.patterns = patterns
        self.ternary = ternary
        self.cooccurrence = cooccurrence
        self.levels = levels
        self.lags = lags
        self.ridge = ridge
        self.normalize = normalize
        self.image_shape = image_shape
        self.channels = channels
        self.centre_mask = centre_mask
        self.image_patterns = image_patterns

    def _descriptors(self) -> ResidualDescriptors:
        return ResidualDescriptors(
            moments=bool(self.moments), quantiles=tuple(self.quantiles),
            patterns=tuple(self.patterns), ternary=self.ternary, cooccurrence=self.cooccurrence,
            levels=self.levels, lags=tuple(self.lags),
            image_patterns=tuple(self.image_patterns))

    def _own_names(self) -> list[str]:
        names = []
        channels = self.basis_.channels
        per_entry = residual_descriptor_names(self.descriptors_, self.basis_.ndim, channels)
        outputs = [""] if channels == 1 else [f"_ch{c}" for c in range(channels)]
        for s in self._scales():
            for d in self._dilations():
                if self.coefficients:
                    names += [f"ar_s{s}_d{d}{o}_c{j:02d}" for o in outputs
                              for j in range(self.basis_.n_components)]
                names += [f"res_s{s}_d{d}_{n}" for n in per_entry]
        return names

    def fit(self, X, y=None):
        """Check the parameters and ``X``; nothing is learned."""
        self._images(X, reset=True)
        self.basis_ = self._basis()
        self.descriptors_ = self._descriptors()
        self._scales()
        self._dilations()
        self.feature_names_out_ = self._own_names()
        return self

    def _own_features(self, images) -> np.ndarray:
        feats, _ = residual_features(images, self.basis_, dilations=list(self._dilations()),
                                     scales=list(self._scales()), ridge=self.ridge,
                                     normalize=self.normalize, coefficients=self.coefficients,
                                     descriptors=self.descriptors_)
        return feats.cpu().numpy()

    def transform(self, X) -> np.ndarray:
        """Residual descriptors, shape (n_samples, n_features_out), float64."""
        check_is_fitted(self, "basis_")
        return self._own_features(self._images(X, reset=False))


_BANK_MODES = (None, "stats", "pixels")


class TextureFeatures(ResidualFeatures):
    """The recommended texture descriptor as one transformer.

    Each image's own full-basis coefficients and residual descriptors at every dilation
    (and pyramid scale) — :class:`ResidualFeatures` with ``coefficients=True`` — and,
    with ``bank``, the features of one pooled kernel per class learned in ``fit``
    (:class:`BankFeatures`, same radius and dilations).

    Parameters
    ----------
    radius, basis, dilations, scales, moments, quantiles, patterns, ternary, cooccurrence, \
levels, lags, ridge, normalize, image_shape, channels, centre_mask, image_patterns
        As :class:`ResidualFeatures`.
    coefficients : bool, default=True
    bank : {None, "stats", "pixels"}, default=None
        None: no bank features (nothing learned, ``y`` ignored). ``"stats"``: per class
        kernel the log MSE, log variance and gain of the residual — what a statistics
        table gives without pixels. ``"pixels"``: also log MAE, win rate and the energy
        grid. Either needs ``y`` in ``fit``.
    bank_joint : bool, default=False
        Append the joint coefficients of the class kernels of each dilation.
    bank_grid : int, default=2
        Energy grid of ``bank="pixels"``.

    Attributes
    ----------
    basis_, descriptors_, feature_names_out_, n_features_in_
        As :class:`ResidualFeatures`.
    bank_features_ : BankFeatures or None
        The fitted bank transformer when ``bank`` is set.
    classes_ : ndarray
        Only when ``bank`` is set.
    """

    def __init__(self, radius=2, basis="full", dilations=(1, 2, 3), scales=(1,),
                 coefficients=True, moments=True, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99),
                 patterns=("ri", "nri"), ternary=None, cooccurrence=2, levels=2, lags=(1,),
                 bank=None, bank_joint=False, bank_grid=2, ridge=1e-6, normalize=True,
                 image_shape=None, channels=1, centre_mask="own", image_patterns=()):
        super().__init__(radius=radius, basis=basis, dilations=dilations, scales=scales,
                         coefficients=coefficients, moments=moments, quantiles=quantiles,
                         patterns=patterns, ternary=ternary, cooccurrence=cooccurrence,
                         levels=levels, lags=lags, ridge=ridge, normalize=normalize,
                         image_shape=image_shape, channels=channels, centre_mask=centre_mask,
                         image_patterns=image_patterns)
        self.bank = bank
        self.bank_joint = bank_joint
        self.bank_grid = bank_grid

    def fit(self, X, y=None):
        """Check the parameters; learn the class kernels when ``bank`` is set."""
        if self.bank not in _BANK_MODES:
            raise ValueError(f"bank must be one of {_BANK_MODES}, got {self.bank!r}")
        super().fit(X)
        self.bank_features_ = None
        if self.bank is None:
            return self
        y = self._check_y(y)
        images = self._images(X, reset=False)
        self.bank_features_ = BankFeatures(
            radius=self.radius, basis="full", method="pooled", dilations=self._dilations(),
            grid=1 if self.bank == "stats" else self.bank_grid, joint=self.bank_joint,
            ridge=self.ridge, normalize=self.normalize, channels=self.channels,
            centre_mask=self.centre_mask).fit(images, y)
        self.classes_ = self.bank_features_.classes_
        bank_names = list(self.bank_features_.get_feature_names_out())
        self._bank_columns = np.array([self._keep(n) for n in bank_names], dtype=bool)
        self.feature_names_out_ = self.feature_names_out_ + [
            f"bank_{n}" for n, keep in zip(bank_names, self._bank_columns) if keep]
        return self

    def _keep(self, name: str) -> bool:
        """Whether a bank column is kept: ``stats`` drops what needs pixels."""
        if self.bank == "pixels":
            return True
        return not (name.endswith(("_log_mae", "_win")) or "_energy_" in name)

    def transform(self, X) -> np.ndarray:
        """Own-kernel and residual features [then bank features], float64."""
        check_is_fitted(self, "basis_")
        images = self._images(X, reset=False)
        own = self._own_features(images)
        if self.bank_features_ is None:
            return own
        bank = self.bank_features_.transform(images)[:, self._bank_columns]
        return np.concatenate([own, bank], 1)
