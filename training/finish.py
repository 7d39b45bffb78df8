"""The finish step: evaluate the best model, log its metrics and plots, log and register it."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch

from models.artifact import ModelSpec, load_artifact
from models.labels import LabelSet, Task, scores_from_logits

from . import checkpoint, plots, thresholds, tracking
from .build import TrainingSetup, build_eval_loader
from .config import TrainConfig
from .engine import evaluate
from .metrics import MONITORED, compute_metrics, multi_label_metrics, scalar_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    best_epoch: int
    best_score: float
    monitored: str
    artifact_dir: Path
    registered_name: str | None
    registered_version: str | None
    val_metrics: dict[str, float]
    test_metrics: dict[str, float] = field(default_factory=dict)  # empty without a test split


@dataclass(frozen=True)
class _BestEvaluation:
    spec: ModelSpec
    metrics: dict  # compute_metrics() on the validation set
    logits: torch.Tensor
    targets: torch.Tensor


def _evaluate_best(*, best_dir: Path, setup: TrainingSetup) -> _BestEvaluation:
    """The saved best artifact (not the last epoch's weights) on the validation set."""
    best_model, spec = load_artifact(best_dir)
    best_model = best_model.to(setup.precision.device)
    logits, targets, _ = evaluate(
        model=best_model,
        loader=setup.val_loader,
        loss_fn=setup.loss_fn,
        precision=setup.precision,
        desc="best model",
    )
    metrics = compute_metrics(logits, targets, setup.labels, spec.task, threshold=spec.threshold)
    return _BestEvaluation(spec, metrics, logits, targets)


def _log_final_plots(
    *,
    task: Task,
    history: list[dict[str, float]],
    best: _BestEvaluation,
    labels: LabelSet,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plots.plot_training_curves(history, out / "training_curves.png")
        if task is Task.SINGLE_LABEL:
            plots.plot_confusion_matrix(
                best.metrics["confusion_matrix"], labels.names, out / "confusion_matrix.png"
            )
        else:
            plots.plot_pr_curves(
                y_true=best.targets.numpy(),
                y_score=scores_from_logits(best.logits, task).numpy(),
                labels=labels.names,
                path=out / "pr_curves.png",
            )
        mlflow.log_artifacts(str(out), "plots")


def _tune_thresholds(*, best_dir: Path, best: _BestEvaluation, labels: LabelSet) -> None:
    """Store per-class F1-maximising thresholds in ``best/`` and log F1 with the global
    threshold against F1 with the tuned ones (both on the validation set they were tuned on)."""
    scores = scores_from_logits(best.logits, best.spec.task)
    tuned = thresholds.tune_class_thresholds(
        scores, best.targets, labels, global_threshold=best.spec.threshold
    )
    thresholds.store_class_thresholds(best_dir, tuned)
    before = multi_label_metrics(scores, best.targets, labels, threshold=best.spec.threshold)
    after = multi_label_metrics(
        scores, best.targets, labels, threshold=best.spec.threshold, class_thresholds=tuned
    )
    mlflow.log_metrics(
        {
            "best_val_micro_f1_global": before["micro_f1"],
            "best_val_micro_f1_tuned": after["micro_f1"],
            "best_val_macro_f1_global": before["macro_f1"],
            "best_val_macro_f1_tuned": after["macro_f1"],
        }
    )
    mlflow.log_dict(tuned, "thresholds/class_thresholds.json")
    logger.info(
        "Tuned %d class thresholds: validation micro-F1 %.4f -> %.4f, macro-F1 %.4f -> %.4f "
        "(optimistic: tuned on the same set)",
        len(tuned),
        before["micro_f1"],
        after["micro_f1"],
        before["macro_f1"],
        after["macro_f1"],
    )


def _evaluate_test(
    *, cfg: TrainConfig, best_dir: Path, setup: TrainingSetup
) -> _BestEvaluation | None:
    """The saved best artifact on the test split, if any: once, after training, so the test
    split can never select a model or stop training."""
    if not setup.split.test_samples:
        return None
    best_model, spec = load_artifact(best_dir)
    loader = build_eval_loader(
        cfg=cfg, samples=setup.split.test_samples, labels=setup.labels, spec=spec
    )
    logits, targets, _ = evaluate(
        model=best_model.to(setup.precision.device),
        loader=loader,
        loss_fn=setup.loss_fn,
        precision=setup.precision,
        desc="test",
    )
    # With the tuned per-class thresholds when there are: the test figure is the served model's.
    metrics = compute_metrics(
        logits,
        targets,
        setup.labels,
        spec.task,
        threshold=spec.threshold,
        class_thresholds=spec.class_thresholds,
    )
    return _BestEvaluation(spec, metrics, logits, targets)


def _log_test_plots(*, task: Task, test: _BestEvaluation, labels: LabelSet) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if task is Task.SINGLE_LABEL:
            plots.plot_confusion_matrix(
                test.metrics["confusion_matrix"],
                labels.names,
                out / "confusion_matrix.png",
                split="test",
            )
        else:
            plots.plot_pr_curves(
                y_true=test.targets.numpy(),
                y_score=scores_from_logits(test.logits, task).numpy(),
                labels=labels.names,
                path=out / "pr_curves.png",
                split="test",
            )
        mlflow.log_artifacts(str(out), "plots/test")


def _log_test(*, cfg: TrainConfig, best_dir: Path, setup: TrainingSetup) -> dict[str, float]:
    """``test_*`` metrics and ``plots/test/``; ``{}`` without a test split."""
    test = _evaluate_test(cfg=cfg, best_dir=best_dir, setup=setup)
    if test is None:
        return {}
    metrics = scalar_metrics(test.metrics, prefix="test_")
    mlflow.log_metrics(metrics)
    _log_test_plots(task=cfg.task, test=test, labels=setup.labels)
    monitored = MONITORED[test.spec.task]
    logger.info("Test %s of the best model: %.4f", monitored, test.metrics[monitored])
    return metrics


def finish(
    *, cfg: TrainConfig, setup: TrainingSetup, state: checkpoint.TrainingState, run_dir: Path
) -> TrainResult:
    """Evaluate the best checkpoint, log its plots and metrics, log and register the model."""
    best_dir = run_dir / checkpoint.BEST_ARTIFACT
    best = _evaluate_best(best_dir=best_dir, setup=setup)
    final = scalar_metrics(best.metrics, prefix="best_val_")
    mlflow.log_metrics({**final, "best_score": state.best_score, "best_epoch": state.best_epoch})
    if cfg.model.tune_thresholds:
        # Before the model is logged and registered: the registered version carries them.
        _tune_thresholds(best_dir=best_dir, best=best, labels=setup.labels)
    _log_final_plots(task=cfg.task, history=state.history, best=best, labels=setup.labels)
    test_metrics = _log_test(cfg=cfg, best_dir=best_dir, setup=setup)

    monitored = MONITORED[best.spec.task]
    test_tag = f"test_{monitored}"
    test_tags = {test_tag: f"{test_metrics[test_tag]:.4f}"} if test_metrics else {}
    version = tracking.log_and_register_model(
        cfg,
        artifact_dir=best_dir,
        example_image=setup.split.val_samples[0].path.read_bytes(),
        version_tags={
            "task": best.spec.task.value,
            "architecture": best.spec.architecture,
            f"val_{monitored}": f"{state.best_score:.4f}",
            **test_tags,
        },
    )
    return TrainResult(
        run_id=run_dir.name,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        monitored=monitored,
        artifact_dir=best_dir,
        registered_name=cfg.mlflow.registered_model,
        registered_version=version,
        val_metrics=final,
        test_metrics=test_metrics,
    )
