"""The serving contract: runtime settings, request decoding and response schemas.

``service.py`` wires these into BentoML; keeping them here makes them importable (and testable)
without starting a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from PIL import Image, ImageOps
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from . import telemetry
from .labels import LabelScore
from .preprocessing import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_PIXELS,
    EvalPreprocessing,
    ImageDecodeError,
    check_pixel_limit,
    finish_decode,
    load_image,
    open_image,
    to_rgb,
)

ENV_PREFIX = "CLASSIFIER_"
SERVICE_NAME = "image_classifier"
# Default largest batches. CPU: per-image throughput peaks around batch 8-16 and falls beyond
# (caches); served at C=32, 16 beat 8 by ~7% in 2 A/B rounds, within run-to-run drift
# (docs/performance.md). CUDA: large batches keep the GPU busy (not measured here).
CPU_MAX_BATCH_SIZE = 16
CUDA_MAX_BATCH_SIZE = 32
MIN_API_KEY_LENGTH = 16
# Two images at the per-image limit. A large PNG decodes at ~40 ns a pixel on the build machine
# (a 48-megapixel one took 1.9 s), so a request stays within a few seconds of CPU; without a
# request budget, 64 such images fit in one 10 MB request.
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS


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
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="forward-pass precision; auto: bf16/fp16 autocast on CUDA, bf16 on CPUs "
        "with native bf16 (AVX512-BF16/AMX), fp32 elsewhere",
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

    def batch_size_limit(self) -> int:
        """``max_batch_size``, or the default for the device the service will run on."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        import torch

        on_cuda = self.device != "cpu" and torch.cuda.is_available()
        return CUDA_MAX_BATCH_SIZE if on_cuda else CPU_MAX_BATCH_SIZE

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
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        """Read ``CLASSIFIER_*``; a bad value raises ``ValueError`` naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = f"{ENV_PREFIX}{name.upper()}"
            if key in environ:
                values[name] = environ[key]
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


def warmup_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size`` (and it): the shapes adaptive batching will form
    most, so the first requests do not pay for kernel selection (oneDNN/cuDNN) at each shape."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return tuple(dict.fromkeys([*sizes, max_batch_size]))


@dataclass
class RequestDecoding:
    """How uploads are decoded; the service sets it once its model is loaded."""

    max_pixels: int
    max_aspect_ratio: float
    max_images: int
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    cpu_budget_s: float = 10.0
    min_size: int | None = None  # reduced-size JPEG decode down to this (None: full decode)
    preprocessing: EvalPreprocessing | None = None  # resize/crop each image at request time

    @classmethod
    def from_settings(
        cls, settings: ServingSettings, preprocessing: EvalPreprocessing | None = None
    ) -> RequestDecoding:
        reduced = preprocessing is not None and settings.reduced_jpeg_decode
        return cls(
            max_pixels=settings.max_image_pixels,
            max_aspect_ratio=settings.max_aspect_ratio,
            max_images=settings.max_images_per_request,
            max_request_pixels=settings.max_request_pixels,
            cpu_budget_s=settings.decode_cpu_budget_s,
            min_size=preprocessing.config.resize_size if reduced else None,
            preprocessing=preprocessing,
        )


_REQUEST_DECODING: RequestDecoding | None = None


def configure_request_decoding(settings: ServingSettings, preprocessing: EvalPreprocessing) -> None:
    """Decode and resize/crop uploads for the loaded model, while each request is parsed.

    That work then runs on the decode thread while the previous batch's forward pass runs in its
    own, instead of serially inside the batch.
    """
    global _REQUEST_DECODING
    _REQUEST_DECODING = RequestDecoding.from_settings(settings, preprocessing)


@functools.cache
def _decoding_from_env() -> RequestDecoding:
    return RequestDecoding.from_settings(ServingSettings.from_env())


def _current_decoding() -> RequestDecoding:
    return _REQUEST_DECODING or _decoding_from_env()


class RequestAbandonedError(Exception):
    """The request timed out (504) while its images were being decoded."""


@dataclass(frozen=True)
class DecodedImage:
    """An upload already decoded (and prepared) by :func:`decode_uploads`. Only server code can
    build one, so request validation passes it through instead of decoding it again."""

    image: Image.Image


def decode_uploads(
    uploads: list[Any],
    decoding: RequestDecoding | None = None,
    abandoned: threading.Event | None = None,
) -> list[DecodedImage]:
    """Decode one request's uploads under its budgets, or raise ``ImageDecodeError`` (a 400).

    Two passes, one image open at a time. First every header is read (accepted formats only),
    each image checked against the per-image limits and all of them against
    ``max_request_pixels``, so a request over budget costs no decoding. Then each image is
    opened again, decoded, resized and closed. Before each open the request's CPU time
    (``cpu_budget_s``) and ``abandoned`` (set when the request timed out) are checked. Meant
    for the decode thread: CPU time is this thread's.
    """
    decoding = decoding or _current_decoding()
    started = time.thread_time()
    files = [(_safe_name(upload), _upload_bytes(upload)) for upload in uploads]
    pixels = 0
    for name, data in files:
        _check_budget(started, decoding.cpu_budget_s, abandoned)
        with _named(name), _open(data, decoding) as image:
            pixels += image.width * image.height
    _check_request_pixels(len(files), pixels, decoding.max_request_pixels)
    decoded = []
    for name, data in files:
        _check_budget(started, decoding.cpu_budget_s, abandoned)
        with telemetry.time_decode(), _named(name), _open(data, decoding) as image:
            result = finish_decode(image)
            if decoding.preprocessing is not None:
                result = decoding.preprocessing.prepare(result)
        decoded.append(DecodedImage(result))
    return decoded


def _open(data: bytes, decoding: RequestDecoding) -> Image.Image:
    return open_image(
        data,
        max_pixels=decoding.max_pixels,
        min_size=decoding.min_size,
        max_aspect_ratio=decoding.max_aspect_ratio,
    )


def _safe_name(upload: Any) -> str | None:
    """The upload's file name, with control characters escaped: it goes into errors and logs."""
    name = getattr(upload, "filename", None)
    if name is None:
        return None
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def _upload_bytes(upload: Any) -> bytes:
    raw = upload.file.read() if hasattr(upload, "file") else upload
    if hasattr(raw, "read"):
        raw = raw.read()
    if not isinstance(raw, bytes | bytearray):
        raise ImageDecodeError(f"expected an image file upload, got {type(upload).__name__}")
    return bytes(raw)


