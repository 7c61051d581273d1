"""The harder built-in benchmark is deterministic and has the structure it promises."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from kernelbank.datasets.hard_textures import HARD_CLASSES, load_hard_textures

SOME = ("brick", "gmrf_a", "voronoi_dense")


def _checksum(images, labels, splits) -> str:
    digest = hashlib.sha256(images.tobytes())
    digest.update("|".join(map(str, labels)).encode() + "|".join(map(str, splits)).encode())
    return digest.hexdigest()


def test_two_builds_give_the_same_patches_and_another_seed_does_not():
    first = load_hard_textures(patch_size=16, n_train=6, n_test=4, classes=SOME)
    second = load_hard_textures(patch_size=16, n_train=6, n_test=4, classes=SOME)
    other = load_hard_textures(patch_size=16, n_train=6, n_test=4, classes=SOME, random_state=1)
    assert _checksum(*first) == _checksum(*second)
    assert _checksum(*first) != _checksum(*other)
    images, labels, splits = first
    assert images.shape == (30, 16, 16) and images.dtype == np.uint8
    assert [int(np.sum((labels == c) & (splits == "train"))) for c in SOME] == [6, 6, 6]
    assert [int(np.sum((labels == c) & (splits == "test"))) for c in SOME] == [4, 4, 4]
    # a class's patches do not depend on which other classes are built
    alone = load_hard_textures(patch_size=16, n_train=6, n_test=4, classes=("gmrf_a",))
    assert np.array_equal(alone[0], images[labels == "gmrf_a"])


def test_classes_and_arguments_are_checked():
    assert len(HARD_CLASSES) == 28 and list(HARD_CLASSES) == sorted(HARD_CLASSES)
    with pytest.raises(ValueError, match="classes must be"):
        load_hard_textures(classes=("brick", "nope"))
    with pytest.raises(ValueError, match="patch_size"):
        load_hard_textures(patch_size=100)


def test_train_augmentations_are_deterministic_views_of_their_sources():
    from kernelbank.datasets.hard_textures import hard_train_augmentations
    images, labels, splits = load_hard_textures(patch_size=16, n_train=6, n_test=4,
                                                classes=SOME)
    views, view_labels, source = hard_train_augmentations(patch_size=16, n_train=6, n_test=4,
                                                          classes=SOME, copies=2)
    again = hard_train_augmentations(patch_size=16, n_train=6, n_test=4, classes=SOME,
                                     copies=2)
    assert np.array_equal(views, again[0]) and np.array_equal(source, again[2])
    train_labels = labels[splits == "train"]
    assert views.shape == (36, 16, 16) and np.bincount(source).tolist() == [2] * 18
    assert list(view_labels) == list(train_labels[source])
    # a view is a new patch (any angle, rescaled, relit), not a copy of its source
    assert not any(np.array_equal(v, images[splits == "train"][s])
                   for v, s in zip(views, source))
    with pytest.raises(ValueError, match="copies"):
        hard_train_augmentations(copies=0)
