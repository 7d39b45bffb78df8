"""The model to score with, from an MLflow URI, a Bento tag or a local directory, with the
lineage each result row carries.

MLflow URIs are resolved with the registry's own resolver (an alias becomes the version it
points to now, so every row names the exact version that scored it) and downloaded to a
temporary directory that is gone once the weights are loaded.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from models.artifact import SPEC_FILE, ArtifactError, classifier_artifact_dir
from models.predictor import Predictor

logger = logging.getLogger(__name__)

MLFLOW_SCHEMES = ("models:/", "runs:/")


class ModelSourceError(RuntimeError):
    """The model could not be found, fetched or loaded; the message says why."""


@dataclass(frozen=True)
class ModelLineage:
    """Where the scoring model came from: written into every result row."""

    model: str  # pinned: models:/Name/<version>, runs:/..., a Bento tag with its version, a path
    model_version: str = ""
    run_id: str = ""
    registered_name: str = ""  # the MLflow registered model, when the source is a version of one


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    lineage: ModelLineage


def load_model(
    source: str,
    *,
    tracking_uri: str | None = None,
    device: str = "auto",
    precision: str = "float32",
) -> LoadedModel:
    """Load ``source``: ``models:/Name@alias``, ``models:/Name/<version>``, ``runs:/<id>/<path>``,
    a Bento tag (``name[:version]``) in the BentoML store, or a local directory (a classifier
    artifact, or a downloaded MLflow model)."""
    options = {"device": device, "precision": precision}
    if source.startswith(MLFLOW_SCHEMES):
        return _from_mlflow(source, tracking_uri=tracking_uri, **options)
    if Path(source).is_dir():
        return LoadedModel(
            _predictor(_local_artifact(Path(source)), **options),
            ModelLineage(model=str(Path(source).resolve())),
        )
    return _from_bento(source, **options)


def _predictor(directory: Path, *, device: str, precision: str) -> Predictor:
    try:
        return Predictor.from_artifact(directory, device=device, precision=precision)
    except (ArtifactError, FileNotFoundError) as exc:
        raise ModelSourceError(f"cannot load the classifier in {directory}: {exc}") from exc


def _local_artifact(directory: Path) -> Path:
    if (directory / SPEC_FILE).is_file():
        return directory
    try:
        return classifier_artifact_dir(directory)
    except (ArtifactError, FileNotFoundError) as exc:
        raise ModelSourceError(
            f"{directory} is neither a classifier artifact nor an MLflow model of this project: "
            f"{exc}"
        ) from exc


def resolve_mlflow(uri: str, *, tracking_uri: str | None = None) -> ModelLineage:
    """The version a ``models:/`` or ``runs:/`` URI names now, pinned (an alias may move while
    a job runs: every row, and every Spark executor, must use the same version). Also makes
    ``tracking_uri`` MLflow's current one, where the model is then downloaded from."""
    import mlflow
    from mlflow import MlflowClient

    from registry.bento_import import ModelImportError, check_tracking_reachable, resolve_source

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        check_tracking_reachable(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        resolved = resolve_source(uri, client)
    except ModelImportError as exc:
        raise ModelSourceError(str(exc)) from None
    mlflow.set_tracking_uri(tracking_uri)
    return ModelLineage(
        model=resolved.download_uri,
        model_version=resolved.version,
        run_id=resolved.run_id,
        registered_name=resolved.registered_name,
    )


def _from_mlflow(uri: str, *, tracking_uri: str | None, device: str, precision: str):
    import mlflow

    lineage = resolve_mlflow(uri, tracking_uri=tracking_uri)
    logger.info("Scoring with %s (run %s)", lineage.model, lineage.run_id)
    with tempfile.TemporaryDirectory(prefix="scoring-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=lineage.model, dst_path=tmp)
        except Exception as exc:  # MLflow raises several unrelated types for a failed download
            raise ModelSourceError(f"cannot download {lineage.model}: {exc}") from exc
        # The weights are in memory once loaded: the download can go with the directory.
        predictor = _predictor(_local_artifact(Path(local)), device=device, precision=precision)
    return LoadedModel(predictor, lineage)


def _from_bento(tag: str, *, device: str, precision: str) -> LoadedModel:
    import bentoml
    from bentoml.exceptions import BentoMLException

    from models.artifact import stored_artifact_dir

    try:
        stored = bentoml.models.get(tag)
    except (BentoMLException, ValueError) as exc:
        raise ModelSourceError(
            f"{tag!r} is not an MLflow URI (models:/..., runs:/...), a directory, or a model "
            f"in the BentoML store: {exc}"
        ) from None
    try:
        directory = stored_artifact_dir(stored.path)
    except (ArtifactError, FileNotFoundError) as exc:
        raise ModelSourceError(f"{stored.tag} in the BentoML store is damaged: {exc}") from exc
    labels = stored.info.labels
    lineage = ModelLineage(
        model=str(stored.tag),
        model_version=labels.get("mlflow_version", ""),
        run_id=labels.get("mlflow_run_id", ""),
        registered_name=labels.get("mlflow_registered_name", ""),
    )
    return LoadedModel(_predictor(directory, device=device, precision=precision), lineage)
