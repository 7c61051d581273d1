"""Which classifier head on kernelbank's texture features: streaming linear or kernel?

Usage::

    python bench/heads.py [--patch-size 32 64] [--recipes texture,own]

On the built-in textures, the features of one recipe (``TextureFeatures``, label-free,
computed once) go to every head; each head's hyperparameters are chosen by the same
5-fold unshuffled CV on the training split as in ``bench/accuracy.py``, then the head is
refitted and scored once on the test split. Printed per head: CV mean ± sd of the chosen
hyperparameters, test accuracy and errors.

Heads
    ``ridge``        StandardScaler + RidgeClassifier: the pipeline's streaming head today
                     (mergeable sums, one pass to fit).
    ``sgd_logistic`` StandardScaler + SGDClassifier(log_loss): streams by partial_fit, but
                     needs several epochs over the table.
    ``rff_ridge``    StandardScaler + RBFSampler (random Fourier features, data-free) +
                     RidgeClassifier: a kernel machine that still fits from mergeable sums
                     (a pass for mean/std, a pass for the D×D sums of the random features).
    ``nystroem_ridge`` StandardScaler + Nystroem (landmarks from a sample) + RidgeClassifier.
    ``svc_linear``, ``svc_rbf``  StandardScaler + SVC: the reference, in memory only.

The features are 2-D patches only; timings are not reported (shared machine).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.linear_model import RidgeClassifier, SGDClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from kernelbank.sklearn import TextureFeatures

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import load_split  # noqa: E402

RECIPES = {
    # the pipeline candidate: own full r2 coefficients + residual descriptors, dilations 1-3
    "texture": {"radius": 2, "basis": "full", "dilations": (1, 2, 3)},
    # the same without the residual's pattern descriptors (coefficients + log mse/mae, skew, kurt)
    "own": {"radius": 2, "basis": "full", "dilations": (1, 2, 3), "quantiles": (),
            "patterns": (), "cooccurrence": 0},
}


def heads(n_features: int) -> dict[str, list]:
    """name -> list of candidate pipelines (the hyperparameter grid)."""
    # with standardised inputs ‖x - x'‖² ~ 2F, so γ is set relative to 1/F (SVC's "scale")
    gammas = [g / n_features for g in (0.25, 0.5, 1.0, 2.0)]
    return {
        "ridge": [make_pipeline(StandardScaler(), RidgeClassifier(alpha=a))
                  for a in (0.1, 1, 10, 100, 1000)],
        "sgd_logistic": [make_pipeline(StandardScaler(), SGDClassifier(
            loss="log_loss", alpha=a, max_iter=200, tol=1e-4, random_state=0))
            for a in (1e-5, 1e-4, 1e-3, 1e-2)],
        "rff_ridge": [make_pipeline(StandardScaler(), RBFSampler(gamma=g, n_components=2048,
                                                                 random_state=0),
                                    RidgeClassifier(alpha=a))
                      for g in gammas for a in (0.1, 1, 10)],
        "nystroem_ridge": [make_pipeline(StandardScaler(), Nystroem(gamma=g, n_components=400,
                                                                    random_state=0),
                                         RidgeClassifier(alpha=a))
                           for g in gammas for a in (0.01, 0.1, 1)],
        "svc_linear": [make_pipeline(StandardScaler(), SVC(kernel="linear", C=c))
                       for c in (0.1, 1, 10, 100)],
        "svc_rbf": [make_pipeline(StandardScaler(), SVC(kernel="rbf", C=c))
                    for c in (0.1, 1, 10, 100)],
    }


def select_and_test(candidates, f_train, y_train, f_test, y_test):
    folds = list(StratifiedKFold(5).split(f_train, y_train))
    scores = [[np.mean(c.fit(f_train[a], y_train[a]).predict(f_train[b]) == y_train[b])
               for a, b in folds] for c in candidates]
    best = int(np.argmax([np.mean(s) for s in scores]))
    predicted = candidates[best].fit(f_train, y_train).predict(f_test)
    return float(np.mean(scores[best])), float(np.std(scores[best])), \
        float(np.mean(predicted == y_test)), int(np.sum(predicted != y_test))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-size", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--cache", default="/tmp/kernelbank-textures")
    args = parser.parse_args(argv)
    from kernelbank.datasets.textures import ensure_textures

    print(f"{'patch':<6}{'recipe':<9}{'F':>5}  {'head':<16}{'cv mean±sd':>14}{'test':>8}"
          f"{'errors':>7}")
    for size in args.patch_size:
        root = Path(args.cache) / f"p{size}"
        ensure_textures(root, patch_size=size)
        train, y_train = load_split(root, "train")
        test, y_test = load_split(root, "test")
        train, test = np.stack(train), np.stack(test)
        for recipe in args.recipes.split(","):
            extractor = TextureFeatures(**RECIPES[recipe]).fit(train)
            f_train, f_test = extractor.transform(train), extractor.transform(test)
            for name, candidates in heads(f_train.shape[1]).items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cv, sd, acc, errors = select_and_test(candidates, f_train, y_train,
                                                          f_test, y_test)
                print(f"{size:<6}{recipe:<9}{f_train.shape[1]:>5}  {name:<16}"
                      f"{f'{cv:.3f}±{sd:.3f}':>14}{acc:>8.4f}{errors:>7d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
