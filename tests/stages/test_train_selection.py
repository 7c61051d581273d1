"""No test-set selection in the train stage: the validation rows and the epoch choice.

* :func:`carve_validation` is stratified, seeded and blind to row order.
* Two inputs that differ only in the test split's labels (two classes' test folders
  swapped) give the train stage the same train and validation rows (real PNG files,
  a real local Ray): nothing the stage chooses can see the test labels. That the
  epoch is chosen on those validation rows and the test split is scored once, after
  training, is checked on a full run in ``test_train.py``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from kernelbank.datasets import write_textures
from kernelbank.stages.holdout import carve_validation
from kernelbank.stages.train import TrainConfig, load_train_test


def test_carve_validation_is_stratified_seeded_and_order_free():
    ids = [f"img{i:03d}" for i in range(100)]
    labels = ["a"] * 50 + ["b"] * 40 + ["c"] * 9 + ["d"]
    chosen, counts = carve_validation(ids, labels, 0.2, random_state=5)
    assert counts == {"a": 10, "b": 8, "c": 2, "d": 0}     # a one-image class keeps its image
    assert len(chosen) == 20
    assert sum(i < 50 for i in map(lambda s: int(s[3:]), chosen)) == 10
    order = np.random.default_rng(0).permutation(100)
    again, _ = carve_validation([ids[i] for i in order], [labels[i] for i in order], 0.2, 5)
    assert again == chosen
    other, _ = carve_validation(ids, labels, 0.2, random_state=6)
    assert other != chosen
    with pytest.raises(ValueError, match="validation_fraction"):
        carve_validation(ids, labels, 1.0)


def _rows(dataset) -> dict[str, str]:
    return {str(r["id"]).rsplit("/", 1)[-1]: str(r["label"])
            for r in dataset.select_columns(["id", "label"]).take_all()}


@pytest.mark.ray
@pytest.mark.slow
def test_permuted_test_labels_leave_train_and_validation_rows_unchanged(ray_local, tmp_path):
    classes = ("brick", "grass")
    data = tmp_path / "textures"
    write_textures(data, patch_size=32, classes=classes)
    permuted = tmp_path / "permuted"
    shutil.copytree(data, permuted)
    (permuted / "test/brick").rename(permuted / "test/tmp")
    (permuted / "test/grass").rename(permuted / "test/brick")
    (permuted / "test/tmp").rename(permuted / "test/grass")

    loaded = {}
    for name, root in (("original", data), ("permuted", permuted)):
        config = TrainConfig(input=str(root), output=str(tmp_path / f"out_{name}"),
                             classes=classes, random_state=3)
        datasets, class_names, validation, _ = load_train_test(config)
        loaded[name] = ({split: _rows(ds) for split, ds in datasets.items()}, validation)
    (first, first_validation), (second, second_validation) = loaded["original"], \
        loaded["permuted"]
    assert first_validation == second_validation
    assert first_validation["per_class"] == {"brick": 32, "grass": 32}
    assert first["train"] == second["train"] and len(first["train"]) == 256
    assert first["validation"] == second["validation"] and len(first["validation"]) == 64
    assert not set(first["train"]) & set(first["validation"])
    # the test rows are the same files with swapped labels
    assert set(first["test"]) == set(second["test"]) and len(first["test"]) == 160
    assert all(first["test"][k] != second["test"][k] for k in first["test"])
