"""The previous selection protocol (5 unshuffled folds, SVC grid), kept for
``bench/accuracy_colour.py``; ``bench/accuracy.py`` uses repeated group CV instead."""

from __future__ import annotations

import copy
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from accuracy import Extractor
from kernelbank.sklearn import ARFeatures, ARLikelihoodClassifier, ResidualFeatures, TextureFeatures

GRID = {"svc__kernel": ["linear", "rbf"], "svc__C": [0.1, 1.0, 10.0, 100.0]}


class Likelihood:
    """The likelihood classifier as an extractor-like object: no SVM on top."""

    def __init__(self, **params):
        self.params = params

    def fit(self, images, y):
        self.model = ARLikelihoodClassifier(**self.params).fit(images, y)
        return self

    def predict(self, images):
        return self.model.predict(images)


def _subset(images, index):
    return images[index] if isinstance(images, np.ndarray) else [images[i] for i in index]


def _svm(params: dict):
    return make_pipeline(StandardScaler(), SVC(**params))


TRANSFORM_PARAMS = ("grid", "log", "joint")    # BankFeatures parameters used by transform only
SVM_GRID = [{"kernel": k, "C": c} for k in GRID["svc__kernel"] for c in GRID["svc__C"]]


def select_and_test(make, variants: dict[str, dict], svm: bool, train, y_train, test, y_test):
    """Pick (variant, SVM parameters) by 5-fold CV on train; refit; score on test.

    Label-free features are computed once per variant; label-dependent ones (a bank)
    are refitted on every fold's training part, so no fold sees its own validation.
    """
    # unshuffled folds are contiguous in file order: for patches named by position (the
    # built-in textures) each fold is a band of the photograph, so CV sees a shift like
    # the test split's instead of near-duplicate neighbours of its training patches
    folds = list(StratifiedKFold(5).split(np.zeros(len(y_train)), y_train))
    scores: dict[tuple[str, int], list[float]] = {}
    fitted: dict = {}     # banks differing only in transform-time parameters are learned once
    for name, params in variants.items():
        extractor = make(**params)
        shared = None
        if svm and _label_free(extractor):
            shared = extractor.fit(train).transform(train)
        for fold, (fit_index, val_index) in enumerate(folds):
            y_fit, y_val = y_train[fit_index], y_train[val_index]
            if not svm:
                model = make(**params).fit(_subset(train, fit_index), y_fit)
                accuracy = np.mean(model.predict(_subset(train, val_index)) == y_val)
                scores.setdefault((name, -1), []).append(accuracy)
                continue
            if shared is not None:
                f_fit, f_val = shared[fit_index], shared[val_index]
            else:
                key = (fold, tuple(sorted((k, v) for k, v in params.items()
                                          if k not in TRANSFORM_PARAMS)))
                if key not in fitted:
                    fitted[key] = make(**params).fit(_subset(train, fit_index), y_fit)
                est = copy.copy(fitted[key]).set_params(
                    **{k: v for k, v in params.items() if k in TRANSFORM_PARAMS})
                f_fit, f_val = est.transform(_subset(train, fit_index)), \
                    est.transform(_subset(train, val_index))
            for j, svm_params in enumerate(SVM_GRID):
                model = _svm(svm_params).fit(f_fit, y_fit)
                scores.setdefault((name, j), []).append(np.mean(model.predict(f_val) == y_val))
    (name, j), cv = max(scores.items(), key=lambda item: np.mean(item[1]))
    model = make(**variants[name]).fit(train, y_train)
    if svm:
        head = _svm(SVM_GRID[j]).fit(model.transform(train), y_train)
        start = time.perf_counter()
        predicted = head.predict(model.transform(test))
    else:
        start = time.perf_counter()
        predicted = model.predict(test)
    seconds = time.perf_counter() - start
    chosen = name + (f" {SVM_GRID[j]['kernel']} C={SVM_GRID[j]['C']:g}" if svm else "")
    return (float(np.mean(predicted == y_test)), len(y_test) / seconds, chosen,
            float(np.mean(cv)), float(np.std(cv)))


def _label_free(extractor) -> bool:
    """Features that learn nothing from labels: computed once, shared by every fold."""
    if isinstance(extractor, TextureFeatures):
        return extractor.bank is None
    return isinstance(extractor, (Extractor, ARFeatures, ResidualFeatures))


