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

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from models.labels import LabelSet, Task
from models.predictor import Predictor
from registry.tracking_server import check_tracking_reachable
from scoring.batch import ScoringOptions, decode_file
from scoring.model_source import LoadedModel, load_model

from .config import DataConfig, EvaluationConfig
from .data import DataError, DataIssue, Sample, load_dataset
from .evaluation_report import (
    ClassReport,
    EvaluationResult,
    format_table,
    log_evaluation,
    per_class_reports,
    tag_model_version,
)
from .metrics import metrics_from_scores, scalar_metrics

__all__ = ["ClassReport", "EvaluationResult", "evaluate_model", "format_table"]

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # training's default (training/configs/default.yaml)


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
    run_id = log_evaluation(
        result=result,
        config=config,
        tracking_uri=tracking_uri,
        raw_metrics=raw_metrics,
        scores=scores,
        targets=targets,
        predictor=predictor,
    )
    result = replace(result, run_id=run_id)
    tag_model_version(result=result, tracking_uri=tracking_uri)
    logger.info("Evaluation run %s in experiment %r", run_id, config.experiment)
    return result
