"""Explicit train/val/test splits: folders (data.val_root/test_root) and a manifest's split
column. With explicit splits the data decides; nothing is split at random."""

import pytest
from PIL import Image
from pydantic import ValidationError

import training.evaluate  # noqa: F401  (imports mlflow, which runs `uname`, outside the guard)
from training.build import load_split
from training.config import DataConfig, TrainConfig
from training.data import DataError


def _image(path, colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _folder(root, counts: dict[str, int], tag: str = ""):
    for label, n in counts.items():
        for i in range(n):
            _image(root / label / f"{tag}{i}.png")
    return root


def _cfg(**data) -> TrainConfig:
    return TrainConfig(data=DataConfig(**data), seed=3)


def _names(samples):
    return sorted(str(s.path) for s in samples)


@pytest.fixture
def layout(tmp_path):
    """The common train/ val/ test/ layout."""
    return {
        "train": _folder(tmp_path / "train", {"a": 4, "b": 4}, "t"),
        "val": _folder(tmp_path / "val", {"a": 2, "b": 1}, "v"),
        "test": _folder(tmp_path / "test", {"a": 1, "b": 3}, "x"),
    }


def _files(root):
    return sorted(str(p) for p in root.rglob("*.png"))


def test_folders_are_the_splits_and_nothing_is_split_at_random(layout):
    cfg = _cfg(root=layout["train"], val_root=layout["val"], test_root=layout["test"])
    split = load_split(cfg=cfg)
    assert _names(split.train_samples) == _files(layout["train"])
    assert _names(split.val_samples) == _files(layout["val"])
    assert _names(split.test_samples) == _files(layout["test"])
    assert split.labels.names == ("a", "b")


def test_test_root_alone_keeps_test_untouched_and_splits_validation_off_training(layout):
    split = load_split(cfg=_cfg(root=layout["train"], test_root=layout["test"]))
    assert _names(split.test_samples) == _files(layout["test"])
    assert _names(split.train_samples + split.val_samples) == _files(layout["train"])
    assert split.val_samples and split.train_samples


def test_no_explicit_split_has_no_test_samples(layout):
    split = load_split(cfg=_cfg(root=layout["train"]))
    assert split.test_samples == []


def test_label_set_comes_from_training_and_unknown_val_labels_fail_with_their_origin(layout):
    _image(layout["val"] / "c" / "new.png")
    with pytest.raises(DataError, match=r"(?s)validation split.*c/new.png: unknown label"):
        load_split(cfg=_cfg(root=layout["train"], val_root=layout["val"]))


def test_unknown_test_labels_are_skipped_and_counted_with_on_error_skip(layout):
    _image(layout["test"] / "c" / "new.png")
    cfg = _cfg(root=layout["train"], test_root=layout["test"], on_error="skip")
    split = load_split(cfg=cfg)
    assert split.labels.names == ("a", "b")
    assert len(split.test_samples) == 4
    assert [i.origin for i in split.issues] == [str(layout["test"] / "c" / "new.png")]


def test_explicit_val_refuses_k_fold(layout):
    with pytest.raises(ValidationError, match="num_folds cannot be used"):
        DataConfig(root=layout["train"], val_root=layout["val"], num_folds=3)


def test_csv_takes_its_splits_from_the_split_column_not_from_roots(tmp_path):
    with pytest.raises(ValidationError, match="split"):
        DataConfig(format="csv", root=tmp_path, manifest=tmp_path / "m.csv", test_root=tmp_path)


def _manifest(tmp_path, rows: list[str], header="path,labels,split"):
    for i in range(len(rows)):
        _image(tmp_path / f"{i}.png")
    path = tmp_path / "m.csv"
    path.write_text(header + "\n" + "".join(f"{i}.png,{row}\n" for i, row in enumerate(rows)))
    return path


def _csv_cfg(manifest, **data) -> TrainConfig:
    return _cfg(format="csv", root=manifest.parent, manifest=manifest, **data)


def test_manifest_split_column_decides(tmp_path):
    rows = ["a,train", "b,train", "a;b,TRAIN", "a,val", "b, val", "a;b,test", "b,test"]
    manifest = _manifest(tmp_path, rows)
    split = load_split(cfg=_csv_cfg(manifest))
    stems = {
        name: sorted(s.path.stem for s in samples)
        for name, samples in (
            ("train", split.train_samples),
            ("val", split.val_samples),
            ("test", split.test_samples),
        )
    }
    assert stems == {"train": ["0", "1", "2"], "val": ["3", "4"], "test": ["5", "6"]}


def test_manifest_rows_without_a_valid_split_are_named(tmp_path):
    manifest = _manifest(tmp_path, ["a,train", "b,", "a,validation", "b,val"])
    with pytest.raises(DataError) as excinfo:
        load_split(cfg=_csv_cfg(manifest, on_error="skip"))  # not skippable: it moves data
    message = str(excinfo.value)
    assert "2 row(s)" in message
    assert "m.csv:row 3: split ''" in message
    assert "m.csv:row 4: split 'validation'" in message


def test_manifest_label_unknown_to_training_is_a_data_issue(tmp_path):
    manifest = _manifest(tmp_path, ["a,train", "b,train", "a,val", "c,test", "a;b,test"])
    with pytest.raises(DataError, match=r"m.csv:row 5 .*label\(s\) \['c'\] not in the training"):
        load_split(cfg=_csv_cfg(manifest))
    split = load_split(cfg=_csv_cfg(manifest, on_error="skip"))
    assert split.labels.names == ("a", "b")
    assert [s.path.stem for s in split.test_samples] == ["4"]
    assert len(split.issues) == 1


def test_manifest_without_val_rows_splits_validation_off_train_rows(tmp_path):
    rows = ["a,train"] * 4 + ["b,train"] * 4 + ["a,test", "b,test"]
    split = load_split(cfg=_csv_cfg(_manifest(tmp_path, rows)))
    assert sorted(s.path.stem for s in split.test_samples) == ["8", "9"]
    assert sorted(s.path.stem for s in split.train_samples + split.val_samples) == [
        str(i) for i in range(8)
    ]


def test_manifest_with_val_rows_refuses_k_fold(tmp_path):
    manifest = _manifest(tmp_path, ["a,train", "b,train", "a,val"])
    with pytest.raises(DataError, match="num_folds"):
        load_split(cfg=_csv_cfg(manifest, num_folds=2))


def test_manifest_without_split_column_is_split_at_random_as_before(tmp_path):
    manifest = _manifest(tmp_path, ["a"] * 5 + ["b"] * 5, header="path,labels")
    split = load_split(cfg=_csv_cfg(manifest))
    assert split.test_samples == []
    assert len(split.train_samples) + len(split.val_samples) == 10


def test_evaluate_refuses_bad_input_with_exit_code_2_before_loading_a_model(tmp_path, caplog):
    from training.__main__ import main

    base = ["evaluate", "models:/m@champion", "--data.root", str(tmp_path)]
    assert main([*base, "--split", "test"]) == 2  # no data.test_root
    assert "split test needs data.test_root" in caplog.text
    assert main([*base, "--split", "holdout"]) == 2
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main([*base, "--tracking_uri", missing]) == 2
    assert "none.db" in caplog.text
    assert not (tmp_path / "none.db").exists()
