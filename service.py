"""BentoML service: an adaptive-batching image classifier.

Everything about the model (architecture, labels, task, preprocessing, thresholds) is read from
the artifact in the BentoML store; settings come from ``CLASSIFIER_*`` environment variables
(see ``models/serving.py``) and ``configuration.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml

from models.bento_import import artifact_dir
from models.predictor import Predictor
from models.serving import (
    SERVICE_NAME,
    Classification,
    ModelMetadata,
    ModelRef,
    ServingSettings,
    UploadedImage,
    load_service_config,
)

logger = logging.getLogger("bentoml.image_classifier")
SETTINGS = ServingSettings.from_env()


@bentoml.service(
    name=SERVICE_NAME, **load_service_config(Path(__file__).with_name("configuration.yaml"))
)
class ImageClassifier:
    bento_model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        stored = type(self).bento_model.stored
        if stored is None:
            raise RuntimeError(
                f"model {SETTINGS.model_tag} is not in the BentoML store; import one with "
                "`python -m models import models:/image-classifier@champion` or set "
                "CLASSIFIER_MODEL_TAG"
            )
        labels = stored.info.labels
        self.model_ref = ModelRef(
            tag=str(stored.tag),
            mlflow_registered_name=labels.get("mlflow_registered_name", ""),
            mlflow_version=labels.get("mlflow_version", ""),
            mlflow_run_id=labels.get("mlflow_run_id", ""),
        )
        self.metrics = dict(stored.info.metadata.get("metrics", {}))
        self.predictor = Predictor.from_artifact(artifact_dir(stored), device=SETTINGS.device)
        self.predictor.warmup(batch_sizes=(1, min(8, SETTINGS.max_batch_size)))
        logger.info(
            "Serving %s (MLflow %s v%s) on %s",
            self.model_ref.tag,
            self.model_ref.mlflow_registered_name or "-",
            self.model_ref.mlflow_version or "-",
            self.predictor.plan.describe(),
        )

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify(self, images: list[UploadedImage]) -> list[Classification]:
        """Classify one or more images (multipart field `images`): labels with scores per image."""
        scores = self.predictor.scores(self.predictor.preprocess(images))
        return [
            Classification(labels=labels, model=self.model_ref)
            for labels in self.predictor.decode(scores)
        ]

    @bentoml.api(route="/metadata")
    def metadata(self) -> ModelMetadata:
        """The served model: tag, MLflow lineage, labels, task, preprocessing and device."""
        spec = self.predictor.spec
        return ModelMetadata(
            model=self.model_ref,
            architecture=spec.architecture,
            task=spec.task.value,
            labels=list(spec.labels),
            top_k=spec.top_k,
            threshold=spec.threshold,
            class_thresholds=spec.class_thresholds,
            preprocessing=spec.preprocessing.model_dump(mode="json"),
            device=self.predictor.plan.describe(),
            metrics=self.metrics,
            max_batch_size=SETTINGS.max_batch_size,
            max_latency_ms=SETTINGS.max_latency_ms,
        )
