"""Real-data options on real short runs (timm's tiny ``test_resnet``): class balance in effect and
logged, per-class thresholds reaching the registered model and the predictor, and two-stage
fine-tuning from a local weights file, resumed across the stage boundary."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from torch.utils.data import WeightedRandomSampler

from models import Predictor
from models.artifact import classifier_artifact_dir, read_spec
from models.factory import create_classifier
from training import engine
from training import loop as loop_module
from training import train as train_module
from training.config import load_config
from training.synthetic import SHAPES, SyntheticSpec, generate

# Majority classes keep all their images, the minority ones a few.
KEPT_PER_CLASS = {"circle": 16, "square": 16, "triangle": 4}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """An imbalanced single-label folder (16/16/4 images) and a small multi-label manifest."""
    root = tmp_path_factory.mktemp("realdata")
    data = generate(root, SyntheticSpec(single_label_per_class=16, multi_label_images=40, seed=9))
    for shape in SHAPES:
        keep = KEPT_PER_CLASS.get(shape, 0)
        for image in sorted((data["single_label"] / shape).glob("*.jpg"))[keep:]:
            image.unlink()
        if not keep:
            shutil.rmtree(data["single_label"] / shape)
    return data


def _settings(tmp_path, tracking_uri, **overrides) -> dict[str, str]:
    """Dotted settings for a quick test_resnet run on 32-pixel images."""
    base = {
        "mlflow.experiment": "tests-realdata",
        "optim.epochs": "2",
        "optim.batch_size": "8",
        "optim.patience": "10",
        "data.num_workers": "0",
        "data.image_size": "32",
        "model.architecture": "test_resnet",
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.registered_model": "null",
        "mlflow.artifact_location": str(tmp_path / "artifacts"),
        "output_dir": str(tmp_path / "out"),
    }
    return {**base, **overrides}


def _spy_epochs(monkeypatch, *, crash_at: int | None = None) -> list[dict]:
    """Record what each epoch trains with (real training goes on); optionally crash one."""
    calls: list[dict] = []

    def spy(**kwargs):
        model = kwargs["model"]
        calls.append(
            {
                "epoch": kwargs["epoch"],
                "loss_fn": kwargs["loss_fn"],
                "loader": kwargs["loader"],
                "freeze_backbone": kwargs["freeze_backbone"],
                "trainable": {n for n, p in model.named_parameters() if p.requires_grad},
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        )
        if kwargs["epoch"] == crash_at:
            raise RuntimeError("simulated crash")
        return engine.train_one_epoch(**kwargs)

    monkeypatch.setattr(loop_module, "train_one_epoch", spy)
    return calls


def test_class_weighted_loss_is_in_effect_and_logged(
    tmp_path, real_data, tracking_uri, monkeypatch
):
    calls = _spy_epochs(monkeypatch)
    cfg = load_config(
        overrides=_settings(
            tmp_path,
            tracking_uri,
            **{
                "mlflow.experiment": "tests-balance",
                "data.root": str(real_data["single_label"]),
                "optim.class_balance": "loss",
            },
        )
    )
    result = train_module.train(cfg)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["optim.class_balance"] == "loss"
    assert run.data.params["resolved.class_balance"].startswith("loss (CrossEntropy")
    report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/data/class_balance.json")
    counts = report["train_counts"]
    assert counts["triangle"] < counts["circle"] == counts["square"]
    inverse = {k: 1 / v for k, v in counts.items()}
    mean = sum(inverse.values()) / len(inverse)
    assert report["class_weights"] == pytest.approx({k: v / mean for k, v in inverse.items()})
    # The loss every epoch trained with carries exactly these weights, in label order.
    names = sorted(KEPT_PER_CLASS)
    expected = torch.tensor([report["class_weights"][n] for n in names])
    for call in calls:
        assert torch.allclose(call["loss_fn"].weight, expected)


def test_balanced_sampler_resumes_in_the_same_order(tmp_path, real_data, tracking_uri, monkeypatch):
    overrides = {
        "data.root": str(real_data["single_label"]),
        "optim.class_balance": "sampler",
        "mlflow.experiment": "tests-sampler",
    }
    calls = _spy_epochs(monkeypatch, crash_at=2)
    cfg = load_config(overrides=_settings(tmp_path / "crashed", tracking_uri, **overrides))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(cfg)
    assert isinstance(calls[0]["loader"].sampler, WeightedRandomSampler)
    _spy_epochs(monkeypatch)
    resumed = train_module.train(cfg.model_copy(update={"resume": "auto"}))
    run = MlflowClient().get_run(resumed.run_id)
    assert run.data.params["resolved.class_balance"].startswith("sampler")

    _spy_epochs(monkeypatch)
    straight_cfg = load_config(
        overrides=_settings(tmp_path / "straight", tracking_uri, **overrides)
    )
    straight = train_module.train(straight_cfg)
    final = torch.load(resumed.artifact_dir.parent / "last.pt", weights_only=True)["model"]
    expected = torch.load(straight.artifact_dir.parent / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_tuned_thresholds_reach_the_registered_model_and_the_predictor(
    tmp_path, real_data, tracking_uri
):
    manifest = real_data["multi_label"]
    cfg = load_config(
        overrides=_settings(
            tmp_path,
            tracking_uri,
            **{
                "mlflow.experiment": "tests-thresholds",
                "data.format": "csv",
                "data.root": str(manifest.parent),
                "data.manifest": str(manifest),
                "model.tune_thresholds": "true",
                "optim.class_balance": "loss",
                "mlflow.registered_model": "tests-thresholds",
            },
        )
    )
    result = train_module.train(cfg)
    run = MlflowClient().get_run(result.run_id)
    metrics = run.data.metrics
    assert metrics["best_val_macro_f1_tuned"] >= metrics["best_val_macro_f1_global"]
    assert {"best_val_micro_f1_tuned", "best_val_micro_f1_global"} <= set(metrics)
    assert run.data.params["resolved.class_balance"].startswith("loss (BCEWithLogits")
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/thresholds/class_thresholds.json")

    model_dir = mlflow.artifacts.download_artifacts(
        "models:/tests-thresholds@champion", dst_path=str(tmp_path / "registered")
    )
    artifact = classifier_artifact_dir(model_dir)
    spec = read_spec(artifact)
    assert spec.class_thresholds == logged
    assert spec.class_thresholds, "no class has a positive validation sample"
    assert set(spec.class_thresholds) <= set(spec.labels)
    assert read_spec(result.artifact_dir).class_thresholds == logged  # best/ itself too

    predictor = Predictor.from_artifact(artifact, device="cpu", precision="float32")
    for name, threshold in spec.class_thresholds.items():
        column = predictor.labels.index(name)
        at = torch.zeros(2, len(spec.labels))
        at[0, column] = threshold
        at[1, column] = torch.nextafter(torch.tensor(threshold), torch.tensor(-1.0))
        on, below = predictor.decode(at)
        assert name in {x.label for x in on}, f"{name}: a score at its threshold is a positive"
        assert name not in {x.label for x in below}, f"{name}: a score just below is not"


def _write_weights(path) -> dict[str, torch.Tensor]:
    """A 'pretrained' test_resnet: seeded weights, and norm statistics moved off their initial
    values (so keeping them is a real check)."""
    torch.manual_seed(123)
    model = create_classifier("test_resnet", 7)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    state = model.state_dict()
    torch.save(state, path)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _backbone_equal(state: dict, pretrained: dict) -> bool:
    return all(torch.equal(state[k], v) for k, v in pretrained.items())


def test_two_stage_fine_tuning_from_a_local_file_resumes_across_the_boundary(
    tmp_path, real_data, tracking_uri, monkeypatch
):
    pretrained = _write_weights(tmp_path / "pretrained.pth")
    overrides = {
        "data.root": str(real_data["single_label"]),
        "model.pretrained": str(tmp_path / "pretrained.pth"),
        "optim.epochs": "3",
        "optim.freeze_backbone_epochs": "2",
        "optim.layer_decay": "0.7",
        "mlflow.experiment": "tests-two-stage",
    }
    # Crash in epoch 2: the run resumes inside stage 1 and crosses into stage 2.
    crashed_calls = _spy_epochs(monkeypatch, crash_at=2)
    cfg = load_config(overrides=_settings(tmp_path / "crashed", tracking_uri, **overrides))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(cfg)
    assert _backbone_equal(crashed_calls[0]["state"], pretrained)  # loaded from the file
    [run_dir] = (tmp_path / "crashed" / "out").iterdir()
    after_one = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert _backbone_equal(after_one, pretrained)  # weights and norm statistics kept
    assert not torch.equal(after_one["fc.weight"], crashed_calls[0]["state"]["fc.weight"])

    resumed_calls = _spy_epochs(monkeypatch)
    resumed = train_module.train(cfg.model_copy(update={"resume": "auto"}))
    assert [c["epoch"] for c in resumed_calls] == [2, 3]
    assert [c["freeze_backbone"] for c in resumed_calls] == [True, False]
    assert resumed_calls[0]["trainable"] == {"fc.weight", "fc.bias"}
    every = {n for n, _ in create_classifier("test_resnet", 3).named_parameters()}
    assert resumed_calls[1]["trainable"] == every
    assert _backbone_equal(resumed_calls[1]["state"], pretrained)  # after both stage-1 epochs
    final = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert not _backbone_equal(final, pretrained)  # stage 2 trained the backbone

    params = MlflowClient().get_run(resumed.run_id).data.params
    assert params["resolved.head_parameters"] == "fc.weight,fc.bias"
    assert int(params["resolved.layer_groups"]) > 2

    _spy_epochs(monkeypatch)
    straight_cfg = load_config(
        overrides=_settings(tmp_path / "straight", tracking_uri, **overrides)
    )
    straight = train_module.train(straight_cfg)
    expected = torch.load(straight.artifact_dir.parent / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
