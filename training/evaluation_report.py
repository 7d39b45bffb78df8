"""What an evaluation found and where it goes: the per-class table (the CLI's output), the
MLflow evaluation run (params, ``eval_*`` metrics, plots, ``evaluation/per_class.csv``) and the
tags that link it to the registered model version."""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.metrics import precision_recall_fscore_support

from models.labels import Task, thresholds_tensor
from models.predictor import Predictor
from scoring.model_source import ModelLineage

from . import plots
from .config import EvaluationConfig
from .metrics import metric_safe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassReport:
    """One row of the per-class table."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # images with this label
    ap: float | None = None  # multi-label only; None when the class has no positives


@dataclass(frozen=True)
class EvaluationResult:
    model_uri: str  # as given
    lineage: ModelLineage  # pinned: the exact version evaluated
    task: Task
    dataset: str  # the name in the version's eval.<dataset>.<metric> tags
    num_images: int
    skipped: int  # bad samples skipped (data.on_error=skip)
    metrics: dict[str, float]  # unprefixed: accuracy, top5, macro_f1 / map, micro_f1, ap_<label>
    per_class: list[ClassReport]
    run_id: str | None  # the MLflow evaluation run; None when not logged


def per_class_reports(
    *, scores: torch.Tensor, targets: torch.Tensor, predictor: Predictor, raw_metrics: dict
) -> list[ClassReport]:
    labels, spec = predictor.labels, predictor.spec
    if spec.task is Task.SINGLE_LABEL:
        y_true, y_pred = targets.numpy(), scores.argmax(dim=1).numpy()
        average_precision: dict[str, float] = {}
    else:
        thresholds = thresholds_tensor(labels, spec.threshold, spec.class_thresholds)
        y_true, y_pred = targets.numpy().astype(int), (scores >= thresholds).numpy().astype(int)
        average_precision = raw_metrics["per_class_ap"]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=range(len(labels)),
        average=None,
        zero_division=0,
    )
    return [
        ClassReport(
            label=name,
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
            ap=average_precision.get(name),
        )
        for i, name in enumerate(labels.names)
    ]


def format_table(result: EvaluationResult) -> str:
    """The per-class table and the headline metrics, as the CLI prints them."""
    multi = result.task is Task.MULTI_LABEL
    width = max([5, *(len(r.label) for r in result.per_class)])
    header = f"{'label':<{width}}  precision  recall     f1  support" + (
        "      AP" if multi else ""
    )
    lines = [header, "-" * len(header)]
    for row in result.per_class:
        line = (
            f"{row.label:<{width}}  {row.precision:9.4f}  {row.recall:6.4f}  {row.f1:5.4f}  "
            f"{row.support:7d}"
        )
        if multi:
            line += f"  {row.ap:6.4f}" if row.ap is not None else "       -"
        lines.append(line)
    lines.append("")
    headline = {k: v for k, v in result.metrics.items() if not k.startswith("ap_")}
    lines += [f"{name}: {value:.4f}" for name, value in headline.items()]
    lines.append(
        f"{result.num_images} images ({result.skipped} skipped) from {result.dataset}; "
        f"model {result.lineage.model}"
        + (f" (version {result.lineage.model_version})" if result.lineage.model_version else "")
    )
    return "\n".join(lines)


def _per_class_csv(rows: list[ClassReport]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["label", "precision", "recall", "f1", "support", "ap"])
    for r in rows:
        writer.writerow([r.label, r.precision, r.recall, r.f1, r.support, r.ap])
    return out.getvalue()


def _log_plots(
    *, raw_metrics: dict, scores: torch.Tensor, targets: torch.Tensor, predictor: Predictor
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        names = predictor.labels.names
        if predictor.spec.task is Task.SINGLE_LABEL:
            plots.plot_confusion_matrix(
                raw_metrics["confusion_matrix"], names, out / "confusion_matrix.png", split="eval"
            )
        else:
            plots.plot_pr_curves(
                y_true=targets.numpy(),
                y_score=scores.numpy(),
                labels=names,
                path=out / "pr_curves.png",
                split="eval",
            )
        mlflow.log_artifacts(str(out), "plots")


def _start_evaluation_run(*, config: EvaluationConfig, tracking_uri: str, run_name: str):
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name(config.experiment) is None:
        client.create_experiment(config.experiment, artifact_location=config.artifact_location)
    mlflow.set_experiment(config.experiment)
    return mlflow.start_run(run_name=run_name)


def tag_model_version(*, result: EvaluationResult, tracking_uri: str) -> None:
    """``eval.<dataset>.<metric>`` and ``eval.<dataset>.run_id`` on the registered version."""
    lineage = result.lineage
    if not (lineage.registered_name and lineage.model_version):
        logger.info("%s is not a registered model version: no version tags", lineage.model)
        return
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = lineage.registered_name, lineage.model_version
    try:
        # A Bento tag names the version in the registry it came from: tag only that very version.
        if lineage.run_id and client.get_model_version(name, version).run_id != lineage.run_id:
            logger.warning("%s version %s here is another model: no version tags", name, version)
            return
        prefix = f"eval.{metric_safe(result.dataset)}"
        for metric, value in result.metrics.items():
            if not metric.startswith("ap_"):
                client.set_model_version_tag(name, version, f"{prefix}.{metric}", f"{value:.4f}")
        client.set_model_version_tag(name, version, f"{prefix}.run_id", result.run_id)
    except MlflowException as exc:
        logger.warning("Could not tag %s version %s: %s", name, version, exc.message)


def log_evaluation(
    *,
    result: EvaluationResult,
    config: EvaluationConfig,
    tracking_uri: str,
    raw_metrics: dict,
    scores: torch.Tensor,
    targets: torch.Tensor,
    predictor: Predictor,
) -> str:
    lineage = result.lineage
    data = config.data
    with _start_evaluation_run(
        config=config, tracking_uri=tracking_uri, run_name=f"{lineage.model} on {result.dataset}"
    ) as run:
        mlflow.set_tags(
            {
                "model.uri": lineage.model,
                "model.name": lineage.registered_name,
                "model.version": lineage.model_version,
                "model.run_id": lineage.run_id,
                "evaluation.dataset": result.dataset,
            }
        )
        mlflow.log_params(
            {
                "model_uri": result.model_uri,
                "model": lineage.model,
                "model_version": lineage.model_version or "null",
                "dataset": result.dataset,
                "data.format": data.format,
                "data.path": str((data.manifest if data.format == "csv" else data.root).resolve()),
                "split": config.split,
                "num_images": result.num_images,
                "skipped_samples": result.skipped,
                "precision": config.precision,
            }
        )
        mlflow.log_metrics({f"eval_{k}": v for k, v in result.metrics.items()})
        mlflow.log_text(_per_class_csv(result.per_class), "evaluation/per_class.csv")
        _log_plots(raw_metrics=raw_metrics, scores=scores, targets=targets, predictor=predictor)
        return run.info.run_id
