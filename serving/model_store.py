"""The served model's entry in the BentoML store: declared on the service class, checked before
a Bento is built and before any worker starts; with ``CLASSIFIER_MODEL_URI``, imported from the
MLflow registry first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import bentoml
from bentoml.models import BentoModel

from models.artifact import ArtifactError, check_artifact, stored_artifact_dir

# Imported with the service, not when first needed: inside a containerized Bento, BentoML takes
# the Bento's source directory off sys.path again once the service module is imported.
from registry.startup import fetch_model, forget_password, load_password_file

from .settings import ServingSettings

# The BentoML store name of a model imported at start-up (CLASSIFIER_MODEL_URI): apart from the
# packaged model's, so that an image's own model is never replaced by a registry import.
REGISTRY_MODEL_NAME = "image-classifier-registry"
FIX_THE_MODEL = (
    "Re-import it (`python -m registry import ...`) or serve another CLASSIFIER_MODEL_TAG"
)


class ModelNotServableError(RuntimeError):
    """The model named by CLASSIFIER_MODEL_TAG is missing from the store or damaged."""


@attrs.frozen
class RegistrySource:
    """Where a model served with ``CLASSIFIER_MODEL_URI`` comes from (serving/settings.py)."""

    uri: str
    timeout_s: float
    password_file: Path | None = None


@attrs.frozen
class ServedModel(BentoModel):
    """A :class:`bentoml.models.BentoModel` that refuses a missing or damaged model with a
    message that says what to fix. Plain ``BentoModel`` would look a missing one up on
    BentoCloud and fail with "No cloud context default found", and would package a damaged one.

    ``bentoml build`` calls :meth:`to_info`, ``bentoml serve`` calls :meth:`resolve`. Inside a
    Bento, BentoML resolves its packaged models as plain ``BentoModel`` objects, so the service
    also calls :meth:`prepare` from an ``on_deployment`` hook.
    """

    source: RegistrySource | None = None
    # Set once the registry's model is imported: BentoML's resolve() and the on_deployment hook
    # both prepare the model under plain `bentoml serve`, and one import is enough.
    _fetched: list[bool] = attrs.field(factory=list, init=False, eq=False, repr=False)

    def to_info(self, alias: str | None = None) -> Any:
        self.check()
        return super().to_info(alias)

    def resolve(self, base_path: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.prepare()
        return super().resolve(base_path, *args, **kwargs)

    def prepare(self) -> bentoml.Model:
        """Once per server, before workers start: import the registry's model when there is a
        ``source`` (retrying, then ``StartupModelError``), then :meth:`check` it."""
        if self.source is not None and not self._fetched:
            from_file = load_password_file(self.source.password_file)
            try:
                fetch_model(
                    self.source.uri, bento_name=self.tag.name, timeout_s=self.source.timeout_s
                )
            finally:
                if from_file:
                    forget_password()
            self._fetched.append(True)
        return self.check()

    def check(self) -> bentoml.Model:
        """The stored model, after a cheap integrity check; else ``ModelNotServableError``.

        Look the model up once and use what this returns: ``:latest`` may move meanwhile.
        """
        stored = self.stored
        if stored is None:
            raise ModelNotServableError(
                f"model {self.tag} is not in the BentoML store; import one with "
                "`python -m registry import models:/image-classifier@champion` or set "
                "CLASSIFIER_MODEL_TAG"
            )
        try:
            check_artifact(stored_artifact_dir(stored.path))
        except (ArtifactError, FileNotFoundError) as exc:
            raise ModelNotServableError(
                f"model {stored.tag} in the BentoML store ({stored.path}) is damaged: {exc}. "
                f"{FIX_THE_MODEL}"
            ) from None
        return stored


def served_model(settings: ServingSettings) -> ServedModel:
    """The model these settings serve: the registry's (``CLASSIFIER_MODEL_URI``), imported at
    start-up, or the one in the store (``CLASSIFIER_MODEL_TAG``, the image's packaged model)."""
    if settings.model_uri is None:
        return ServedModel(settings.model_tag)
    source = RegistrySource(
        uri=settings.model_uri,
        timeout_s=settings.model_fetch_timeout_s,
        password_file=settings.mlflow_password_file,
    )
    return ServedModel(f"{REGISTRY_MODEL_NAME}:latest", source=source)
