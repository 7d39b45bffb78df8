"""The served model's entry in the BentoML store: declared on the service class, checked before
a Bento is built and before any worker starts."""

from __future__ import annotations

from typing import Any

import attrs
import bentoml
from bentoml.models import BentoModel

from models.artifact import ArtifactError, check_artifact, stored_artifact_dir

FIX_THE_MODEL = (
    "Re-import it (`python -m registry import ...`) or serve another CLASSIFIER_MODEL_TAG"
)


class ModelNotServableError(RuntimeError):
    """The model named by CLASSIFIER_MODEL_TAG is missing from the store or damaged."""


@attrs.frozen
class ServedModel(BentoModel):
    """A :class:`bentoml.models.BentoModel` that refuses a missing or damaged model with a
    message that says what to fix. Plain ``BentoModel`` would look a missing one up on
    BentoCloud and fail with "No cloud context default found", and would package a damaged one.

    ``bentoml build`` calls :meth:`to_info`, ``bentoml serve`` calls :meth:`resolve`. Inside a
    Bento, BentoML resolves its packaged models as plain ``BentoModel`` objects, so the service
    also calls :meth:`check` from an ``on_deployment`` hook.
    """

    def to_info(self, alias: str | None = None) -> Any:
        self.check()
        return super().to_info(alias)

    def resolve(self, base_path: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.check()
        return super().resolve(base_path, *args, **kwargs)

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