@contextlib.contextmanager
def _named(name: str | None) -> Iterator[None]:
    """Prefix decoding errors with the file's name, so the client knows which one failed."""
    try:
        yield
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name}: {exc}" if name else str(exc)) from None


def _check_request_pixels(images: int, pixels: int, limit: int) -> None:
    if pixels > limit:
        raise ImageDecodeError(
            f"{images} images of {pixels} pixels in all, over the limit of {limit} per "
            "request (CLASSIFIER_MAX_REQUEST_PIXELS): send fewer or smaller images per request"
        )


def _check_budget(started: float, budget_s: float, abandoned: threading.Event | None) -> None:
    if abandoned is not None and abandoned.is_set():
        raise RequestAbandonedError("request abandoned while its images were being decoded")
    used = time.thread_time() - started
    if used > budget_s:
        raise ImageDecodeError(
            f"decoding this request's images took {used:.1f} s of CPU, over the budget of "
            f"{budget_s:g} s (CLASSIFIER_DECODE_CPU_BUDGET_S): send fewer or smaller images"
        )


def decode_upload(value: Any, max_pixels: int | None = None) -> Image.Image:
    """Turn one image into a fully decoded RGB image, or raise ``ValueError``.

    What request validation runs for each image: uploads parsed by :func:`install_request_parsing`
    arrive decoded (:class:`DecodedImage`) and pass through; anything else (in-process callers'
    PIL images, bytes) is decoded here under the same limits. Once the service has called
    :func:`configure_request_decoding`, large JPEGs decode at reduced size and the image comes
    back already resized and cropped to the model's input.
    """
    if isinstance(value, DecodedImage):
        return value.image
    decoding = _current_decoding()
    with telemetry.time_decode():
        image = _decode(
            value, max_pixels or decoding.max_pixels, decoding.max_aspect_ratio, decoding.min_size
        )
        if decoding.preprocessing is not None:
            image = decoding.preprocessing.prepare(image)
        return image


def _decode(
    value: Any, max_pixels: int, max_aspect_ratio: float, min_size: int | None
) -> Image.Image:
    if isinstance(value, Image.Image):
        # In-process callers: same checks and EXIF handling as an upload, decoded now.
        check_pixel_limit(value.width, value.height, max_pixels, max_aspect_ratio)
        try:
            return to_rgb(ImageOps.exif_transpose(value))
        except Exception as exc:
            raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    with _named(_safe_name(value)):
        return load_image(
            _upload_bytes(value),
            max_pixels=max_pixels,
            min_size=min_size,
            max_aspect_ratio=max_aspect_ratio,
        )


