"""The real pipeline on synthetic data: accuracy bars on held-out data, MLflow bookkeeping,
crash handling, resume and determinism."""

import csv
import hashlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from models import Predictor, load_image
from models.artifact import classifier_artifact_dir
from training import loop as loop_module
from training import train as train_module
from training.config import load_config
from training.metrics import multi_label_metrics
from training.synthetic import SHAPES, SyntheticSpec, generate

# Bars on images the model never saw (a separately seeded synthetic set). Chance is 0.2 accuracy
# for 5 balanced classes and ~0.4 mAP for the multi-label set.
SINGLE_LABEL_MIN_ACCURACY = 0.90
MULTI_LABEL_MIN_MAP = 0.90


def _folder_samples(root):
    return [(p, shape) for shape in SHAPES for p in sorted((root / shape).glob("*.jpg"))]


def test_single_label_accuracy_on_held_out_data(single_label_run, holdout_data):
    predictor = Predictor.from_artifact(single_label_run.artifact_dir)
    samples = _folder_samples(holdout_data["single_label"])
    predictions = predictor.predict([load_image(p) for p, _ in samples], top_k=1)
    correct = sum(
        pred[0].label == truth for pred, (_, truth) in zip(predictions, samples, strict=False)
    )
    accuracy = correct / len(samples)
    assert accuracy >= SINGLE_LABEL_MIN_ACCURACY, f"held-out accuracy {accuracy:.3f}"


def test_multi_label_map_on_held_out_data(multi_label_run, holdout_data):
    predictor = Predictor.from_artifact(multi_label_run.artifact_dir)
    manifest = holdout_data["multi_label"]
    rows = list(csv.DictReader(manifest.open()))
    images = [load_image(manifest.parent / r["path"]) for r in rows]
    scores = predictor.scores(predictor.preprocess(images))
    targets = torch.stack([predictor.labels.encode_multi_hot(r["labels"].split(";")) for r in rows])
    metrics = multi_label_metrics(
        scores, targets, predictor.labels, threshold=predictor.spec.threshold
    )
    assert metrics["map"] >= MULTI_LABEL_MIN_MAP, f"held-out mAP {metrics['map']:.3f}"
    assert metrics["micro_f1"] >= 0.8, f"held-out micro-F1 {metrics['micro_f1']:.3f}"


def test_single_label_run_is_fully_tracked(single_label_run):
    client = MlflowClient()
    run = client.get_run(single_label_run.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.architecture"] == "resnet18"
    assert params["resolved.num_classes"] == "5"
    assert params["resolved.task"] == "single_label"
    epochs = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
    assert epochs >= 1
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == epochs
    for key in ("best_val_accuracy", "best_val_top5", "best_val_macro_f1"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/confusion_matrix.png"}
    assert client.list_artifacts(run.info.run_id, "config")[0].path == "config/resolved.yaml"
    # The dataset summary: images per class and split, logged before the first epoch.
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/summary.json")
    assert summary["split_sizes"]["train"] == int(params["resolved.train_samples"])
    assert sum(c["val"] for c in summary["per_class"].values()) == int(
        params["resolved.val_samples"]
    )
    assert run.data.metrics["data_duplicates_across_splits"] == 0

    version = client.get_model_version_by_alias("shapes-single", "champion")
    assert version.run_id == run.info.run_id
    assert str(version.version) == single_label_run.registered_version
    assert version.tags["task"] == "single_label"


def test_multi_label_run_logs_pr_curves_and_per_class_ap(multi_label_run):
    client = MlflowClient()
    run = client.get_run(multi_label_run.run_id)
    assert {f"val_ap_{s}" for s in SHAPES} <= set(run.data.metrics)
    assert {"val_map", "val_micro_f1", "val_macro_f1"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/pr_curves.png" in artifacts


def test_registered_pyfunc_matches_the_predictor(single_label_run, holdout_data):
    """The MLflow model works with MLflow's own loader and agrees with our predictor."""
    model = mlflow.pyfunc.load_model("models:/shapes-single@champion")
    assert model.metadata.get_input_schema().input_names() == ["image"]
    paths = [p for p, _ in _folder_samples(holdout_data["single_label"])[::37]]
    output = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in paths]}))
    # The pyfunc is fp32 by design; on a CPU with native bf16 the predictor's "auto" would pick
    # bf16 and reorder near-tied low scores, so compare like with like.
    predictor = Predictor.from_artifact(single_label_run.artifact_dir, precision="float32")
    expected = predictor.predict([load_image(p) for p in paths])
    assert list(output["labels"]) == [[x.label for x in row] for row in expected]


