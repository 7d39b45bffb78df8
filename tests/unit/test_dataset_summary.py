"""The dataset summary logged before training: counts per class and split, image sizes, and
files shared by two splits."""

import shutil

import pytest
from PIL import Image

from training.data import Sample
from training.summary import summarize_dataset


def _image(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def splits(tmp_path):
    cat = _image(tmp_path / "train/cat/a.png", (40, 30), "red")
    dog = _image(tmp_path / "train/dog/b.png", (64, 64), "blue")
    dog2 = _image(tmp_path / "train/dog/c.png", (100, 20), "green")
    leaked = tmp_path / "val/cat/copy-of-a.png"
    leaked.parent.mkdir(parents=True)
    shutil.copyfile(cat, leaked)  # same bytes, another split: a leak
    other = _image(tmp_path / "test/dog/d.png", (32, 32), "white")
    return {
        "train": [
            Sample(cat, ("cat",), str(cat)),
            Sample(dog, ("dog",), str(dog)),
            Sample(dog2, ("dog",), str(dog2)),
        ],
        "val": [Sample(leaked, ("cat",), "manifest.csv:row 7")],
        "test": [Sample(other, ("dog",), str(other))],
    }


def test_counts_per_class_and_split(splits):
    summary = summarize_dataset(splits=splits, labels=["cat", "dog"], max_workers=1)
    assert summary.split_sizes == {"train": 3, "val": 1, "test": 1}
    assert summary.per_class == {
        "cat": {"train": 1, "val": 1, "test": 0},
        "dog": {"train": 2, "val": 0, "test": 1},
    }
    table = summary.table()
    assert "| cat | 1 | 1 | 0 |" in table
    assert "| **all images** | 3 | 1 | 1 |" in table


def test_image_sizes_per_split(splits):
    summary = summarize_dataset(splits=splits, labels=["cat", "dog"])
    train = summary.sizes["train"]
    assert (train.min_side, train.max_side) == (20, 100)
    assert train.median_width == 64 and train.median_height == 30
    assert train.unreadable == 0


def test_identical_files_in_two_splits_are_reported(splits):
    summary = summarize_dataset(splits=splits, labels=["cat", "dog"])
    assert summary.duplicates_across_splits == 2
    (group,) = summary.duplicate_groups
    assert group.splits == ("train", "val")
    assert any("manifest.csv:row 7" in origin for origin in group.origins)
    assert summary.metrics()["data_duplicates_across_splits"] == 2.0


def test_duplicates_within_one_split_are_not_a_leak(tmp_path):
    a = _image(tmp_path / "a.png", (8, 8), "red")
    b = tmp_path / "b.png"
    shutil.copyfile(a, b)
    summary = summarize_dataset(
        splits={"train": [Sample(a, ("x",), "a"), Sample(b, ("x",), "b")], "val": []},
        labels=["x"],
    )
    assert summary.duplicates_across_splits == 0
    assert summary.sizes["val"] is None


def test_multi_label_counts_images_per_label(tmp_path):
    a = _image(tmp_path / "a.png", (8, 8), "red")
    b = _image(tmp_path / "b.png", (8, 8), "blue")
    summary = summarize_dataset(
        splits={"train": [Sample(a, ("circle", "square"), "a"), Sample(b, ("circle",), "b")]},
        labels=["circle", "square", "star"],
    )
    assert summary.per_class == {
        "circle": {"train": 2},
        "square": {"train": 1},
        "star": {"train": 0},
    }


def test_unreadable_header_is_counted_not_fatal(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    summary = summarize_dataset(splits={"train": [Sample(bad, ("x",), "bad")]}, labels=["x"])
    assert summary.sizes["train"].unreadable == 1
