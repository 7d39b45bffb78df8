"""Explicit splits in a real run (the test split is evaluated once, never selects the model) and
`python -m training evaluate`, which must measure what the service's Predictor does."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from models import Predictor, load_image
from models.artifact import load_artifact
from models.preprocessing import create_eval_transform
from training.config import DataConfig, EvaluationConfig, load_config
from training.evaluate import evaluate_model
from training.metrics import compute_metrics, single_label_metrics
from training.synthetic import SHAPES, SyntheticSpec, write_single_label
from training.train import train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL = "tests-splits"


@pytest.fixture(scope="module")
def split_data(tmp_path_factory, holdout_data) -> dict[str, Path]:
    """train/ and val/ folders, and the session's held-out set as the test split."""
    root = tmp_path_factory.mktemp("splits")
    return {
        "train": write_single_label(
            root / "train", SyntheticSpec(single_label_per_class=12, seed=5)
        ),
        "val": write_single_label(root / "val", SyntheticSpec(single_label_per_class=6, seed=6)),
        "test": holdout_data["single_label"],
    }


def _split_settings(out: Path, tracking_uri: str, split_data: dict[str, Path]) -> dict[str, str]:
    # No later epoch can beat epoch 1 by min_delta=1.0, so the best model is epoch 1's while
    # training goes on: test figures measured with any other weights than the best would show.
    return {
        "data.root": str(split_data["train"]),
        "data.val_root": str(split_data["val"]),
        "data.test_root": str(split_data["test"]),
        "data.num_workers": "0",
        "model.architecture": "test_resnet",
        "optim.epochs": "3",
        "optim.batch_size": "16",
        "optim.lr": "0.02",
        "optim.min_delta": "1.0",
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.experiment": "tests-splits",
        "mlflow.artifact_location": str(out / "artifacts"),
        "mlflow.registered_model": MODEL,
        "output_dir": str(out / "runs"),
    }


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tracking_uri, split_data):
    out = tmp_path_factory.mktemp("split-run")
    return train(load_config(overrides=_split_settings(out, tracking_uri, split_data)))


def _evaluation_config(tmp_path, data: DataConfig, **settings) -> EvaluationConfig:
    return EvaluationConfig(
        data=data,
        experiment="tests-evaluation",
        artifact_location=str(tmp_path / "eval-artifacts"),
        **settings,
    )


def _files(root: Path) -> list[tuple[Path, str]]:
    return [(p, shape) for shape in SHAPES for p in sorted((root / shape).glob("*.jpg"))]


