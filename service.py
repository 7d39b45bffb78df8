"""BentoML service: an adaptive-batching image classifier.

Everything about the model (architecture, labels, task, preprocessing, thresholds) is read from
the artifact in the BentoML store; settings come from ``CLASSIFIER_*`` environment variables
(see ``models/serving.py``) and ``configuration.yaml``. ``IMAGE`` below is the container image
that ``bentoml build`` + ``bentoml containerize`` produce (see README, "Ship it").
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import bentoml
from PIL import Image

from models import telemetry
from models.artifact import ArtifactError, check_artifact
from models.bento_import import artifact_dir
from models.http_front import FrontedService, OverloadAnswers, quiet_client_errors
from models.labels import Task
from models.predictor import Predictor, TorchThread
from models.request_guard import RequestGuard
from models.serving import (
    SERVICE_NAME,
    Classification,
    ModelMetadata,
    ModelRef,
    ServingSettings,
    UploadedImages,
    configure_request_decoding,
    install_request_parsing,
    load_service_config,
    warmup_batch_sizes,
)

logger = logging.getLogger("bentoml.image_classifier")
SETTINGS = ServingSettings.from_env()
MAX_BATCH_SIZE = SETTINGS.batch_size_limit()
HERE = Path(__file__).resolve().parent
SERVICE_CONFIG = load_service_config(HERE / "configuration.yaml")

# The GPU image, as BentoML documents it: python:3.11-slim plus PyPI torch, which bundles its CUDA
# runtime (torch 2.14.1 = CUDA 13.0: the host needs an NVIDIA driver >= 580). Without a GPU the
# same image serves on the CPU. BentoML runs it as the non-root user `bentoml`.
# For builds behind a TLS-intercepting proxy: trust the PEM certificates in the EXTRA_CA_CERTS
# build secret while packages download, then restore the stock bundle, so the final image trusts
# only Debian's CAs (the public certificate stays in an intermediate layer). Inline commands:
# BentoML 1.4 drops run_script() files when bentofile.yaml is merged into the image.
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_TRUST_BUILD_CA = (
    "sh -c 'if [ -s /run/secrets/EXTRA_CA_CERTS ]; then "
    'grep -q "BEGIN CERTIFICATE" /run/secrets/EXTRA_CA_CERTS '
    "|| { echo EXTRA_CA_CERTS holds no PEM certificate >&2; exit 1; }; "
    f"cp {_CA_BUNDLE} {_CA_BUNDLE}.image-default && "
    f"cat /run/secrets/EXTRA_CA_CERTS >> {_CA_BUNDLE}; fi'"
)
_UNTRUST_BUILD_CA = (
    f"sh -c 'if [ -f {_CA_BUNDLE}.image-default ]; then "
    f"mv {_CA_BUNDLE}.image-default {_CA_BUNDLE}; fi'"
)
# BentoML creates these under BENTOML_HOME at start-up unless they exist: made at build time, the
# container can run with a read-only root filesystem (tmpfs on /tmp and /home/bentoml/tmp).
_HOME_DIRS = " ".join(f"/home/bentoml/{name}" for name in ("bentos", "models", "envs", "tmp"))
_BENTOML_HOME_DIRS = f"mkdir -p {_HOME_DIRS} && chown bentoml:bentoml {_HOME_DIRS}"
with contextlib.chdir(HERE):  # BentoML resolves the requirements path against the working dir
    IMAGE = (
        bentoml.images.Image(python_version="3.11", distro="debian", lock_python_packages=False)
        .run(_TRUST_BUILD_CA)
        .requirements_file("requirements-serve.lock")
        .run(_UNTRUST_BUILD_CA)
        .run(_BENTOML_HOME_DIRS)
    )
IMAGE_ENVS = [
    # PEM text of extra CA certificates for the build (a BuildKit secret, not a build arg);
    # empty by default. `make containerize EXTRA_CA_BUNDLE=/path/ca.pem` sets it.
    {"name": "EXTRA_CA_CERTS", "value": "", "stage": "build"},
    # pip (bootstrapping uv) and uv use the system trust store, where the build CA is added.
    {"name": "SSL_CERT_FILE", "value": _CA_BUNDLE},
    {"name": "PIP_CERT", "value": _CA_BUNDLE},
    {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
    # uv installs through a throw-away cache on the layer's own filesystem (hard links) instead of
    # BentoML's BuildKit cache mount, where torch's ~6 GB is copied and then kept: a build needs
    # half the disk. CI machines have run out of disk there.
    {"name": "UV_NO_CACHE", "value": "1"},
    # The image serves the model packaged at build time, whatever its name (override with -e).
    {"name": "CLASSIFIER_MODEL_TAG", "value": SETTINGS.model_tag},
]


_FIX_THE_MODEL = (
    "Re-import it (`python -m models import ...`) or serve another CLASSIFIER_MODEL_TAG"
)
SERVED_MODEL = bentoml.models.BentoModel(SETTINGS.model_tag)
if SERVED_MODEL.stored is None:
    # Checked on import: otherwise BentoML fails later, trying to download it from BentoCloud.
    # (Inside a Bento the store is the Bento's own, so the packaged model is found.)
    raise RuntimeError(
        f"model {SETTINGS.model_tag} is not in the BentoML store; import one with "
        "`python -m models import models:/image-classifier@champion` or set "
        "CLASSIFIER_MODEL_TAG"
    )
try:
    # Also on import, in the server's main process: a damaged model stops `bentoml serve` with
    # this message, instead of worker processes failing (and being restarted) one after another.
    check_artifact(artifact_dir(SERVED_MODEL.stored))
except ArtifactError as exc:
    raise RuntimeError(
        f"model {SERVED_MODEL.stored.tag} in the BentoML store ({SERVED_MODEL.stored.path}) is "
        f"damaged: {exc}. {_FIX_THE_MODEL}"
    ) from None


# FrontedService: front middlewares run outside BentoML's metrics and concurrency limiter (below).
@bentoml.service(
    name=SERVICE_NAME,
    image=IMAGE,
    envs=IMAGE_ENVS,
    service_class=FrontedService,
    **SERVICE_CONFIG,
)
class ImageClassifier:
    bento_model = SERVED_MODEL

    def __init__(self) -> None:
        stored = type(self).bento_model.stored
        assert stored is not None  # checked on import
        labels = stored.info.labels
        self.model_ref = ModelRef(
            tag=str(stored.tag),
            mlflow_registered_name=labels.get("mlflow_registered_name", ""),
            mlflow_version=labels.get("mlflow_version", ""),
            mlflow_run_id=labels.get("mlflow_run_id", ""),
        )
        self.metrics = dict(stored.info.metadata.get("metrics", {}))
        # Every torch call (load, warm-up, batches) on one thread: see TorchThread.
        self.torch_thread = TorchThread()
        try:
            self.predictor = self.torch_thread.call(
                Predictor.from_artifact,
                artifact_dir(stored),
                device=SETTINGS.device,
                precision=SETTINGS.precision,
            )
        except Exception as exc:
            # Never come up "ready" with a broken model: fail start-up, saying what to fix.
            raise RuntimeError(
                f"model {stored.tag} in the BentoML store ({stored.path}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. {_FIX_THE_MODEL}"
            ) from exc
        # Request validation decodes (and resizes) uploads before a batch forms: for this model.
        configure_request_decoding(SETTINGS, self.predictor.preprocessing)
        self.torch_thread.call(
            self.predictor.warmup, batch_sizes=warmup_batch_sizes(MAX_BATCH_SIZE)
        )
        telemetry.install(
            namespace=SERVICE_CONFIG.get("metrics", {}).get("namespace", SERVICE_NAME),
            model_info={
                "model_tag": self.model_ref.tag,
                "mlflow_model": self.model_ref.mlflow_registered_name,
                "mlflow_version": self.model_ref.mlflow_version,
                "mlflow_run_id": self.model_ref.mlflow_run_id,
                "architecture": self.predictor.spec.architecture,
                "task": self.predictor.spec.task.value,
                "device": self.predictor.plan.device.type,
            },
        )
        logger.info(
            "Serving %s (MLflow %s v%s) on %s",
            self.model_ref.tag,
            self.model_ref.mlflow_registered_name or "-",
            self.model_ref.mlflow_version or "-",
            self.predictor.plan.describe(),
        )

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    async def classify(self, images: UploadedImages) -> list[Classification]:
        """Classify one or more images (multipart field `images`): labels with scores per image."""
        return await self.torch_thread.run(self._classify_batch, images)

    def _classify_batch(self, images: list[Image.Image]) -> list[Classification]:
        with telemetry.time_preprocess():
            batch = self.predictor.preprocess(images)
        with telemetry.time_forward():
            scores = self.predictor.scores(batch)
        results = self.predictor.decode(scores)
        # Single-label answers are ranked top-k lists: count what the client acts on, the top-1.
        multi_label = self.predictor.spec.task is Task.MULTI_LABEL
        telemetry.count_predictions(
            score.label for labels in results for score in (labels if multi_label else labels[:1])
        )
        return [Classification(labels=labels, model=self.model_ref) for labels in results]

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
            max_batch_size=MAX_BATCH_SIZE,
            max_latency_ms=SETTINGS.max_latency_ms,
        )


# API keys and the body limit, checked before a request body is read, and the body read timeout
# (models/request_guard.py).
ImageClassifier.add_asgi_middleware(
    RequestGuard,
    api_keys=SETTINGS.api_key_list(),
    max_body_bytes=SETTINGS.max_request_bytes,
    body_read_timeout_s=SETTINGS.body_read_timeout_s,
)
# Outside BentoML's limiter: Retry-After on 429/503, and a 503 body that says the batcher shed
# the request (models/http_front.py). Unknown paths fold into one metrics label there too.
ImageClassifier.add_front_middleware(
    OverloadAnswers,
    retry_after_s=1,
    shed_paths=["/classify"],
    shed_message=(
        "overloaded: adaptive batching predicted this request would wait longer than "
        f"CLASSIFIER_MAX_LATENCY_MS ({SETTINGS.max_latency_ms} ms) and shed it; retry later"
    ),
)
# A bad upload is one WARNING line, not an ERROR with a traceback.
quiet_client_errors()
# Uploads: files only, large requests decoded off the event loop, malformed requests a 400
# (models/serving.py).
install_request_parsing(ImageClassifier.apis["classify"])
