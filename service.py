"""BentoML service: an adaptive-batching image classifier. Importing it reads only the model tag
(``CLASSIFIER_MODEL_TAG``), ``CLASSIFIER_*`` and ``configuration.yaml`` (the rest: serving/)."""

from __future__ import annotations

from pathlib import Path

import bentoml

from serving.app import ServedClassifier, current_decoder, protect
from serving.http_front import FrontedService
from serving.image import image_envs, image_recipe
from serving.model_store import ServedModel
from serving.parsing import Threshold, TopK, UploadedImages
from serving.schemas import Classification, ModelMetadata
from serving.settings import SERVICE_NAME, ServingSettings, load_service_config

HERE = Path(__file__).resolve().parent
SETTINGS = ServingSettings.from_env()
SERVICE_CONFIG = load_service_config(HERE / "configuration.yaml")
SERVED_MODEL = ServedModel(SETTINGS.model_tag)


# FrontedService: front middlewares run outside BentoML's metrics and concurrency limiter.
@bentoml.service(
    name=SERVICE_NAME,
    image=image_recipe(requirements=HERE / "requirements-serve.lock"),
    envs=image_envs(model_tag=SETTINGS.model_tag),
    service_class=FrontedService,
    **SERVICE_CONFIG,
)
class ImageClassifier:
    bento_model = SERVED_MODEL

    @bentoml.on_deployment
    def check_model() -> None:
        """Once, before workers start: a missing or damaged model stops the server, saying why."""
        SERVED_MODEL.check()

    def __init__(self) -> None:
        self.served = ServedClassifier.start(SETTINGS, SERVED_MODEL, service_config=SERVICE_CONFIG)

    @bentoml.on_shutdown
    def stop(self) -> None:
        self.served.close()

    @bentoml.api(**SETTINGS.batching_options())
    async def classify(
        self, images: UploadedImages, top_k: TopK = None, threshold: Threshold = None
    ) -> list[Classification]:
        """Classify images (multipart `images`; optional `top_k`, `threshold`): labels per image."""
        return await self.served.classify(images, top_k=top_k, threshold=threshold)

    @bentoml.api(route="/metadata")
    def metadata(self) -> ModelMetadata:
        """The served model: tag, MLflow lineage, labels, task, preprocessing and device."""
        return self.served.metadata()


protect(ImageClassifier, settings=SETTINGS, decoder_of=current_decoder)
