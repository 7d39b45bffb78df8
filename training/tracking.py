"""MLflow bookkeeping: the run's lifecycle, parameters, artifacts, model and registration."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from registry.mlflow_pyfunc import log_classifier_model

from .config import TrainConfig, flatten
from .summary import DatasetSummary

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def mlflow_run(cfg: TrainConfig, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) the run; on failure mark it FAILED, on interruption KILLED."""
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(cfg.mlflow.experiment) is None:
        client.create_experiment(
            cfg.mlflow.experiment, artifact_location=cfg.mlflow.artifact_location
        )
    mlflow.set_experiment(cfg.mlflow.experiment)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else cfg.mlflow.run_name)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        logger.error("Training interrupted; MLflow run %s marked KILLED", run.info.run_id)
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        logger.error("Training failed; MLflow run %s marked FAILED", run.info.run_id)
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_config(cfg: TrainConfig, extra: dict) -> None:
    """The resolved configuration as params (dotted names) and as a YAML artifact."""
    resolved = cfg.model_dump(mode="json")
    params = {k: ("null" if v is None else v) for k, v in flatten(resolved).items()}
    params.update(extra)
    # MLflow caps a param value's length; a long label list goes into the artifact instead.
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_text(yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")


def log_data_issues(issues) -> None:
    if issues:
        lines = "origin,reason\n" + "".join(f'"{i.origin}","{i.reason}"\n' for i in issues)
        mlflow.log_text(lines, "data/issues.csv")


def log_dataset_summary(summary: DatasetSummary) -> None:
    """Images per class and split, sizes and cross-split duplicates, logged before training."""
    mlflow.log_dict(summary.to_dict(), "data/summary.json")
    mlflow.log_text(summary.table() + "\n", "data/summary.md")
    mlflow.log_metrics(summary.metrics())


def log_labels(labels: tuple[str, ...]) -> None:
    mlflow.log_text(json.dumps(list(labels), indent=2), "data/labels.json")


def log_and_register_model(
    cfg: TrainConfig, *, artifact_dir: Path, example_image: bytes, version_tags: dict[str, str]
) -> str | None:
    """Log the best artifact as a pyfunc model; register it and set the alias.

    Returns the registered version, or ``None`` when registration is turned off.
    """
    info = log_classifier_model(artifact_dir, example_image, cfg.mlflow.registered_model)
    if not cfg.mlflow.registered_model:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient()
    name = cfg.mlflow.registered_model
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, cfg.mlflow.alias, version)
    logger.info("Registered %s version %s with alias @%s", name, version, cfg.mlflow.alias)
    return version
