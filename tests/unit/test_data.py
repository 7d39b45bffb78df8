import pytest
from PIL import Image

from training.config import DataConfig
from training.data import DataError, load_dataset
from training.splits import split_samples


def _image(path, colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def folder(tmp_path):
    for label in ("a", "b"):
        for i in range(5):
            _image(tmp_path / "imgs" / label / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def manifest(tmp_path):
    for i in range(4):
        _image(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    path = tmp_path / "m.csv"
    path.write_text(
        "path,labels\n0.png,a;b\n1.png,b\n2.png,a\n3.png,c\n"
        "missing.png,a\nbroken.png,b\n,a\n2.png,\n"
    )
    return path


def test_image_folder_labels_from_directories(folder):
    data = load_dataset(DataConfig(root=folder))
    assert data.labels.names == ("a", "b")
    assert len(data.samples) == 10
    assert data.issues == []


def test_non_image_file_in_folder_is_reported(folder):
    (folder / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"(?s)1 bad sample.*notes.txt: not an image file"):
        load_dataset(DataConfig(root=folder))


def test_manifest_problems_name_file_and_row(manifest):
    cfg = DataConfig(format="csv", root=manifest.parent, manifest=manifest, labels=["a", "b"])
    with pytest.raises(DataError) as excinfo:
        load_dataset(cfg)
    message = str(excinfo.value)
    assert "5 bad sample(s)" in message
    assert "m.csv:row 5" in message and "unknown label(s) ['c']" in message
    assert "m.csv:row 6" in message and "file not found" in message
    assert "m.csv:row 7" in message and "not a recognised image format" in message
    assert "m.csv:row 8: empty path" in message
    assert "m.csv:row 9: no labels" in message


def test_skip_policy_keeps_good_rows_and_counts_the_rest(manifest):
    cfg = DataConfig(
        format="csv", root=manifest.parent, manifest=manifest, labels=["a", "b"], on_error="skip"
    )
    data = load_dataset(cfg)
    assert [s.labels for s in data.samples] == [("a", "b"), ("b",), ("a",)]
    assert len(data.issues) == 5


def test_manifest_missing_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,label\nx.png,a\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['labels', 'path'\]"):
        load_dataset(DataConfig(format="csv", root=tmp_path, manifest=path))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(root=tmp_path / "nope"))


def test_stratified_split_keeps_every_class_in_both_sides(folder):
    data = load_dataset(DataConfig(root=folder))
    train, val = split_samples(data.samples, DataConfig(root=folder, val_fraction=0.2), seed=1)
    assert {s.labels[0] for s in val} == {"a", "b"}
    assert len(train) == 8 and len(val) == 2
    assert not {s.path for s in train} & {s.path for s in val}


def test_k_fold_splits_partition_the_data(folder):
    data = load_dataset(DataConfig(root=folder))
    vals = []
    for fold in range(3):
        cfg = DataConfig(root=folder, num_folds=3, fold=fold)
        train, val = split_samples(data.samples, cfg, seed=7)
        assert len(train) + len(val) == 10
        vals.append({s.path for s in val})
    assert set.union(*vals) == {s.path for s in data.samples}
    assert sum(len(v) for v in vals) == 10


def test_split_is_deterministic_for_a_seed(folder):
    data = load_dataset(DataConfig(root=folder))
    cfg = DataConfig(root=folder)
    assert split_samples(data.samples, cfg, 3) == split_samples(data.samples, cfg, 3)


def test_every_class_keeps_a_training_sample(tmp_path):
    for label, count in (("a", 2), ("b", 6)):
        for i in range(count):
            _image(tmp_path / "imgs" / label / f"{i}.png")
    cfg = DataConfig(root=tmp_path / "imgs", val_fraction=0.8)
    data = load_dataset(cfg)
    train, val = split_samples(data.samples, cfg, seed=0)
    assert {s.labels[0] for s in train} == {"a", "b"}
    assert {s.labels[0] for s in val} == {"a", "b"}


@pytest.fixture
def outside_root(tmp_path):
    """A data root, a readable image outside it, and a manifest that reaches for it."""
    root = tmp_path / "root"
    _image(root / "in.png")
    (root / "sub").mkdir()
    _image(tmp_path / "outside" / "secret.png")
    manifest = root / "m.csv"
    manifest.write_text(
        "path,labels\n"
        "in.png,a\n"
        "../outside/secret.png,a\n"
        f"{tmp_path / 'outside' / 'secret.png'},b\n"
        "sub/../../outside/secret.png,b\n"
        f"{root / 'in.png'},b\n"
    )
    return manifest


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_manifest_paths_outside_the_root_are_refused(outside_root, on_error):
    cfg = DataConfig(
        format="csv", root=outside_root.parent, manifest=outside_root, on_error=on_error
    )
    with pytest.raises(DataError) as excinfo:
        load_dataset(cfg)
    message = str(excinfo.value)
    assert "3 manifest path(s) outside data.root" in message
    assert "m.csv:row 3: ../outside/secret.png" in message
    assert "m.csv:row 4: /" in message
    assert "m.csv:row 5: sub/../../outside/secret.png" in message
    assert "row 2" not in message and "row 6" not in message  # inside the root, even absolute
    assert "data.allow_outside_root=true" in message


def test_manifest_paths_outside_the_root_are_allowed_when_opted_in(outside_root):
    cfg = DataConfig(
        format="csv", root=outside_root.parent, manifest=outside_root, allow_outside_root=True
    )
    data = load_dataset(cfg)
    assert len(data.samples) == 5
    assert data.issues == []
