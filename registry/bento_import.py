"""Import a registered MLflow model into the BentoML model store, with its lineage.

Accepts ``models:/Name@alias``, ``models:/Name/<version>`` and ``runs:/<run_id>/<path>``. The Bento
model carries the MLflow model (pyfunc, so it still works with MLflow's tools) and labels that
trace it back: tracking URI, run id, registered name and version. Importing the same MLflow
version twice returns the existing Bento model instead of creating a duplicate, unless that copy
is damaged: then it is replaced. Either way the imported model becomes ``<name>:latest``, so
importing an older version again is a rollback.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bentoml

from models.artifact import (
    STORED_MLFLOW_MODEL_DIR,
    ArtifactError,
    ModelSpec,
    check_artifact,
    classifier_artifact_dir,
    load_artifact,
    stored_artifact_dir,
)

from . import tracking_server
from .lifecycle import make_latest
from .tracking_server import TrackingServerError, redact

logger = logging.getLogger(__name__)

DEFAULT_BENTO_MODEL_NAME = "image-classifier"
MLFLOW_MODEL_DIR = STORED_MLFLOW_MODEL_DIR

_REGISTERED_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_REGISTERED_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9a-fA-F]+)/(?P<path>.+)$")

# Run metrics worth copying into the Bento model's metadata, when the run has them.
HEADLINE_METRICS = (
    "best_val_accuracy",
    "best_val_top5",
    "best_val_macro_f1",
    "best_val_map",
    "best_val_micro_f1",
    "best_score",
    "best_epoch",
)


NOT_RETRYABLE_MLFLOW_ERRORS = frozenset(
    {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
)


class ModelImportError(RuntimeError):
    """The MLflow model could not be found, reached or imported; the message says which.

    ``retryable``: the registry may answer differently soon (unreachable, a restarting server,
    an alias not set yet); a model that is not ours or a malformed URI never will.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class MlflowSource:
    """A resolved MLflow model: the immutable URI to download and its lineage."""

    requested_uri: str
    download_uri: str
    run_id: str
    registered_name: str = ""
    version: str = ""

    def bento_labels(self, tracking_uri: str) -> dict[str, str]:
        return {
            "mlflow_tracking_uri": redact(tracking_uri),
            "mlflow_run_id": self.run_id,
            "mlflow_registered_name": self.registered_name,
            "mlflow_version": self.version,
            "mlflow_model_uri": self.download_uri,
        }


def check_tracking_reachable(tracking_uri: str) -> None:
    """The registry answers (HTTP, a few tries) or exists (sqlite); else ``ModelImportError``."""
    try:
        tracking_server.check_tracking_reachable(tracking_uri)
        tracking_server.check_sqlite_exists(tracking_uri)
    except TrackingServerError as exc:
        raise ModelImportError(str(exc), retryable=exc.retryable) from None


def resolve_source(model_uri: str, client) -> MlflowSource:
    """Turn an alias / version / run URI into a pinned URI plus lineage."""
    if not any(form.match(model_uri) for form in (_REGISTERED_ALIAS, _REGISTERED_VERSION, _RUN)):
        raise ModelImportError(
            f"unsupported model URI {model_uri!r}: use models:/Name@alias, "
            "models:/Name/<version> or runs:/<run_id>/<path>"
        )
    from mlflow.exceptions import MlflowException

    try:
        if match := _REGISTERED_ALIAS.match(model_uri):
            name, alias = match["name"], match["alias"]
            mv = _registered(
                client,
                name,
                lambda: client.get_model_version_by_alias(name, alias),
                f"alias {alias!r}",
            )
        elif match := _REGISTERED_VERSION.match(model_uri):
            name, version = match["name"], match["version"]
            mv = _registered(
                client, name, lambda: client.get_model_version(name, version), f"version {version}"
            )
        else:
            match = _RUN.match(model_uri)
            run = client.get_run(match["run_id"])
            return MlflowSource(model_uri, model_uri, run.info.run_id)
    except MlflowException as exc:
        # A refusal stays a refusal; anything else (a server restarting, a 5xx) may pass.
        refused = exc.error_code in NOT_RETRYABLE_MLFLOW_ERRORS
        raise ModelImportError(
            f"cannot resolve {model_uri}: {exc.message}", retryable=not refused
        ) from None
    return MlflowSource(
        requested_uri=model_uri,
        download_uri=f"models:/{mv.name}/{mv.version}",
        run_id=mv.run_id or "",
        registered_name=mv.name,
        version=str(mv.version),
    )


