"""scikit-learn estimators: equal to the core functions, usable in Pipeline/GridSearchCV."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import kernelbank as kb
from kernelbank.datasets.synthetic import random_stable_kernel, simulate_gmrf
from kernelbank.sklearn import (ARFeatures, ARLikelihoodClassifier, BankFeatures, ResidualFeatures,
                                TextureFeatures)

BASIS = kb.Basis.isotropic(radius=1)
KERNELS = [random_stable_kernel(BASIS, max_response=0.95, random_state=s) for s in (1, 2, 3)]


def _draw(n, seed, side=20):
    rng = np.random.default_rng(seed)
    X = np.concatenate([simulate_gmrf(k, (side, side), n=n, random_state=rng) for k in KERNELS])
    return X, np.repeat([10, 2, 7], n)          # integer labels whose str order differs


X_TRAIN, Y_TRAIN = _draw(12, 0)
X_TEST, Y_TEST = _draw(6, 1)


def test_ar_features_equal_core():
    est = ARFeatures(radius=1, dilations=(1, 2))
    out = est.fit_transform(X_TRAIN)
    core, names = kb.ar_features(X_TRAIN, BASIS, (1, 2))
    np.testing.assert_array_equal(out, core.numpy())
    assert list(est.get_feature_names_out()) == names
    # flattened rows with an explicit shape give the same features
    flat = ARFeatures(radius=1, dilations=(1, 2), image_shape=(20, 20))
    np.testing.assert_array_equal(flat.fit_transform(X_TRAIN.reshape(36, -1)), core.numpy())
    assert flat.n_features_in_ == 400


def test_bank_features_equal_core_with_log():
    est = BankFeatures(radius=1, basis="isotropic", dilations=(1, 2), grid=2).fit(X_TRAIN, Y_TRAIN)
    stats = [kb.ClassStats.from_fit(kb.fit(X_TRAIN, BASIS.with_dilation(d)), Y_TRAIN) for d in (1, 2)]
    bank = kb.KernelBank.concat([kb.KernelBank.from_stats(s) for s in stats])
    np.testing.assert_allclose(est.bank_.kernels, bank.kernels, rtol=1e-12)
    assert est.bank_.class_names == ["10", "2", "7"]
    core, names = kb.bank_features(X_TEST, bank, grid=2)
    out = est.transform(X_TEST)
    out_names = list(est.get_feature_names_out())
    assert len(out_names) == out.shape[1] == len(names) == 6 * (4 + 4 + 1)
    for j, (raw, logged) in enumerate(zip(names, out_names)):
        if raw.endswith(("_mae", "_mse", "_var")) or "_energy_" in raw:
            assert "_log_" in logged
            np.testing.assert_allclose(out[:, j], np.log(core[:, j].numpy()), rtol=1e-12)
        else:
            assert logged == raw
            np.testing.assert_allclose(out[:, j], core[:, j].numpy(), rtol=1e-12)
    assert out_names[1] == "k00_10_d1_log_mse" and out_names[4] == "k00_10_d1_log_energy_0_0"
    # images of another size: same columns
    assert est.transform(list(X_TEST[:2, :15, :17])).shape == (2, out.shape[1])


def test_likelihood_classifier_equals_core_and_orders_classes():
    clf = ARLikelihoodClassifier(radius=1, basis="isotropic", dilations=(1,)).fit(X_TRAIN, Y_TRAIN)
    assert list(clf.classes_) == [2, 7, 10]
    core = kb.LikelihoodClassifier.from_stats(kb.ClassStats.from_fit(kb.fit(X_TRAIN, BASIS), Y_TRAIN))
    proba = clf.predict_proba(X_TEST)
    np.testing.assert_allclose(proba, core.predict_proba(X_TEST).numpy()[:, [1, 2, 0]], rtol=1e-9)
    np.testing.assert_array_equal(clf.predict(X_TEST), core.predict(X_TEST).astype(int))
    assert clf.score(X_TEST, Y_TEST) >= 0.9
    rejecting = ARLikelihoodClassifier(radius=1, basis="isotropic", dilations=(1,),
                                       unknown_z=4.0).fit(X_TRAIN, Y_TRAIN)
    assert list(rejecting.predict(np.random.default_rng(0).normal(size=(2, 20, 20)) * 0
                                  + np.linspace(0, 1, 20))) == ["unknown"] * 2


def test_pipeline_grid_search_clone_pickle():
    pipe = make_pipeline(BankFeatures(radius=1, basis="isotropic", dilations=(1,)),
                         StandardScaler(), RidgeClassifier())
    search = GridSearchCV(pipe, {"bankfeatures__grid": [1, 2],
                                 "ridgeclassifier__alpha": [1.0, 100.0]}, cv=3)
    search.fit(X_TRAIN, Y_TRAIN)
    assert search.score(X_TEST, Y_TEST) >= 0.8
    names = search.best_estimator_[:-1].get_feature_names_out()
    assert names[0] == "x0" or names[0].startswith("k00_")   # StandardScaler passes names through
    clf_search = GridSearchCV(ARLikelihoodClassifier(radius=1, basis="isotropic"),
                              {"dilations": [(1,), (1, 2)]}, cv=3).fit(X_TRAIN, Y_TRAIN)
    assert clf_search.best_score_ >= 0.8
    est = BankFeatures(radius=1, basis="isotropic", dilations=(1,)).fit(X_TRAIN, Y_TRAIN)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X_TEST), est.transform(X_TEST))
    assert clone(est).get_params() == est.get_params() and not hasattr(clone(est), "bank_")


def test_residual_features_equal_core():
    est = ResidualFeatures(radius=1, dilations=(1, 2), scales=(1, 2), patterns=("ri",),
                           ternary=0.5)
    out = est.fit_transform(X_TRAIN)
    spec = kb.ResidualDescriptors(patterns=("ri",), ternary=0.5)
    core, names = kb.residual_features(X_TRAIN, kb.Basis.full(1), dilations=(1, 2),
                                       scales=(1, 2), descriptors=spec)
    np.testing.assert_array_equal(out, core.numpy())
    assert list(est.get_feature_names_out()) == names
    assert est.transform(list(X_TEST[:2, :18, :19])).shape == (2, out.shape[1])


def test_texture_features_are_own_coefficients_descriptors_and_bank_statistics():
    plain = TextureFeatures(radius=1, dilations=(1, 2)).fit(X_TRAIN)     # no y needed
    core, names = kb.residual_features(X_TRAIN, kb.Basis.full(1), dilations=(1, 2),
                                       coefficients=True)
    np.testing.assert_array_equal(plain.transform(X_TRAIN), core.numpy())
    assert list(plain.get_feature_names_out()) == names
    with pytest.raises(ValueError, match="requires y"):
        TextureFeatures(radius=1, dilations=(1,), bank="stats").fit(X_TRAIN)
    with pytest.raises(ValueError, match="bank must be one of"):
        TextureFeatures(radius=1, bank="statistics").fit(X_TRAIN, Y_TRAIN)
    est = TextureFeatures(radius=1, dilations=(1, 2), bank="stats", bank_joint=True)
    out = est.fit(X_TRAIN, Y_TRAIN).transform(X_TEST)
    bank = BankFeatures(radius=1, basis="full", dilations=(1, 2), grid=1, joint=True)
    bank_out = bank.fit(X_TRAIN, Y_TRAIN).transform(X_TEST)
    bank_names = list(bank.get_feature_names_out())
    # what a statistics table gives: log mse, log var, gain per class kernel, joint coefficients
    kept = [j for j, n in enumerate(bank_names) if n.endswith(("_log_mse", "_log_var", "_gain"))
            or n.startswith("joint_")]
    assert len(kept) == 2 * 3 * 3 + 2 * 3
    expected = np.concatenate([plain.transform(X_TEST), bank_out[:, kept]], 1)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert list(est.get_feature_names_out()) == names + [f"bank_{bank_names[j]}" for j in kept]
    assert list(est.classes_) == [2, 7, 10]


def test_texture_features_in_grid_search_clone_pickle():
    pipe = make_pipeline(TextureFeatures(radius=1, dilations=(1,), patterns=("ri",),
                                         cooccurrence=0), StandardScaler(), RidgeClassifier())
    search = GridSearchCV(pipe, {"texturefeatures__dilations": [(1,), (1, 2)],
                                 "texturefeatures__bank": [None, "stats"]}, cv=3)
    search.fit(X_TRAIN, Y_TRAIN)
    assert search.score(X_TEST, Y_TEST) >= 0.8
    est = search.best_estimator_[0]
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X_TEST), est.transform(X_TEST))
    assert clone(est).get_params() == est.get_params() and not hasattr(clone(est), "basis_")


# --------------------------------------------------------------------------- sklearn's checks
# X in scikit-learn's checks is a table of 1-10 numeric features; ours is images. 2-D X is
# accepted as flattened square images, so checks whose X happens to be (n, k²) with
# k >= 3 run; the rest cannot produce a single image the radius-1 window fits in.
_NOT_IMAGES = ("the check's X has 2-10 features per row: not a square image of at least "
               "3x3 pixels (the radius-1 window)")
_SHAPE_CHECKS = [
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in", "check_fit2d_predict1d", "check_dtype_object",
    "check_classifier_data_not_an_array", "check_classifiers_classes", "check_classifiers_train",
    "check_supervised_y_2d", "check_classifiers_one_label",
]
# ARFeatures and ResidualFeatures (TextureFeatures without a bank) learn nothing, so they
# pass where X only needs to be valid, not an image
_STATELESS_PASSES = {"check_n_features_in_after_fitting", "check_positive_only_tag_during_fit",
                     "check_fit2d_1feature"}


def _expected_failures(estimator):
    stateless = isinstance(estimator, (ARFeatures, ResidualFeatures)) and \
        getattr(estimator, "bank", None) is None
    skip = _STATELESS_PASSES if stateless else set()
    return {name: _NOT_IMAGES for name in _SHAPE_CHECKS if name not in skip}


@parametrize_with_checks([ARFeatures(radius=1, dilations=(1,)),
                          ResidualFeatures(radius=1, dilations=(1,)),
                          TextureFeatures(radius=1, dilations=(1,)),
                          BankFeatures(radius=1, basis="isotropic", dilations=(1,), grid=1),
                          ARLikelihoodClassifier(radius=1, basis="isotropic", dilations=(1,))],
                         expected_failed_checks=_expected_failures)
def test_sklearn_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------- channels
def _colour(n, seed, side=18):
    from kernelbank.datasets import random_stable_vector_kernel, simulate_vector_gmrf
    kernels = [random_stable_vector_kernel(1, channels=3, random_state=s) for s in (4, 5)]
    rng = np.random.default_rng(seed)
    X = np.concatenate([simulate_vector_gmrf(k, (side, side), n=n, random_state=rng)
                        for k in kernels])
    return X, np.repeat(["p", "q"], n)


def test_colour_estimators_equal_core():
    X, y = _colour(6, 0)
    basis = kb.Basis.full(1, channels=3)
    features = ARFeatures(radius=1, basis="full", dilations=(1, 2), channels=3)
    core, names = kb.ar_features(X, basis, (1, 2))
    np.testing.assert_array_equal(features.fit_transform(X), core.numpy())
    assert list(features.get_feature_names_out()) == names and names[0] == "ar_d1_ch0_c00"
    # channel-major flattened rows: square images inferred
    np.testing.assert_array_equal(features.fit_transform(X.reshape(len(X), -1)), core.numpy())

    bank_est = BankFeatures(radius=1, dilations=(1,), channels=3).fit(X, y)
    stats = kb.ClassStats.from_fit(kb.fit(X, basis), y)
    bank = kb.KernelBank.from_stats(stats)
    np.testing.assert_allclose(bank_est.bank_.kernels, bank.kernels, rtol=1e-12)
    raw, raw_names = kb.bank_features(X, bank)
    out = bank_est.transform(X)
    column = raw_names.index("k00_p_d1_c2_gain")
    assert list(bank_est.get_feature_names_out())[column] == "k00_p_d1_c2_gain"
    np.testing.assert_allclose(out[:, column], raw[:, column].numpy())

    clf = ARLikelihoodClassifier(radius=1, dilations=(1,), channels=3).fit(X, y)
    core_clf = kb.LikelihoodClassifier.from_stats(stats)
    X_test, y_test = _colour(4, 1)
    np.testing.assert_allclose(clf.predict_proba(X_test), core_clf.predict_proba(X_test).numpy(),
                               rtol=1e-9)
    assert clf.score(X_test, y_test) == 1.0
    with pytest.raises(ValueError, match="not a square image of 3 channel"):
        ARFeatures(channels=3).fit(np.zeros((2, 3 * 17)))


def test_colour_texture_features_equal_core():
    from kernelbank.sklearn import TextureFeatures
    X, y = _colour(4, 2, side=20)
    est = TextureFeatures(radius=1, dilations=(1,), patterns=("ri",), cooccurrence=0,
                          channels=3, bank="stats").fit(X, y)
    core, names = kb.residual_features(X, kb.Basis.full(1, channels=3), dilations=(1,),
                                       coefficients=True, descriptors=est.descriptors_)
    out = est.transform(X)
    np.testing.assert_allclose(out[:, :core.shape[1]], core.numpy())
    assert list(est.get_feature_names_out())[:len(names)] == names
    assert est.bank_features_.bank_.channels == 3
