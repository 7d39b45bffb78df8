import json

import pytest
import torch
from pydantic import ValidationError

from models import (
    ModelSpec,
    PreprocessConfig,
    Task,
    create_classifier,
    load_artifact,
    save_artifact,
)
from models.artifact import ArtifactError, read_spec


def _spec(**overrides) -> ModelSpec:
    values = dict(
        architecture="resnet18",
        task=Task.MULTI_LABEL,
        labels=("a", "b", "c"),
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
        threshold=0.4,
        class_thresholds={"b": 0.7},
    )
    return ModelSpec(**{**values, **overrides})


def test_round_trip_preserves_weights_and_every_fact(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("resnet18", 3).eval()
    spec = _spec()
    save_artifact(tmp_path, model, spec)

    loaded, loaded_spec = load_artifact(tmp_path)
    assert loaded_spec == spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # No pickled code anywhere on the load path: only safetensors and JSON.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "model.safetensors"]
    assert json.loads((tmp_path / "classifier.json").read_text())["labels"] == ["a", "b", "c"]


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="classifier.json is missing"):
        read_spec(tmp_path)
    (tmp_path / "classifier.json").write_text(_spec().model_dump_json())
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_artifact(tmp_path)


def test_weights_that_do_not_fit_the_spec_are_rejected(tmp_path):
    save_artifact(tmp_path, create_classifier("resnet18", 5), _spec())
    with pytest.raises(ArtifactError, match="cannot load weights"):
        load_artifact(tmp_path)


def test_corrupt_spec_is_rejected(tmp_path):
    (tmp_path / "classifier.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid model spec"):
        read_spec(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_thresholds": {"zzz": 0.5}}, "unknown labels"),
        ({"class_thresholds": {"a": 1.5}}, "must be in \\[0, 1\\]"),
        ({"labels": ("a", "a")}, "duplicate"),
        ({"format_version": 99}, "not supported"),
        ({"threshold": -0.1}, "greater than or equal"),
    ],
)
def test_spec_validation(overrides, message):
    with pytest.raises(ValidationError, match=message):
        _spec(**overrides)


def test_unknown_architecture_suggests_names():
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet5o'"):
        create_classifier("resnet5o", 3)


def test_local_pretrained_weights_are_loaded_and_head_replaced(tmp_path):
    torch.manual_seed(1)
    backbone = create_classifier("resnet18", 1000)
    weights = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), weights)
    model = create_classifier("resnet18", 4, pretrained=str(weights))
    assert torch.equal(model.conv1.weight, backbone.conv1.weight)
    assert model.fc.out_features == 4


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        create_classifier("resnet18", 2, pretrained=str(tmp_path / "nope.pth"))
