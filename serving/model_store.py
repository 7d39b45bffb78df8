"""The served model's entry in the BentoML store: declared on the service class, checked before
any worker starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from bentoml.models import BentoModel

from models.artifact import ArtifactError, check_artifact, stored_artifact_dir

from .schemas import ModelRef, model_ref

FIX_THE_MODEL = (
    "Re-import it (`python -m registry import ...`) or serve another CLASSIFIER_MODEL_TAG"
)


class ModelNotServableError(RuntimeError):
    """The model named by CLASSIFIER_MODEL_TAG is missing from the store or damaged."""


@attrs.frozen
class ServedModel(BentoModel):
    """A :class:`bentoml.models.BentoModel` that refuses to resolve a missing or damaged model
    with a message that says what to fix. Plain ``BentoModel`` would try to download a missing
    one from BentoCloud and fail with "No cloud context default found"."""

    def resolve(self, base_path: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.check()
        return super().resolve(base_path, *args, **kwargs)

    def check(self) -> Any:
        """The stored model, after a cheap integrity check; else ``ModelNotServableError``."""
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

    def artifact_dir(self) -> Path:
        return stored_artifact_dir(self.check().path)

    def lineage(self) -> ModelRef:
        stored = self.check()
        return model_ref(str(stored.tag), stored.info.labels)

    def training_metrics(self) -> dict[str, float]:
        return dict(self.check().info.metadata.get("metrics", {}))
