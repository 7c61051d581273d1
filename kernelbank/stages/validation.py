"""Checks of a fitted dataset's classes and splits that turn silent wrong answers into messages.

:func:`check_classes` reads the fit stage's summary (images per split and class, error
rows per stage) and returns warnings for what makes accuracy misleading, or raises when
no meaningful classifier can be trained:

* fewer than 2 classes with training images → ``ValueError`` (one class gives accuracy
  1.0 whatever the features);
* a class with test (or validation) images but no training image → warning (its recall
  is 0 by construction);
* a class with a single training image → warning (no within-class variation to learn);
* records rejected for a missing label (error stage ``label``) → warning with their
  number (they are in ``errors/``; a file directly under the input root has no class
  folder and so no label);
* records with no split (a null Parquet split, or a file outside ``train/``/``test/``)
  next to records that have one → warning: they are read as ``unsplit`` and train the
  classifier, which is rarely what a half-split dataset means.
"""

from __future__ import annotations

from typing import Any

from .common import TRAIN_SPLITS

__all__ = ["check_classes", "LABEL_ERROR_STAGE"]

#: Error-row stage of records rejected for a missing label (see io.readers).
LABEL_ERROR_STAGE = "label"


def check_classes(fit_summary: dict[str, Any], *, where: str, strict: bool = True) -> list[str]:
    """Warnings about the classes in ``fit_summary``; raises for < 2 training classes.

    Parameters
    ----------
    fit_summary : dict
        The fit stage summary: ``counts`` ``{split: {class: images}}`` and ``errors``
        ``{stage: rows}``.
    where : str
        The input, named in the messages.
    strict : bool, default=True
        Raise for fewer than two training classes; ``False`` (the fit stage alone, which
        may legitimately fit one class) makes it the first warning instead.

    Raises
    ------
    ValueError
        With ``strict``, when fewer than two classes have training images (splits
        ``train``/``unsplit``).
    """
    counts: dict[str, dict[str, int]] = fit_summary.get("counts", {})
    train: dict[str, int] = {}
    for split in TRAIN_SPLITS:
        for label, n in counts.get(split, {}).items():
            train[label] = train.get(label, 0) + n
    unlabeled = fit_summary.get("errors", {}).get(LABEL_ERROR_STAGE, 0)
    warnings = []
    if len(train) < 2:
        extra = (f"; {unlabeled} record(s) were rejected for a missing label (see errors/)"
                 if unlabeled else "")
        message = (f"the training images of {where} fall in {len(train)} class(es) "
                   f"{sorted(train)}: a classifier needs at least 2 (with one, every prediction "
                   "is right and the accuracy means nothing). Lay the input out as "
                   f"root/<class>/<image> or root/<train|test>/<class>/<image>{extra}")
        if strict:
            raise ValueError(message)
        warnings.append(message)
    for split, per_class in sorted(counts.items()):
        if split in TRAIN_SPLITS:
            continue
        for label, n in sorted(per_class.items()):
            if label not in train:
                warnings.append(f"class {label!r} has {n} {split} image(s) but no training "
                                f"image: its {split} images can never be classified correctly")
    warnings += [f"class {label!r} has a single training image" for label, n in
                 sorted(train.items()) if n == 1]
    unsplit = sum(counts.get("unsplit", {}).values())
    if unsplit and set(counts) - {"unsplit"}:
        warnings.append(f"{unsplit} record(s) of {where} have no split while others have one "
                        f"({', '.join(sorted(set(counts) - {'unsplit'}))}): they were used as "
                        "training data")
    if unlabeled:
        warnings.append(f"{unlabeled} record(s) have no label and were left out (error stage "
                        "'label' in errors/)")
    return warnings
