"""Texture patches: files, sizes, content, leak-free train/test split, determinism."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from kernelbank.datasets import (COLOUR_CLASSES, TEXTURE_CLASSES, ensure_textures,
                                 load_texture_image, load_textures, texture_patch_positions,
                                 write_textures)

NAME = re.compile(r"^(?P<cls>[a-z]+)_(?P<row>\d{4})_(?P<col>\d{4})\.png$")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("textures")
    return root, write_textures(root, patch_size=64)


@pytest.fixture(scope="module")
def sources():
    return {name: load_texture_image(name) for name in TEXTURE_CLASSES}


def positions_on_disk(root, split, name):
    found = []
    for path in sorted((root / split / name).iterdir()):
        match = NAME.match(path.name)
        assert match and match["cls"] == name, path
        found.append((int(match["row"]), int(match["col"]), path))
    return found


def test_classes_and_counts(written):
    root, summary = written
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(TEXTURE_CLASSES)
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(TEXTURE_CLASSES)
    assert len(TEXTURE_CLASSES) == 6
    # 512 x 512 sources, 64-pixel patches: 8 rows; of 8 columns round(0.3 * 8) = 2 are test,
    # and the 16-pixel gap leaves (384 - 16) // 64 = 5 train columns.
    for name in TEXTURE_CLASSES:
        assert summary["counts"]["train"][name] == 40 == len(list((root / "train" / name).iterdir()))
        assert summary["counts"]["test"][name] == 16 == len(list((root / "test" / name).iterdir()))


def test_files_decode_to_the_source_pixels(written, sources):
    root, _ = written
    for split in ("train", "test"):
        for name in TEXTURE_CLASSES:
            for row, col, path in positions_on_disk(root, split, name):
                with Image.open(path) as image:
                    assert image.mode == "L" and image.size == (64, 64)
                    pixels = np.asarray(image)
                np.testing.assert_array_equal(pixels, sources[name][row:row + 64, col:col + 64])


def test_sources_are_greyscale_textures_not_blank(sources):
    for name, image in sources.items():
        assert image.shape == (512, 512) and image.dtype == np.uint8, name
        # Every 64-pixel block has texture, not a flat region (rules out blank crops).
        blocks = image.reshape(8, 64, 8, 64).swapaxes(1, 2).reshape(64, -1).astype(float)
        assert blocks.std(axis=1).min() > 2.0, name


def test_no_test_patch_overlaps_or_touches_a_train_patch(written):
    root, _ = written
    for name in TEXTURE_CLASSES:
        train = positions_on_disk(root, "train", name)
        test = positions_on_disk(root, "test", name)
        for row, col, _ in test:
            for train_row, train_col, _ in train:
                # Rectangles grown by one pixel must not intersect: no shared or adjacent pixel.
                apart_vertically = row > train_row + 64 or train_row > row + 64
                apart_horizontally = col > train_col + 64 or train_col > col + 64
                assert apart_vertically or apart_horizontally, (name, row, col, train_row, train_col)


def test_no_pixel_content_shared_between_splits(written):
    root, _ = written
    digests = {"train": set(), "test": set()}
    for split in digests:
        for name in TEXTURE_CLASSES:
            for path in (root / split / name).iterdir():
                with Image.open(path) as image:
                    pixels = np.asarray(image)
                # Hash every 16-pixel row segment (position-free): a test patch that repeats
                # any piece of a train patch, e.g. from an overlapping crop, shows up here.
                for r in range(0, 64, 4):
                    for c in range(0, 49, 16):
                        digests[split].add(hashlib.sha1(pixels[r, c:c + 16].tobytes()).digest())
    assert not digests["train"] & digests["test"]


def test_load_textures_matches_written_files(written):
    root, summary = written
    images, labels, splits = load_textures(patch_size=64)
    assert images.shape == (336, 64, 64) and images.dtype == np.uint8
    assert labels.tolist() == [p["class"] for p in summary["patches"]]
    assert splits.tolist() == [p["split"] for p in summary["patches"]]
    for image, record in zip(images[::17], summary["patches"][::17]):
        with Image.open(root / record["path"]) as decoded:
            np.testing.assert_array_equal(image, np.asarray(decoded))


def test_written_files_are_deterministic(written, tmp_path):
    root, summary = written
    again = write_textures(tmp_path, patch_size=64)
    assert again["patches"] == summary["patches"]
    for record in summary["patches"][::7]:
        assert (tmp_path / record["path"]).read_bytes() == (root / record["path"]).read_bytes()


def test_ensure_textures_reuses_then_rewrites(tmp_path):
    first = ensure_textures(tmp_path, patch_size=128, classes=["brick", "grass"])
    probe = tmp_path / first["patches"][0]["path"]
    stamp = probe.stat().st_mtime_ns
    again = ensure_textures(tmp_path, patch_size=128, classes=["brick", "grass"])
    assert again["patches"] == first["patches"] and probe.stat().st_mtime_ns == stamp
    probe.unlink()  # a missing file triggers a rewrite
    ensure_textures(tmp_path, patch_size=128, classes=["brick", "grass"])
    assert probe.exists()
    (tmp_path / "train" / "grass" / "mine.png").write_bytes(b"not ours")
    other = ensure_textures(tmp_path, patch_size=96, classes=["brick"])
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    # Old 128-pixel patches are removed, a file that is not a patch is kept.
    assert on_disk == sorted([p["path"] for p in other["patches"]] + ["train/grass/mine.png"])


@pytest.mark.parametrize("shape, patch_size, test_fraction, gap", [
    ((512, 512), 64, 0.3, None), ((512, 512), 32, 0.25, None), ((300, 451), 48, 0.5, 1),
    ((872, 1000), 100, 0.2, 30), ((64, 200), 64, 0.3, 5),
])
def test_patch_positions_geometry(shape, patch_size, test_fraction, gap):
    positions = texture_patch_positions(shape, patch_size, test_fraction, gap)
    gap = max(1, patch_size // 4) if gap is None else gap
    cells = {split: np.zeros(shape, dtype=int) for split in positions}
    for split, corners in positions.items():
        assert corners
        for row, col in corners:
            assert 0 <= row and row + patch_size <= shape[0] and 0 <= col and col + patch_size <= shape[1]
            cells[split][row:row + patch_size, col:col + patch_size] += 1
        assert cells[split].max() == 1  # patches within a split never overlap
    train_right = max(col for _, col in positions["train"]) + patch_size
    test_left = min(col for _, col in positions["test"])
    assert test_left - train_right >= gap
    n_columns = shape[1] // patch_size
    n_test_columns = len({col for _, col in positions["test"]})
    assert n_test_columns == max(1, int(np.floor(test_fraction * n_columns + 0.5)))


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="no train patch"):
        texture_patch_positions((512, 512), 300)
    with pytest.raises(ValueError, match="test_fraction"):
        texture_patch_positions((512, 512), 64, test_fraction=1.0)
    with pytest.raises(ValueError, match="gap"):
        texture_patch_positions((512, 512), 64, gap=0)
    with pytest.raises(ValueError, match="unknown texture class"):
        load_texture_image("astronaut")
    with pytest.raises(ValueError, match="subset"):
        load_textures(classes=["brick", "face"])


def test_colour_patches_are_the_colour_sources_and_replicated_greys(tmp_path):
    import skimage.data as data
    from skimage.color import rgb2gray
    images, labels, splits = load_textures(patch_size=128, colour=True)
    grey, grey_labels, _ = load_textures(patch_size=128)
    assert images.shape == (len(grey), 3, 128, 128) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, grey_labels)
    for name in TEXTURE_CLASSES:
        patches = images[labels == name]
        equal = (patches[:, 0] == patches[:, 1]).all() and (patches[:, 1] == patches[:, 2]).all()
        assert equal == (name not in COLOUR_CLASSES), name
        if name not in COLOUR_CLASSES:     # replicated: each channel is the grey patch
            np.testing.assert_array_equal(patches[:, 0], grey[grey_labels == name])
    # the first tissue patch is the top-left corner of the IHC photograph itself
    first = images[(labels == "tissue") & (splits == "train")][0]
    np.testing.assert_array_equal(first.transpose(1, 2, 0),
                                  data.immunohistochemistry()[:128, :128])
    # and its grey version is that patch's luminance, rounded
    np.testing.assert_array_equal(grey[(grey_labels == "tissue") & (splits == "train")][0],
                                  np.rint(rgb2gray(first.transpose(1, 2, 0)) * 255))
    summary = write_textures(tmp_path, patch_size=128, classes=["moon", "tissue"], colour=True)
    assert summary["params"]["colour"] is True
    written = np.asarray(Image.open(tmp_path / summary["patches"][0]["path"]))
    assert written.shape == (128, 128, 3)
    assert ensure_textures(tmp_path, patch_size=128, classes=["moon", "tissue"],
                           colour=True)["patches"] == summary["patches"]
