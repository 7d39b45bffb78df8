"""A model from the MLflow registry at server start-up (``CLASSIFIER_MODEL_URI``).

The same image can then serve a model it was not built with: before the server reports ready it
imports the version an alias (or a version or run URI) names, with its lineage, into its own
BentoML store. A registry that does not answer yet (a stack still starting) or an alias not set
yet is retried until a deadline; then, or at once for what retrying cannot fix (a model that is
not ours, refused credentials), the server exits with a message that says what to fix.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import bentoml

from .bento_import import ModelImportError, import_from_mlflow
from .tracking_server import PASSWORD_VAR, redact

logger = logging.getLogger(__name__)

FIRST_BACKOFF_S = 2.0
MAX_BACKOFF_S = 15.0
WHAT_TO_FIX = (
    "check MLFLOW_TRACKING_URI (reachable from this container), the credentials "
    "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or CLASSIFIER_MLFLOW_PASSWORD_FILE) "
    "and that the model URI exists (`python -m registry list`, or set the alias: "
    "`python -m training promote`)"
)


class StartupModelError(RuntimeError):
    """No model could be imported from the registry at start-up; the message says why."""


def load_password_file(path: Path | None, *, environ: dict[str, str] | None = None) -> bool:
    """Put the password a secret file holds where MLflow's client reads it (the environment),
    unless the environment already has one; True when it did. MLflow itself has no ``*_FILE``
    variable. The caller removes it again after the import (``forget_password``), so that
    the server's workers, started later, do not inherit it."""
    env = os.environ if environ is None else environ
    if path is None or env.get(PASSWORD_VAR):
        return False
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise StartupModelError(
            f"CLASSIFIER_MLFLOW_PASSWORD_FILE={path} cannot be read: {exc.strerror}"
        ) from None
    if not password:
        return False
    env[PASSWORD_VAR] = password
    return True


def forget_password(*, environ: dict[str, str] | None = None) -> None:
    (os.environ if environ is None else environ).pop(PASSWORD_VAR, None)


def fetch_model(
    model_uri: str,
    *,
    bento_name: str,
    timeout_s: float,
    importer: Callable[..., tuple[bentoml.Model, bool]] = import_from_mlflow,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bentoml.Model:
    """Import ``model_uri`` as ``bento_name:latest``, retrying what may pass for ``timeout_s``
    from the first failure (a slow first attempt, such as MLflow's import, does not use it up).

    Raises ``StartupModelError`` naming the URI, the registry, the last reason and what to fix.
    """
    deadline: float | None = None
    backoff_s = FIRST_BACKOFF_S
    attempt = 0
    while True:
        attempt += 1
        try:
            model, created = importer(model_uri, bento_name=bento_name)
        except ModelImportError as exc:
            deadline = clock() + timeout_s if deadline is None else deadline
            if not exc.retryable or clock() + backoff_s > deadline:
                raise StartupModelError(_failure(model_uri, exc, attempts=attempt)) from None
            logger.warning(
                "model %s not available yet (attempt %d): %s; retrying in %.0f s",
                model_uri,
                attempt,
                exc,
                backoff_s,
            )
            sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
            continue
        verb = "imported" if created else "already in the store as"
        logger.info("%s from the MLflow registry: %s %s", model_uri, verb, model.tag)
        return model


def _failure(model_uri: str, exc: ModelImportError, *, attempts: int) -> str:
    registry = redact(os.environ.get("MLFLOW_TRACKING_URI", "(MLFLOW_TRACKING_URI is not set)"))
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return (
        f"cannot serve CLASSIFIER_MODEL_URI={model_uri} from the MLflow registry at "
        f"{registry}{tries}: {exc}. To fix: {WHAT_TO_FIX}"
    )
