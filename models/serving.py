"""The serving contract: runtime settings, request decoding and response schemas.

``service.py`` wires these into BentoML; keeping them here makes them importable (and testable)
without starting a server.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from PIL import Image, ImageOps
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from . import telemetry
from .labels import LabelScore
from .preprocessing import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    check_pixel_limit,
    load_image,
)

ENV_PREFIX = "CLASSIFIER_"
SERVICE_NAME = "image_classifier"


def load_service_config(path: Path) -> dict[str, Any]:
    """This service's block of a BentoML configuration file (``services.image_classifier``).

    Passing it to ``@bentoml.service`` makes plain ``bentoml serve`` use ``configuration.yaml``;
    ``BENTOML_CONFIG`` / ``BENTOML_CONFIG_OPTIONS`` still override it.
    """
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    section = (document.get("services") or {}).get(SERVICE_NAME)
    if section is not None and not isinstance(section, dict):
        raise ValueError(f"{path}: services.{SERVICE_NAME} must be a mapping")
    return dict(section or {})


class ServingSettings(BaseModel):
    """Settings the service needs before BentoML's own configuration applies.

    Read from ``CLASSIFIER_*`` environment variables (e.g. ``CLASSIFIER_MODEL_TAG``); BentoML
    runtime settings (timeouts, workers, metrics) live in ``configuration.yaml``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_tag: str = Field(
        "image-classifier:latest", description="BentoML store tag of the model to serve"
    )
    device: str = Field("auto", description="auto, cuda or cpu")
    batching: bool = Field(
        True, description="adaptive batching; off: each request's images form their own batch"
    )
    max_batch_size: int = Field(32, ge=2, description="adaptive batching: largest batch")
    max_latency_ms: int = Field(
        10_000,
        ge=1,
        description="adaptive batching: requests predicted to wait longer are shed "
        "with 503; generous so a 2-core CPU does not shed at modest concurrency",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="reject images with more pixels than this"
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = f"{ENV_PREFIX}{name.upper()}"
            if key in environ:
                values[name] = environ[key]
        return cls.model_validate(values)


@functools.cache
def _configured_max_pixels() -> int:
    return ServingSettings.from_env().max_image_pixels


def decode_upload(value: Any, max_pixels: int | None = None) -> Image.Image:
    """Turn one uploaded file into a fully decoded RGB image, or raise ``ValueError``.

    Runs while BentoML validates each request, before batching: a bad image fails its own
    request with a 400 naming the problem and never reaches a batch shared with others.
    """
    with telemetry.time_decode():
        return _decode(value, max_pixels or _configured_max_pixels())


def _decode(value: Any, max_pixels: int) -> Image.Image:
    if isinstance(value, Image.Image):
        # In-process callers: same checks and EXIF handling as an upload, decoded now.
        check_pixel_limit(value.width, value.height, max_pixels)
        try:
            return ImageOps.exif_transpose(value).convert("RGB")
        except Exception as exc:
            raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    name = getattr(value, "filename", None)
    raw = value.file.read() if hasattr(value, "file") else value
    if hasattr(raw, "read"):
        raw = raw.read()
    if not isinstance(raw, bytes | bytearray):
        raise ImageDecodeError(f"expected an image file upload, got {type(value).__name__}")
    try:
        return load_image(bytes(raw), max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name}: {exc}" if name else str(exc)) from None


UploadedImage = Annotated[Image.Image, BeforeValidator(decode_upload)]


class ModelRef(BaseModel):
    """Which model produced a prediction: enough to find its MLflow training run."""

    tag: str = Field(description="BentoML model tag")
    mlflow_registered_name: str = ""
    mlflow_version: str = ""
    mlflow_run_id: str = ""


class Classification(BaseModel):
    """The result for one image."""

    labels: list[LabelScore] = Field(
        description="single-label: the top-k labels, best first; multi-label: every label whose "
        "score reaches its threshold, best first (may be empty)"
    )
    model: ModelRef


class ModelMetadata(BaseModel):
    """What is being served and how."""

    model: ModelRef
    architecture: str
    task: str
    labels: list[str]
    top_k: int
    threshold: float
    class_thresholds: dict[str, float]
    preprocessing: dict
    device: str
    metrics: dict[str, float] = Field(
        default_factory=dict, description="headline metrics of the training run"
    )
    max_batch_size: int
    max_latency_ms: int
