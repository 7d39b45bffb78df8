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

# timm's tiny ResNet (373k parameters, built offline): its head is `fc`, like resnet18's.
ARCH = "test_resnet"


def _spec(**overrides) -> ModelSpec:
    values = dict(
        architecture=ARCH,
        task=Task.MULTI_LABEL,
        labels=("a", "b", "c"),
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
        threshold=0.4,
        class_thresholds={"b": 0.7},
    )
    return ModelSpec(**{**values, **overrides})


def test_round_trip_preserves_weights_and_every_fact(tmp_path):
    torch.manual_seed(0)
    model = create_classifier(ARCH, 3).eval()
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
    save_artifact(tmp_path, create_classifier(ARCH, 5), _spec())
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
    backbone = create_classifier(ARCH, 1000)
    weights = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), weights)
    model = create_classifier(ARCH, 4, pretrained=str(weights))
    assert torch.equal(model.conv1[0].weight, backbone.conv1[0].weight)
    assert model.fc.out_features == 4


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        create_classifier(ARCH, 2, pretrained=str(tmp_path / "nope.pth"))


def _mlflow_model_dir(root, artifact_path: str):
    """A minimal MLflow model directory whose MLmodel points its classifier at ``artifact_path``."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    flavor = {"python_function": {"artifacts": {"classifier": {"path": artifact_path}}}}
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": flavor}))
    return root


@pytest.mark.parametrize("where", ["../../somewhere", "artifacts/../../somewhere", "absolute"])
def test_mlmodel_artifact_path_outside_the_model_directory_is_refused(tmp_path, where):
    from models.artifact import classifier_artifact_dir

    outside = tmp_path / "somewhere"
    save_artifact(outside, create_classifier(ARCH, 3), _spec())
    model_dir = tmp_path / "store" / "model"
    _mlflow_model_dir(model_dir, str(outside) if where == "absolute" else where)
    with pytest.raises(ArtifactError, match="outside the model directory"):
        classifier_artifact_dir(model_dir)


def test_mlmodel_artifact_path_through_a_symlink_out_is_refused(tmp_path):
    from models.artifact import classifier_artifact_dir

    (tmp_path / "somewhere").mkdir()
    model_dir = _mlflow_model_dir(tmp_path / "model", "artifacts/classifier")
    (model_dir / "artifacts").mkdir()
    (model_dir / "artifacts" / "classifier").symlink_to(tmp_path / "somewhere")
    with pytest.raises(ArtifactError, match="outside the model directory"):
        classifier_artifact_dir(model_dir)


def test_symlinked_spec_or_weights_leading_out_are_refused(tmp_path):
    from models.artifact import SPEC_FILE, WEIGHTS_FILE, classifier_artifact_dir

    outside = tmp_path / "somewhere"
    save_artifact(outside, create_classifier(ARCH, 3), _spec())
    for name in (SPEC_FILE, WEIGHTS_FILE):
        model_dir = _mlflow_model_dir(tmp_path / f"model-{name}", "artifacts/classifier")
        (model_dir / "artifacts" / "classifier").mkdir(parents=True)
        (model_dir / "artifacts" / "classifier" / name).symlink_to(outside / name)
        with pytest.raises(ArtifactError, match="outside the model directory"):
            classifier_artifact_dir(model_dir)


def test_mlmodel_artifact_path_inside_the_model_directory_is_accepted(tmp_path):
    from models.artifact import classifier_artifact_dir

    model_dir = _mlflow_model_dir(tmp_path / "model", "artifacts/./classifier")
    assert classifier_artifact_dir(model_dir) == (model_dir / "artifacts" / "classifier").resolve()


def test_wrong_tensor_shapes_are_named(tmp_path):
    save_artifact(tmp_path, create_classifier(ARCH, 5), _spec())
    with pytest.raises(ArtifactError, match=r"fc\.weight has shape \(5, 96\).*expects \(3, 96\)"):
        load_artifact(tmp_path)
