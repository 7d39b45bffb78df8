"""The service's settings: ``CLASSIFIER_*`` environment variables and ``configuration.yaml``.

Every setting has one home, its ``Field`` here; the README's configuration table is generated
from these descriptions (``python -m devtools.settings_table``), and a test keeps it in sync.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from models.compiling import CompileMode, compile_unavailable_reason
from models.image_io import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS

ENV_PREFIX = "CLASSIFIER_"
SERVICE_NAME = "image_classifier"
# Default largest batches. CPU: per-image throughput peaks around batch 8-16 and falls beyond
# (caches), 16 narrowly ahead of 8. CUDA: large batches keep the GPU busy. Figures:
# docs/performance.md, "Batch size".
CPU_MAX_BATCH_SIZE = 16
CUDA_MAX_BATCH_SIZE = 32
MIN_API_KEY_LENGTH = 16
# Two images at the per-image limit: large PNGs decode slowly, so this keeps a request within a
# few seconds of CPU, where 64 such images would fit in one small request without a request
# budget. Figures: docs/performance.md, "Decode cost of a large PNG".
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS


def packaged_model_tag(environ: Mapping[str, str]) -> str | None:
    """Inside a containerized Bento (``BENTO_PATH``), the tag of the one model packaged with it.

    The image does not carry the tag in an environment variable: BentoML writes ENV lines at the
    top of its Dockerfile, so a new model would rebuild every layer (serving/image.py).
    """
    bento_path = environ.get("BENTO_PATH")
    manifest = Path(bento_path, "bento.yaml") if bento_path else None
    if manifest is None or not manifest.is_file():
        return None
    services = yaml.safe_load(manifest.read_text()).get("services") or []
    tags = {model["tag"] for service in services for model in service.get("models") or []}
    return tags.pop() if len(tags) == 1 else None


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
    model_uri: str | None = Field(
        None,
        description="an MLflow model to serve instead (models:/Name@alias, models:/Name/3 or "
        "runs:/ID/path): imported from MLFLOW_TRACKING_URI into the BentoML store before the "
        "server reports ready (as image-classifier-registry); overrides CLASSIFIER_MODEL_TAG",
    )
    model_fetch_timeout_s: float = Field(
        180.0,
        gt=0,
        description="how long CLASSIFIER_MODEL_URI retries an unreachable "
        "registry or a missing alias before the server exits non-zero",
    )
    mlflow_password_file: Path | None = Field(
        None,
        description="a file holding MLFLOW_TRACKING_PASSWORD (a compose or Kubernetes "
        "secret), read when CLASSIFIER_MODEL_URI is set and that variable is not",
    )
    device: str = Field("auto", description="auto, cuda or cpu")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="forward-pass precision; auto: bf16/fp16 autocast on CUDA, bf16 on CPUs "
        "with native bf16 (AVX512-BF16/AMX), fp32 elsewhere",
    )
    compile_mode: CompileMode = Field(
        "off",
        description="CUDA only: torch.compile the model for the warm-up batch sizes "
        "(reduce-overhead or max-autotune: CUDA graphs; longer start-up) and pad each batch "
        "to the next of them; on a CPU it is logged and ignored (docs/performance.md)",
    )
    batching: bool = Field(
        True, description="adaptive batching; off: each request's images form their own batch"
    )
    max_batch_size: int | None = Field(
        None,
        ge=2,
        description=f"adaptive batching: largest batch; default {CPU_MAX_BATCH_SIZE} on CPU "
        f"(larger batches are slower per image there), {CUDA_MAX_BATCH_SIZE} on CUDA",
    )
    max_latency_ms: int = Field(
        10_000,
        ge=1,
        description="adaptive batching: requests predicted to wait longer are shed "
        "with 503; generous so a 2-core CPU does not shed at modest concurrency",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="reject images with more pixels than this"
    )
    max_aspect_ratio: float = Field(
        DEFAULT_MAX_ASPECT_RATIO,
        ge=1,
        description="reject images more elongated than this (long side / short side)",
    )
    max_images_per_request: int = Field(
        64, ge=1, description="reject requests with more images than this (400)"
    )
    max_request_pixels: int = Field(
        DEFAULT_MAX_REQUEST_PIXELS,
        ge=1,
        description="reject requests whose images together decode to more pixels than this "
        "(400), read from the headers before any is decoded; large JPEGs count at their "
        "reduced decode size",
    )
    decode_cpu_budget_s: float = Field(
        10.0,
        gt=0,
        description="CPU seconds one request's images may take to decode and resize; checked "
        "between images, over it the request gets 400",
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="reject request bodies larger than this (413), before reading them",
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request body that stops arriving for this many seconds gets 408, "
        "which frees its concurrency slot (a stalled upload would otherwise hold it until "
        "traffic.timeout)",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated API keys; when set, every endpoint but health, metrics "
        "and the API docs needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (401)",
    )
    reduced_jpeg_decode: bool = Field(
        True,
        description="decode large JPEGs at 1/2, 1/4 or 1/8 scale when still >= the model's "
        "resize size (faster; see docs/performance.md for the agreement with a full decode)",
    )
    decode_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="threads per worker that decode requests' uploads (each request on one "
        "thread, never on the event loop); more let requests decode in parallel on more cores",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch intra-op threads per worker; default: the cores this process may "
        "use (its CPU affinity, capped by a container's CPU quota) divided by the service's "
        "workers, at least 1, so that workers do not oversubscribe the cores",
    )
    jpeg_decoder: Literal["auto", "pil", "torchvision"] = Field(
        "auto",
        description="who decodes JPEG uploads: pil (one at a time, reduced-size DCT decode); "
        "torchvision (each request's JPEGs in one batched call on the model's device, nvjpeg "
        "on CUDA, resized there; other formats and failures via PIL); auto: torchvision on "
        "CUDA, pil on CPU (faster there)",
    )

    def batch_size_limit(self) -> int:
        """``max_batch_size``, or the default for the device the service will run on."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        import torch

        on_cuda = self.device != "cpu" and torch.cuda.is_available()
        return CUDA_MAX_BATCH_SIZE if on_cuda else CPU_MAX_BATCH_SIZE

    def batching_options(self) -> dict[str, Any]:
        """The ``@bentoml.api`` arguments of the batchable API."""
        return {
            "batchable": self.batching,
            "max_batch_size": self.batch_size_limit(),
            "max_latency_ms": self.max_latency_ms,
        }

    @field_validator("model_uri", "mlflow_password_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # compose passes "" for a variable .env leaves unset
        if info.field_name == "model_uri" and not str(value).startswith(("models:/", "runs:/")):
            raise ValueError("use models:/Name@alias, models:/Name/<version> or runs:/<id>/<path>")
        return value

    @field_validator("compile_mode")
    @classmethod
    def _compile_mode_can_run(cls, value: str) -> str:
        # At start-up, before any worker: the image has no triton (serving/image.py).
        if reason := compile_unavailable_reason(value):
            raise ValueError(reason)
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_usable(cls, value: SecretStr | None) -> SecretStr | None:
        raw = value.get_secret_value() if value is not None else ""
        if not raw.strip():
            return None  # unset or empty (compose passes ""): authentication off
        keys = [key.strip() for key in raw.split(",")]
        if any(len(key) < MIN_API_KEY_LENGTH for key in keys):
            # Also catches "," or "key,": a typo must not silently turn authentication off.
            raise ValueError(
                f"every key must have at least {MIN_API_KEY_LENGTH} characters "
                "(e.g. `openssl rand -hex 16`); empty entries are not allowed"
            )
        return value

    def api_key_list(self) -> list[str]:
        if self.api_keys is None:
            return []
        return [key.strip() for key in self.api_keys.get_secret_value().split(",")]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingSettings:
        """Read ``CLASSIFIER_*``; a bad value raises ``ValueError`` naming the variable.

        Without ``CLASSIFIER_MODEL_TAG``, a containerized Bento serves the model packaged in it.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = f"{ENV_PREFIX}{name.upper()}"
            if key in environ:
                values[name] = environ[key]
        if "model_tag" not in values and (packaged := packaged_model_tag(environ)):
            values["model_tag"] = packaged
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: {error['msg']}"
                if error["loc"]
                else error["msg"]
                for error in exc.errors()
            )
            raise ValueError(f"invalid serving configuration: {problems}") from None
