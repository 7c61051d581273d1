"""Class and split checks that turn silent wrong answers into errors and warnings."""

import pytest

from kernelbank.stages.validation import check_classes


def test_one_training_class_raises_and_names_the_input():
    with pytest.raises(ValueError, match="in/ fall in 1 class"):
        check_classes({"counts": {"train": {"a": 3}, "test": {"a": 1, "b": 1}}}, where="in/")


def test_test_only_class_single_image_class_and_missing_labels_warn():
    warnings = check_classes({"counts": {"train": {"a": 3, "b": 1}, "test": {"c": 2}},
                              "errors": {"label": 4}}, where="in/")
    assert any("'c' has 2 test image(s) but no training" in w for w in warnings)
    assert any("'b' has a single training image" in w for w in warnings)
    assert any("4 record(s) have no label" in w for w in warnings)


def test_records_without_a_split_next_to_split_ones_warn():
    warnings = check_classes({"counts": {"train": {"a": 2, "b": 2}, "unsplit": {"a": 5},
                                         "test": {"a": 1, "b": 1}}}, where="t.parquet")
    assert any("5 record(s) of t.parquet have no split" in w and "test, train" in w
               for w in warnings)
    # an entirely unsplit dataset is a normal layout: no warning
    assert check_classes({"counts": {"unsplit": {"a": 2, "b": 2}}}, where="in/") == []