def test_explicit_split_run_logs_test_metrics_and_plots(split_run, split_data):
    run = MlflowClient().get_run(split_run.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["data.val_root"] == str(split_data["val"])
    assert (params["resolved.train_samples"], params["resolved.val_samples"]) == ("60", "30")
    assert params["resolved.test_samples"] == str(len(_files(split_data["test"])))
    for key in ("test_accuracy", "test_top5", "test_macro_f1"):
        assert metrics[key] == pytest.approx(split_run.test_metrics[key])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots/test")}
    assert artifacts == {"plots/test/confusion_matrix.png"}
    # The dataset summary counts the three splits as given, and finds no file in two of them.
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/summary.json")
    assert summary["split_sizes"] == {
        "train": 60,
        "val": 30,
        "test": len(_files(split_data["test"])),
    }
    assert metrics["data_duplicates_across_splits"] == 0
    version = MlflowClient().get_model_version(MODEL, split_run.registered_version)
    assert version.tags["test_accuracy"] == f"{metrics['test_accuracy']:.4f}"


@torch.inference_mode()
def test_the_test_metrics_are_those_of_the_best_weights(split_run, split_data):
    model, spec = load_artifact(split_run.artifact_dir)
    transform = create_eval_transform(spec.preprocessing)
    files = _files(split_data["test"])
    batch = torch.stack([transform(load_image(p)) for p, _ in files])
    targets = torch.tensor([spec.label_set.index(shape) for _, shape in files])
    expected = compute_metrics(model.eval()(batch), targets, spec.label_set, spec.task)
    for key in ("accuracy", "top5", "macro_f1"):
        assert split_run.test_metrics[f"test_{key}"] == pytest.approx(expected[key], abs=1e-9)
    # The weights training ended with are not the best ones: the check above tells them apart.
    last = torch.load(split_run.artifact_dir.parent / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(last[k], v) for k, v in model.state_dict().items())


def test_the_test_split_is_measured_once_and_never_selects_the_model(split_run):
    client = MlflowClient()
    val = client.get_metric_history(split_run.run_id, "val_accuracy")
    scores = [m.value for m in sorted(val, key=lambda m: m.step)]
    assert len(scores) == 3  # every epoch validated; the test split measured once, at the end
    assert len(client.get_metric_history(split_run.run_id, "test_accuracy")) == 1
    assert split_run.best_epoch == 1  # as validation and min_delta decide


def test_without_the_test_split_the_same_run_trains_the_same_model(
    split_run, split_data, tracking_uri, tmp_path
):
    settings = _split_settings(tmp_path, tracking_uri, split_data)
    settings.update({"data.test_root": "", "mlflow.registered_model": "null"})
    control = train(load_config(overrides=settings))
    assert control.test_metrics == {}
    assert control.best_epoch == split_run.best_epoch
    assert control.val_metrics == split_run.val_metrics
    weights = [load_file(r.artifact_dir / "model.safetensors") for r in (control, split_run)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_evaluate_cli_prints_a_per_class_table_and_refuses_an_unknown_model(
    split_run, holdout_data, tmp_path
):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    common = ["--data.root", str(holdout_data["single_label"]), "--data.num_workers", "0"]
    common += ["--experiment", "tests-evaluation", "--artifact_location", str(tmp_path / "a")]
    command = [sys.executable, "-m", "training", "evaluate"]
    ok = subprocess.run(
        [*command, f"models:/{MODEL}@champion", *common],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    lines = ok.stdout.splitlines()
    assert lines[0].split() == ["label", "precision", "recall", "f1", "support"]
    assert {line.split()[0] for line in lines[2 : 2 + len(SHAPES)]} == set(SHAPES)
    assert any(line.startswith("accuracy: ") for line in lines)

    bad = subprocess.run(
        [*command, "models:/no-such-model@champion", *common],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "no-such-model" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_evaluate_measures_what_the_predictor_predicts_and_links_the_version(
    split_run, holdout_data, tmp_path
):
    root = holdout_data["single_label"]
    result = evaluate_model(
        model_uri=f"models:/{MODEL}@champion",
        config=_evaluation_config(tmp_path, DataConfig(root=root, num_workers=0)),
    )
    # The same images through the service's Predictor, in-process, in float32.
    predictor = Predictor.from_artifact(split_run.artifact_dir, precision="float32")
    files = _files(root)
    scores = predictor.scores(predictor.preprocess([load_image(p) for p, _ in files]))
    targets = torch.tensor([predictor.labels.index(shape) for _, shape in files])
    expected = single_label_metrics(scores, targets, predictor.labels)
    assert result.num_images == len(files)
    for key in ("accuracy", "top5", "macro_f1"):
        assert result.metrics[key] == pytest.approx(expected[key])
    assert [r.support for r in result.per_class] == [
        sum(s == name for _, s in files) for name in predictor.labels.names
    ]

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model.name"] == MODEL
    assert run.data.tags["model.version"] == split_run.registered_version
    assert run.data.params["num_images"] == str(len(files))
    assert run.data.metrics["eval_accuracy"] == pytest.approx(expected["accuracy"])
    logged = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert logged == {"plots/confusion_matrix.png"}
    assert client.list_artifacts(result.run_id, "evaluation")[0].path == (
        "evaluation/per_class.csv"
    )
    version = client.get_model_version(MODEL, split_run.registered_version)
    assert version.tags["eval.single_label.run_id"] == result.run_id
    assert version.tags["eval.single_label.accuracy"] == f"{expected['accuracy']:.4f}"


def test_evaluate_a_bento_tag_and_the_test_split(split_run, split_data, tmp_path):
    from registry.bento_import import import_from_mlflow

    bento_model, _ = import_from_mlflow(f"models:/{MODEL}@champion", bento_name=MODEL)
    data = DataConfig(root=split_data["train"], test_root=split_data["test"], num_workers=0)
    config = _evaluation_config(tmp_path, data, split="test", name="holdout")
    result = evaluate_model(model_uri=str(bento_model.tag), config=config)
    assert result.lineage.registered_name == MODEL
    assert result.lineage.model_version == split_run.registered_version
    assert result.num_images == len(_files(split_data["test"]))
    # The training loop's test evaluation and the service's path agree on these images.
    assert result.metrics["accuracy"] == pytest.approx(
        split_run.test_metrics["test_accuracy"], abs=1 / result.num_images + 1e-9
    )
    version = MlflowClient().get_model_version(MODEL, split_run.registered_version)
    assert version.tags["eval.holdout.run_id"] == result.run_id


def test_manifest_split_column_run_and_multi_label_evaluation_of_a_run_uri(
    tmp_path, tracking_uri, holdout_data
):
    """A manifest's split column drives a multi-label run (test PR curves), and the run's
    model evaluates by its runs:/ URI with per-class AP in the table."""
    source = holdout_data["multi_label"]
    rows = list(csv.DictReader(source.open()))[:60]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels", "split"])
        for i, row in enumerate(rows):
            split = "train" if i < 36 else "val" if i < 48 else "test"
            writer.writerow([row["path"], row["labels"], split])
    settings = {
        "data.format": "csv",
        "data.root": str(source.parent),
        "data.manifest": str(manifest),
        "data.num_workers": "0",
        "model.architecture": "test_resnet",
        "optim.epochs": "2",
        "optim.batch_size": "16",
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.experiment": "tests-splits-csv",
        "mlflow.artifact_location": str(tmp_path / "artifacts"),
        "mlflow.registered_model": "null",
        "output_dir": str(tmp_path / "runs"),
    }
    result = train(load_config(overrides=settings))
    client = MlflowClient()
    params = client.get_run(result.run_id).data.params
    assert [params[f"resolved.{s}_samples"] for s in ("train", "val", "test")] == ["36", "12", "12"]
    assert "test_map" in result.test_metrics
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots/test")}
    assert plots == {"plots/test/pr_curves.png"}

    data = DataConfig(format="csv", root=source.parent, manifest=manifest, num_workers=0)
    evaluation = evaluate_model(
        model_uri=f"runs:/{result.run_id}/model",
        config=_evaluation_config(tmp_path, data, split="test"),
    )
    assert evaluation.num_images == 12
    assert evaluation.dataset == "manifest-test"
    assert evaluation.lineage.run_id == result.run_id
    assert evaluation.lineage.model_version == ""  # not registered: no version to tag
    with_positives = [r for r in evaluation.per_class if r.support]
    assert with_positives
    assert all(r.ap == evaluation.metrics[f"ap_{r.label}"] for r in with_positives)
    logged = client.get_run(evaluation.run_id).data.metrics
    assert logged["eval_map"] == pytest.approx(evaluation.metrics["map"])


def test_promote_moves_the_alias_only_when_the_bar_is_met(
    split_run, holdout_data, tmp_path, capsys
):
    """`python -m training promote` (its main(), in-process): an unmet bar exits 1 and leaves
    the alias where it was; a met one moves it and records the evaluation on the version."""
    from training.__main__ import main

    client = MlflowClient()
    version = split_run.registered_version
    common = ["--data.root", str(holdout_data["single_label"]), "--data.num_workers", "0"]
    common += ["--experiment", "tests-evaluation", "--artifact_location", str(tmp_path / "a")]
    uri = f"models:/{MODEL}/{version}"

    unmet = main(["promote", uri, "--alias", "staging", "--require", "accuracy>=1.5", *common])
    assert unmet == 1
    assert "NOT promoted: accuracy>=1.5 (measured " in capsys.readouterr().out
    assert "staging" not in client.get_model_version(MODEL, version).aliases

    met = main(
        ["promote", uri, "--alias", "staging", "--require", "accuracy>=0", "--require",
         "macro_f1>=0", *common]
    )  # fmt: skip
    assert met == 0
    assert f"promoted: {MODEL} @staging -> version {version}" in capsys.readouterr().out
    promoted = client.get_model_version(MODEL, version)
    assert "staging" in promoted.aliases
    evaluation_run = client.get_run(promoted.tags["promotion.staging.evaluation_run"])
    assert evaluation_run.data.tags["model.version"] == version

    # Bad requests: no bar, a metric the task does not have, a run URI (no alias to move).
    assert main(["promote", uri, "--alias", "staging", *common]) == 2
    assert main(["promote", uri, "--alias", "x", "--require", "map>=0.5", *common]) == 2
    run_uri = f"runs:/{split_run.run_id}/model"
    assert main(["promote", run_uri, "--alias", "x", "--require", "accuracy>=0", *common]) == 2
    assert "x" not in client.get_model_version(MODEL, version).aliases