UploadedImage = Annotated[Image.Image, BeforeValidator(decode_upload)]


def check_image_count(value: Any) -> Any:
    """Refuse an empty request, or one with more images than configured, before decoding any."""
    if isinstance(value, list | tuple):
        limit = _current_decoding().max_images
        if not value:
            raise ValueError("no images: send at least one file in the `images` field")
        if len(value) > limit:
            raise ValueError(f"{len(value)} images in one request, over the limit of {limit}")
    return value


UploadedImages = Annotated[list[UploadedImage], BeforeValidator(check_image_count)]


# Every request's images are decoded (and resized) on this one thread, never on the event loop:
# no upload, however its header misleads, can stall health checks, 429s or the 504 timer while
# it decodes (Pillow's codecs release the GIL). One thread keeps decoding serial, as the loop
# did, so it does not crowd out the forward pass on small CPUs. The handoff costs a small
# request a few milliseconds (docs/reliability.md).
_DECODE_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")

MULTIPART = "multipart/form-data"


async def _decode_off_the_loop(uploads: list[Any]) -> list[DecodedImage]:
    abandoned = threading.Event()
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            _DECODE_EXECUTOR, functools.partial(decode_uploads, uploads, abandoned=abandoned)
        )
    except asyncio.CancelledError:
        abandoned.set()  # timed out (504): stop before the next image
        raise


def install_request_parsing(method: Any) -> None:
    """Parse this API's requests ourselves: multipart files only, decoded off the event loop
    under the request's budgets, and every malformed request a 4xx.

    ``method`` is a BentoML API method (``Service.apis[name]``); its input model is replaced by a
    subclass (same fields and schema). It refuses, before reading the body: any content type but
    ``multipart/form-data`` (415; BentoML would parse a urlencoded body as multipart and fetch
    every value as a URL, server-side). Then it reads the form and refuses: a malformed body;
    fields other than the model's; text values in file fields; too many or no images. The
    images are decoded on :data:`_DECODE_EXECUTOR` (:func:`decode_uploads`).
    """
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    spec = method.input_spec
    file_fields = sorted(spec.multipart_fields)
    expected = ", ".join(f"`{field}`" for field in file_fields)

    async def read_uploads(request: Any) -> dict[str, list]:
        _require_multipart(request.headers.get("content-type", ""), expected)
        try:
            form = await request.form()
        except UnicodeDecodeError:
            raise BadInput("malformed request: binary data where text was expected") from None
        except (MultiPartException, HTTPException) as exc:
            reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
            raise BadInput(f"malformed request: {reason}") from None
        data: dict[str, list] = {field: [] for field in file_fields}
        for name, value in form.multi_items():
            if name not in data:
                raise BadInput(f"unexpected field `{name}`: send the images as files in {expected}")
            if not isinstance(value, UploadFile):
                raise BadInput(
                    f"`{name}` must hold uploaded files, not text (URLs are not fetched)"
                )
            data[name].append(value)
        return data

    class ParsedInput(spec):  # type: ignore[misc, valid-type]
        @classmethod
        async def from_http_request(cls, request: Any, serde: Any) -> Any:
            data = await read_uploads(request)
            try:
                for uploads in data.values():
                    check_image_count(uploads)
                decoded = {
                    name: await _decode_off_the_loop(uploads) for name, uploads in data.items()
                }
            except ValueError as exc:  # ImageDecodeError included
                raise BadInput(str(exc)) from None
            return cls.model_validate(decoded)

    ParsedInput.__name__ = ParsedInput.__qualname__ = spec.__name__
    method.input_spec = ParsedInput


def _require_multipart(content_type: str, expected: str) -> None:
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != MULTIPART:
        got = f"`{media_type}`" if media_type else "no content type"
        raise _unsupported_media_type()(
            f"send {MULTIPART} with the images as files in {expected} (for example "
            f"`curl -F images=@cat.jpg`); got {got}. URLs and text are not accepted."
        )


@functools.cache
def _unsupported_media_type() -> type[Exception]:
    """BentoML's error type for 415 (it answers ``{"error": message}`` with the status)."""
    from bentoml.exceptions import BentoMLException

    class UnsupportedMediaType(BentoMLException):
        error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE

    return UnsupportedMediaType


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