def _registered(client, name: str, fetch, what: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=50)]
        raise ModelImportError(
            f"no registered model named {name!r} in the MLflow registry; known: {known}",
            retryable=True,
        ) from None
    try:
        return fetch()
    except MlflowException:
        model = client.get_registered_model(name)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelImportError(
            f"registered model {name!r} has no {what}; versions: {versions}, "
            f"aliases: {sorted(model.aliases or {})}",
            retryable=True,
        ) from None


def find_existing(bento_name: str, source: MlflowSource) -> bentoml.Model | None:
    """The Bento model already imported from exactly this MLflow model, if any."""
    from bentoml.exceptions import NotFound

    try:
        candidates = bentoml.models.list(bento_name)
    except NotFound:
        return None
    for model in candidates:
        labels = model.info.labels
        if (
            labels.get("mlflow_run_id") == source.run_id
            and labels.get("mlflow_model_uri") == source.download_uri
        ):
            return model
    return None


def artifact_dir(bento_model: bentoml.Model) -> Path:
    """Where the classifier artifact (weights + spec) lives inside an imported Bento model.

    Raises ``ArtifactError`` when the stored MLmodel points outside the stored model.
    """
    return stored_artifact_dir(bento_model.path)


def _damage(bento_model: bentoml.Model) -> str | None:
    """Why a stored model cannot be served (the same cheap check `service.py` runs), or None."""
    try:
        check_artifact(artifact_dir(bento_model))
    except (ArtifactError, FileNotFoundError) as exc:
        return str(exc)
    return None


def _reuse_existing(bento_name: str, source: MlflowSource) -> bentoml.Model | None:
    """The intact Bento model already imported from ``source``; a damaged one is deleted, so
    that importing again is the fix the service's error message promises."""
    existing = find_existing(bento_name, source)
    if existing is None:
        return None
    damage = _damage(existing)
    if damage is not None:
        logger.warning(
            "%s is damaged (%s); deleting it and importing it again from %s",
            existing.tag,
            damage,
            source.download_uri,
        )
        bentoml.models.delete(existing.tag)
        return None
    logger.info("%s is already imported as %s", source.download_uri, existing.tag)
    # Importing it again means "serve this one" (a rollback to an older version included).
    make_latest(existing)
    return existing


def _validate_download(local: str, source: MlflowSource) -> ModelSpec:
    """Our model, confined to its directory, and loadable: the model is built and its weights
    loaded once here, on the CPU, so wrong tensor shapes are refused before anything is stored
    (not found by server workers that BentoML restarts over and over)."""
    try:
        directory = classifier_artifact_dir(local)
        check_artifact(directory)
        _, spec = load_artifact(directory)
    except (ArtifactError, FileNotFoundError) as exc:
        raise ModelImportError(
            f"{source.download_uri} is not a classifier model from this project: {exc}"
        ) from exc
    return spec


def _metadata(spec: ModelSpec, source: MlflowSource, client) -> dict:
    metrics: dict[str, float] = {}
    if source.run_id:
        run_metrics = client.get_run(source.run_id).data.metrics
        metrics = {k: float(v) for k, v in run_metrics.items() if k in HEADLINE_METRICS}
    return {
        "task": spec.task.value,
        "architecture": spec.architecture,
        "labels": list(spec.labels),
        "num_classes": spec.num_classes,
        "metrics": metrics,
        "mlflow_requested_uri": source.requested_uri,
    }


def import_from_mlflow(
    model_uri: str,
    *,
    tracking_uri: str | None = None,
    bento_name: str = DEFAULT_BENTO_MODEL_NAME,
) -> tuple[bentoml.Model, bool]:
    """Import ``model_uri`` into the BentoML store; returns ``(model, created)``."""
    import mlflow
    from mlflow import MlflowClient

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    check_tracking_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    source = resolve_source(model_uri, client)

    existing = _reuse_existing(bento_name, source)
    if existing is not None:
        return existing, False

    # Download and validate first: a model that cannot be served never enters the store.
    with tempfile.TemporaryDirectory(prefix="mlflow-import-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source.download_uri, dst_path=tmp
            )
        except Exception as exc:  # MLflow raises several unrelated types for a failed download
            raise ModelImportError(
                f"cannot download {source.download_uri}: {exc}", retryable=True
            ) from exc
        spec = _validate_download(local, source)
        try:
            bento_model = bentoml.mlflow.import_model(
                bento_name,
                local,
                labels=source.bento_labels(tracking_uri),
                metadata=_metadata(spec, source, client),
            )
        except bentoml.exceptions.BentoMLException as exc:
            raise ModelImportError(f"BentoML could not store {source.download_uri}: {exc}") from exc
    logger.info("Imported %s as %s", source.download_uri, bento_model.tag)
    return bento_model, True
