"""``python -m training evaluate MODEL_URI --data.root ...``: a model's metrics on labelled data,
computed the way the service predicts.

The model is loaded by scoring's resolver (``models:/Name@alias``, ``models:/Name/<version>``,
``runs:/<id>/<path>``, a Bento tag in the BentoML store, or a local artifact directory). Every
image is decoded and prepared as the service decodes an upload (:func:`scoring.batch.decode_file`)
and scored by :class:`models.Predictor`; :mod:`training.metrics` measures the scores. So the
figure is what the service will do, not what the training loop's evaluation measured.

The result is logged as a run of its own in an evaluation experiment (default ``evaluation``):
params (model URI, pinned model, version, dataset, images), ``eval_*`` metrics, plots and the
per-class table (``evaluation/per_class.csv``), tagged ``model.name`` / ``model.version`` /
``model.run_id``. A registered version is linked back with tags on the version itself:
``eval.<dataset>.<metric>`` for each headline metric and ``eval.<dataset>.run_id``, which the
registry UI shows beside the version (MLflow 3's logged-model metrics would need the version's
``model_id``, which a Bento tag does not carry; version tags work for every source).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.metrics import precision_recall_fscore_support
from tqdm import tqdm

from models.labels import LabelSet, Task, thresholds_tensor
from models.predictor import Predictor
from registry.tracking_server import check_tracking_reachable
from scoring.batch import ScoringOptions, decode_file
from scoring.model_source import LoadedModel, ModelLineage, load_model

from . import plots
from .config import DataConfig, EvaluationConfig
from .data import DataError, DataIssue, Sample, load_dataset
from .metrics import metric_safe, metrics_from_scores, scalar_metrics

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # training's default (training/configs/default.yaml)


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


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _split_root(data: DataConfig, split: str) -> Path:
    # EvaluationConfig has checked that the split's folder is given.
    roots = {"all": data.root, "train": data.root, "val": data.val_root, "test": data.test_root}
    return roots[split]


def load_evaluation_samples(
    *, data: DataConfig, split: str, labels: LabelSet, task: Task
) -> tuple[list[Sample], list[DataIssue]]:
    """The labelled samples of ``split``, checked against the model's labels (a label the model
    does not know is a data issue: failed or skipped per ``data.on_error``)."""
    fixed = {"labels": list(labels.names)}
    if data.format == "folder":
        fixed["root"] = _split_root(data, split)
    loaded = load_dataset(data.model_copy(update=fixed))
    samples = loaded.samples
    if data.format == "csv" and split != "all":
        if not any(s.split for s in samples):
            raise DataError(f"--split {split}: {data.manifest} has no split column")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(f"{data.manifest} has no usable rows with split {split!r}")
    if task is Task.SINGLE_LABEL:
        multi = [s.origin for s in samples if len(s.labels) > 1]
        if multi:
            raise DataError(
                f"a single-label model, but {len(multi)} sample(s) have several labels, "
                f"e.g. {multi[:3]}"
            )
    return samples, loaded.issues


def dataset_name(config: EvaluationConfig) -> str:
    if config.name:
        return config.name
    data = config.data
    if data.format == "csv":
        base = data.manifest.stem
        return base if config.split == "all" else f"{base}-{config.split}"
    folder = _split_root(data, config.split).resolve()
    # data/train, data/val, data/test: the folder alone would name every dataset alike.
    return folder.name if config.split == "all" else f"{folder.parent.name}-{folder.name}"


def _target(sample: Sample, labels: LabelSet, task: Task) -> torch.Tensor:
    if task is Task.SINGLE_LABEL:
        return torch.tensor(labels.index(sample.labels[0]))
    return labels.encode_multi_hot(sample.labels)


def score_samples(
    samples: list[Sample], *, predictor: Predictor, config: EvaluationConfig
) -> tuple[torch.Tensor, torch.Tensor, list[DataIssue]]:
    """Class probabilities and targets for the samples that decode; the rest as issues."""
    options = ScoringOptions(
        batch_size=config.batch_size,
        decode_threads=config.decode_threads,
        full_decode=config.full_decode,
    )
    all_scores, all_targets, issues = [], [], []
    with (
        ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode") as pool,
        tqdm(total=len(samples), desc="evaluating", unit="img", disable=None) as bar,
    ):
        for start in range(0, len(samples), config.batch_size):
            batch = samples[start : start + config.batch_size]
            decoded = list(
                pool.map(
                    lambda s: decode_file(str(s.path), predictor=predictor, options=options), batch
                )
            )
            images, targets = [], []
            for sample, image in zip(batch, decoded, strict=True):
                if isinstance(image, str):
                    issues.append(DataIssue(sample.origin, image))
                else:
                    images.append(image)
                    targets.append(_target(sample, predictor.labels, predictor.spec.task))
            if images:
                all_scores.append(predictor.scores(predictor.preprocess(images)))
                all_targets.append(torch.stack(targets))
            bar.update(len(batch))
    if not all_scores:
        raise DataError("no image could be decoded")
    return torch.cat(all_scores), torch.cat(all_targets), issues


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


def _tag_model_version(*, result: EvaluationResult, tracking_uri: str) -> None:
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


def _log_evaluation(
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


def _apply_on_error(issues: list[DataIssue], on_error: str) -> None:
    if not issues:
        return
    shown = "\n  ".join(str(i) for i in issues[:20])
    if on_error == "fail":
        raise DataError(
            f"{len(issues)} image(s) could not be scored (set data.on_error=skip to skip them):"
            f"\n  {shown}"
        )
    logger.warning("Skipping %d image(s) that could not be scored:\n  %s", len(issues), shown)


def evaluate_model(*, model_uri: str, config: EvaluationConfig) -> EvaluationResult:
    """Evaluate ``model_uri`` on ``config.data``; log and link the result unless turned off.

    Raises ``scoring.model_source.ModelSourceError`` for a model that cannot be found or loaded
    and :class:`~training.data.DataError` for unusable data.
    """
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    if config.log_to_mlflow:  # before the work, not after MLflow's retries
        check_tracking_reachable(tracking_uri)
    loaded: LoadedModel = load_model(
        model_uri, tracking_uri=tracking_uri, device=config.device, precision=config.precision
    )
    predictor = loaded.predictor
    samples, issues = load_evaluation_samples(
        data=config.data, split=config.split, labels=predictor.labels, task=predictor.spec.task
    )
    scores, targets, failed = score_samples(samples, predictor=predictor, config=config)
    _apply_on_error(failed, config.data.on_error)
    raw_metrics = metrics_from_scores(
        scores,
        targets,
        predictor.labels,
        predictor.spec.task,
        threshold=predictor.spec.threshold,
        class_thresholds=predictor.spec.class_thresholds,
    )
    result = EvaluationResult(
        model_uri=model_uri,
        lineage=loaded.lineage,
        task=predictor.spec.task,
        dataset=dataset_name(config),
        num_images=len(targets),
        skipped=len(issues) + len(failed),
        metrics=scalar_metrics(raw_metrics, prefix=""),
        per_class=per_class_reports(
            scores=scores, targets=targets, predictor=predictor, raw_metrics=raw_metrics
        ),
        run_id=None,
    )
    if not config.log_to_mlflow:
        return result
    run_id = _log_evaluation(
        result=result,
        config=config,
        tracking_uri=tracking_uri,
        raw_metrics=raw_metrics,
        scores=scores,
        targets=targets,
        predictor=predictor,
    )
    result = replace(result, run_id=run_id)
    _tag_model_version(result=result, tracking_uri=tracking_uri)
    logger.info("Evaluation run %s in experiment %r", run_id, config.experiment)
    return result
