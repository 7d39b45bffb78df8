"""What the service class delegates to: start-up in a worker, the two APIs' bodies, and the
request-path protections wired around the class."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bentoml
import torch
from PIL import Image

from models.artifact import stored_artifact_dir

from .decoding import RequestDecoder
from .guard import RequestGuard
from .http_front import OverloadAnswers, quiet_client_errors
from .model_store import FIX_THE_MODEL, ServedModel, served_model
from .oip import OipErrors, install_oip
from .options import DEFAULT_OPTIONS, ClassifyItem, ClassifyOptions, OptionRules
from .parsing import fix_response_media_type, install_request_parsing
from .placement import torch_threads_per_worker, usable_cores, worker_slot
from .problem_answers import ProblemAnswers
from .runtime import Runtime, build_runtime
from .schemas import Classification, ModelMetadata, ModelRef, model_ref
from .settings import SERVICE_NAME, ServingSettings
from .telemetry import install as install_metrics
from .ui import UI_PATH, UIFiles

logger = logging.getLogger("bentoml.image_classifier")


@dataclass
class ServedClassifier:
    """One worker's loaded model and what it answers."""

    settings: ServingSettings
    runtime: Runtime
    model: ModelRef
    training_metrics: dict[str, float]

    @property
    def decoder(self) -> RequestDecoder:
        return self.runtime.decoder

    @classmethod
    def start(
        cls,
        settings: ServingSettings,
        served_model: ServedModel,
        *,
        service_config: dict[str, Any],
    ) -> ServedClassifier:
        """Load, warm up and publish the model; never come up with a broken one."""
        stored = served_model.check()  # once: everything below describes this one model
        model = model_ref(str(stored.tag), stored.info.labels)
        namespace = service_config.get("metrics", {}).get("namespace", SERVICE_NAME)
        metrics = install_metrics(namespace, model_info_labels=_MODEL_INFO_LABELS)
        effective = effective_service_config(service_config)
        try:
            runtime = build_runtime(
                settings,
                stored_artifact_dir(stored.path),
                metrics=metrics,
                worker=worker_slot(effective, worker_index=bentoml.server_context.worker_index),
                torch_threads=settings.torch_threads
                or torch_threads_per_worker(effective, usable_cores=usable_cores()),
            )
        except Exception as exc:
            raise RuntimeError(
                f"model {model.tag} in the BentoML store ({stored.path}) could not be loaded: "
                f"{type(exc).__name__}: {exc}. {FIX_THE_MODEL}"
            ) from exc
        predictor = runtime.predictor
        metrics.publish_model_info(
            {
                "model_tag": model.tag,
                "mlflow_model": model.mlflow_registered_name,
                "mlflow_version": model.mlflow_version,
                "mlflow_run_id": model.mlflow_run_id,
                "architecture": predictor.spec.architecture,
                "task": predictor.spec.task.value,
                "device": predictor.plan.device.type,
            }
        )
        quiet_client_errors()  # a bad upload is one WARNING line, not an ERROR with a traceback
        logger.info(
            "Serving %s (MLflow %s v%s) on %s",
            model.tag,
            model.mlflow_registered_name or "-",
            model.mlflow_version or "-",
            predictor.plan.describe(),
        )
        return cls(
            settings=settings,
            runtime=runtime,
            model=model,
            training_metrics=dict(stored.info.metadata.get("metrics", {})),
        )

    def close(self) -> None:
        self.runtime.close()

    @property
    def option_rules(self) -> OptionRules:
        return OptionRules.of(self.runtime.predictor.spec)

    async def classify(
        self,
        images: Sequence[ClassifyItem | Image.Image | torch.Tensor],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> list[Classification]:
        """Classify a batch: items from the request parser, each with its request's options,
        or images (an in-process call) with ``top_k`` and ``threshold`` for all of them."""
        given = self.option_rules.check(ClassifyOptions(top_k=top_k, threshold=threshold))
        items = [
            image if isinstance(image, ClassifyItem) else ClassifyItem(image, given)
            for image in images
        ]
        options = [item.options for item in items]
        plain = all(chosen == DEFAULT_OPTIONS for chosen in options)
        results = await self.runtime.classify(
            [item.image for item in items], None if plain else options
        )
        return [Classification(labels=labels, model=self.model) for labels in results]

    def metadata(self) -> ModelMetadata:
        spec = self.runtime.predictor.spec
        return ModelMetadata(
            model=self.model,
            architecture=spec.architecture,
            task=spec.task.value,
            labels=list(spec.labels),
            top_k=spec.top_k,
            threshold=spec.threshold,
            class_thresholds=spec.class_thresholds,
            preprocessing=spec.preprocessing.model_dump(mode="json"),
            device=self.runtime.predictor.plan.describe(),
            metrics=self.training_metrics,
            max_batch_size=self.runtime.max_batch_size,
            max_latency_ms=self.settings.max_latency_ms,
        )


_MODEL_INFO_LABELS = (
    "model_tag",
    "mlflow_model",
    "mlflow_version",
    "mlflow_run_id",
    "architecture",
    "task",
    "device",
)


def effective_service_config(service_config: dict[str, Any]) -> dict[str, Any]:
    """This service's BentoML configuration as BentoML resolved it: ``configuration.yaml``
    (``service_config``) with ``BENTOML_CONFIG_OPTIONS`` / ``BENTOML_CONFIG`` applied, which is
    where ``workers`` may have been overridden. Outside a served worker, ``service_config``."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    try:
        resolved = BentoMLContainer.config.services[SERVICE_NAME].get()
    except (KeyError, AttributeError, TypeError):
        return service_config
    return dict(resolved) if isinstance(resolved, dict) and resolved else service_config


def current_decoder() -> RequestDecoder:
    """The request decoder of this worker's service instance (BentoML creates one per worker)."""
    return bentoml.get_current_service().served.decoder


def current_option_rules() -> OptionRules:
    """The options this worker's model allows (``top_k`` up to its labels, ``threshold`` if
    multi-label)."""
    return bentoml.get_current_service().served.option_rules


def current_served() -> ServedClassifier | None:
    """This worker's loaded model, or None before the service instance exists."""
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.get_current_service().served
    except (BentoMLException, AttributeError):
        return None


def protect(
    service: Any,
    *,
    settings: ServingSettings,
    decoder_of: Callable[[], RequestDecoder],
    rules_of: Callable[[], OptionRules] = current_option_rules,
) -> None:
    """Wire the request-path protections around a decorated service class.

    - ``RequestGuard`` (ASGI): API keys and the body limit, checked before a body is read, and
      the body read timeout (``serving/guard.py``).
    - ``OverloadAnswers`` (front, outside BentoML's metrics and limiter): Retry-After on
      429/503, and a 503 body that says the batcher shed the request; unknown paths fold into
      one metrics label (``serving/http_front.py``).
    - ``/classify`` parses its own requests: files only, decoded off the event loop by the
      worker's decoder, malformed requests a 4xx, options checked against the model
      (``serving/parsing.py``).
    - ``ProblemAnswers`` (front): every error answer, BentoML's and Starlette's included, is
      RFC 9457 problem details (``serving/problems.py``).
    - The Open Inference Protocol v2 routes (``/v2/...``, ``serving/oip.py``), behind the
      same guard and through ``/classify``'s batcher; ``OipErrors`` (front, outermost) adds
      the ``error`` member Triton's client reads to their error answers.
    - The page to try the model at ``/ui``, mounted with BentoML's ``asgi_app`` decorator (here
      rather than on the class, which keeps service.py to a screen); the guard leaves it open
      (``serving/ui.py``).
    """
    model_name = served_model(settings).tag.name  # the OIP's {model}: the served model's name
    bentoml.asgi_app(UIFiles(), path=UI_PATH)(service)
    service.add_front_middleware(OipErrors, model_name=model_name)
    service.add_front_middleware(ProblemAnswers)
    service.add_asgi_middleware(
        RequestGuard,
        api_keys=settings.api_key_list(),
        max_body_bytes=settings.max_request_bytes,
        body_read_timeout_s=settings.body_read_timeout_s,
    )
    service.add_front_middleware(
        OverloadAnswers,
        retry_after_s=1,
        shed_paths=["/classify"],
        shed_message=(
            "overloaded: adaptive batching predicted this request would wait longer than "
            f"CLASSIFIER_MAX_LATENCY_MS ({settings.max_latency_ms} ms) and shed it; retry later"
        ),
    )
    install_request_parsing(service.apis["classify"], decoder_of=decoder_of, rules_of=rules_of)
    install_oip(service, model_name=model_name, served_of=current_served, api="classify")
    for method in service.apis.values():
        fix_response_media_type(method)