@pytest.fixture
def small_data(tmp_path):
    return generate(
        tmp_path / "data", SyntheticSpec(single_label_per_class=12, multi_label_images=10, seed=5)
    )


def _small_settings(tmp_path, small_data, tracking_uri, **overrides) -> dict[str, str]:
    """Dotted training settings for a quick resnet18 run, as the CLI's --flags take them."""
    base = {
        "data.root": str(small_data["single_label"]),
        "optim.epochs": "3",
        "optim.batch_size": "16",
        "data.num_workers": "0",
        "model.architecture": "resnet18",
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.experiment": "tests-small",
        "mlflow.registered_model": "null",
        "mlflow.artifact_location": str(tmp_path / "artifacts"),
        "output_dir": str(tmp_path / "out"),
    }
    return {**base, **overrides}


def _small_config(tmp_path, small_data, tracking_uri, **overrides):
    return load_config(overrides=_small_settings(tmp_path, small_data, tracking_uri, **overrides))


def test_crash_marks_run_failed_and_resume_finishes_the_same_run(
    tmp_path, small_data, tracking_uri, monkeypatch
):
    real_epoch = loop_module.train_one_epoch

    def crash_in_epoch_two(**kwargs):
        if kwargs["epoch"] == 2:
            raise RuntimeError("simulated crash")
        return real_epoch(**kwargs)

    monkeypatch.setattr(loop_module, "train_one_epoch", crash_in_epoch_two)
    cfg = _small_config(tmp_path, small_data, tracking_uri, **{"data.num_workers": "2"})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_module.train(cfg)
    client = MlflowClient()
    [failed] = client.search_runs([client.get_experiment_by_name("tests-small").experiment_id])
    assert failed.info.status == "FAILED"
    run_dir = tmp_path / "out" / failed.info.run_id  # each run keeps its files in its own folder
    assert (run_dir / "last.pt").is_file()
    assert (run_dir / "best" / "model.safetensors").is_file()

    monkeypatch.setattr(loop_module, "train_one_epoch", real_epoch)
    result = train_module.train(cfg.model_copy(update={"resume": "auto"}))
    assert result.run_id == failed.info.run_id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]

    # The resumed run ends with exactly the weights of an uninterrupted one.
    straight = _small_config(
        tmp_path / "straight", small_data, tracking_uri, **{"data.num_workers": "2"}
    )
    straight_dir = train_module.train(straight).artifact_dir.parent
    assert result.artifact_dir == run_dir / "best"
    resumed_final = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    straight_final = torch.load(straight_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed_final[k], straight_final[k]) for k in straight_final)


def test_interrupt_marks_run_killed(tmp_path, small_data, tracking_uri, monkeypatch):
    def interrupt(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "train_one_epoch", interrupt)
    cfg = _small_config(tmp_path, small_data, tracking_uri, **{"mlflow.experiment": "tests-kill"})
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cfg)
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("tests-kill").experiment_id])
    assert run.info.status == "KILLED"


def test_same_seed_gives_identical_weights(tmp_path, small_data, tracking_uri):
    weights = []
    for name in ("a", "b"):
        cfg = _small_config(
            tmp_path / name,
            small_data,
            tracking_uri,
            **{"optim.epochs": "1", "data.num_workers": "2"},
        )
        result = train_module.train(cfg)
        weights.append(load_file(str(result.artifact_dir / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bad_data_fails_before_any_run(tmp_path, small_data, tracking_uri):
    from training.data import DataError

    (small_data["single_label"] / "circle" / "0000.jpg").write_bytes(b"broken")
    cfg = _small_config(tmp_path, small_data, tracking_uri, **{"mlflow.experiment": "tests-bad"})
    with pytest.raises(DataError, match="0000.jpg: not a recognised image format"):
        train_module.train(cfg)
    assert MlflowClient().get_experiment_by_name("tests-bad") is None


def test_unreachable_tracking_server_fails_before_any_training(tmp_path, small_data):
    from registry.tracking_server import TrackingServerError

    cfg = _small_config(tmp_path, small_data, "http://127.0.0.1:9")
    with pytest.raises(TrackingServerError, match="cannot reach the MLflow tracking server"):
        train_module.train(cfg)
    assert not (tmp_path / "out").exists()


def _stop_cli_in_epoch_2(
    command: list[str], out: Path, log: Path, signal_number: int, wait_s: float
) -> int:
    """Run the training CLI (output to ``log``) until epoch 1's checkpoint is in ``out``, send
    ``signal_number`` while epoch 2 runs, and return the exit code."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            command, cwd=Path(__file__).resolve().parents[2], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("*/last.pt")):  # epoch 1 is done; epoch 2 is running
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal_number)
        return proc.wait(timeout=wait_s)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_mid_epoch_marks_the_run_killed_and_resume_continues_it(
    tmp_path, small_data, tracking_uri
):
    """The real CLI in a subprocess, stopped the way `docker stop` or Kubernetes stop it."""
    out = tmp_path / "out"
    settings = _small_settings(
        tmp_path,
        small_data,
        tracking_uri,
        **{"optim.epochs": "4", "optim.batch_size": "8", "mlflow.experiment": "tests-sigterm"},
    )
    command = [sys.executable, "-m", "training", "train"]
    command += [arg for key, value in settings.items() for arg in (f"--{key}", value)]
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "train.log"
    exit_code = _stop_cli_in_epoch_2(command, out, log, signal.SIGTERM, wait_s=120)
    assert exit_code == 130, log.read_text()[-3000:]
    client = MlflowClient()
    [killed] = client.search_runs([client.get_experiment_by_name("tests-sigterm").experiment_id])
    assert killed.info.status == "KILLED"
    run_dir = out / killed.info.run_id
    interrupted_at = torch.load(run_dir / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= interrupted_at < 4
    assert (run_dir / "best" / "model.safetensors").is_file()

    resumed = subprocess.run(
        [*command, "--resume", "auto"], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4]


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_two_runs_with_one_output_dir_keep_their_own_files_and_register_their_own_best(
    tmp_path, small_data, tracking_uri
):
    settings = {
        "optim.epochs": "1",
        "mlflow.experiment": "tests-two-runs",
        "mlflow.registered_model": "tests-two-runs",
    }
    first = train_module.train(_small_config(tmp_path, small_data, tracking_uri, **settings))
    first_files = _digests(first.artifact_dir.parent)
    second = train_module.train(
        _small_config(tmp_path, small_data, tracking_uri, **settings, seed="7")
    )
    assert first.artifact_dir.parent != second.artifact_dir.parent
    assert first.artifact_dir.parent.parent == second.artifact_dir.parent.parent == tmp_path / "out"
    assert _digests(first.artifact_dir.parent) == first_files  # untouched by the second run

    registered = {}
    for result in (first, second):
        local = mlflow.artifacts.download_artifacts(
            f"models:/tests-two-runs/{result.registered_version}",
            dst_path=str(tmp_path / "registered" / result.run_id),
        )
        registered[result.run_id] = _digests(classifier_artifact_dir(local))
        assert registered[result.run_id] == _digests(result.artifact_dir)
    assert registered[first.run_id] != registered[second.run_id]  # different seeds


def test_sigkill_leaves_the_run_running_until_the_next_start_marks_it_failed(
    tmp_path, small_data, tracking_uri, caplog
):
    """SIGKILL: no handler runs, so the run stays RUNNING in MLflow. The next start with that
    output_dir sees that no live process holds the run's folder and marks it FAILED; --resume auto
    then still carries it on to the end."""
    out = tmp_path / "out"
    settings = _small_settings(
        tmp_path,
        small_data,
        tracking_uri,
        **{"optim.epochs": "3", "optim.batch_size": "8", "mlflow.experiment": "tests-sigkill"},
    )
    command = [sys.executable, "-m", "training", "train"]
    command += [arg for key, value in settings.items() for arg in (f"--{key}", value)]
    log = tmp_path / "train.log"
    assert _stop_cli_in_epoch_2(command, out, log, signal.SIGKILL, wait_s=60) == -signal.SIGKILL
    client = MlflowClient()
    [killed] = client.search_runs([client.get_experiment_by_name("tests-sigkill").experiment_id])
    assert killed.info.status == "RUNNING"

    with caplog.at_level(logging.INFO, logger="training"):
        fresh = train_module.train(load_config(overrides={**settings, "optim.epochs": "1"}))
    assert client.get_run(killed.info.run_id).info.status == "FAILED"
    assert f"MLflow run {killed.info.run_id}" in caplog.text and "marked FAILED" in caplog.text
    assert fresh.run_id != killed.info.run_id
    assert client.get_run(fresh.run_id).info.status == "FINISHED"

    resumed = train_module.train(load_config(overrides={**settings, "resume": "auto"}))
    assert resumed.run_id == killed.info.run_id  # not the newer, finished one
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]
