"""The one adapter to BentoML internals: how ``/classify`` reads its requests.

BentoML parses an API's body through its input model's ``from_http_request``; this module
replaces that model with a subclass (same fields, same OpenAPI schema) whose parser accepts
multipart files only and decodes them with the service's :class:`RequestDecoder`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any

from PIL import Image
from pydantic import BeforeValidator

from models.image_io import from_pil, load_image

from .decoding import DecodedImage, RequestDecoder, check_image_count
from .settings import ServingSettings

MULTIPART = "multipart/form-data"


def _decoded_image(value: Any) -> Image.Image:
    """Request validation of one image. Uploads arrive decoded by the parser below and pass
    through. Values given in-process (BentoML's clients validate on the caller's side, and
    dependent services call in-process) get an upload's checks here, against the default
    limits: the configured ones belong to the server, which applies them to every request."""
    if isinstance(value, DecodedImage):
        return value.image
    if isinstance(value, Image.Image):
        return from_pil(value)
    if isinstance(value, bytes | bytearray):
        return load_image(bytes(value))
    raise ValueError(f"expected an uploaded image file, got {type(value).__name__}")


_DEFAULT_MAX_IMAGES = ServingSettings.model_fields["max_images_per_request"].default


def _image_count(value: Any) -> Any:
    """An empty request, or one over the default image count, is refused before decoding."""
    if isinstance(value, list | tuple):
        check_image_count(len(value), limit=_DEFAULT_MAX_IMAGES)
    return value


UploadedImage = Annotated[Image.Image, BeforeValidator(_decoded_image)]
UploadedImages = Annotated[list[UploadedImage], BeforeValidator(_image_count)]


def install_request_parsing(method: Any, *, decoder_of: Callable[[], RequestDecoder]) -> None:
    """Parse this API's requests ourselves: multipart files only, decoded off the event loop
    under the request's budgets, and every malformed request a 4xx.

    ``method`` is a BentoML API method (``Service.apis[name]``); ``decoder_of`` returns the
    decoder of the serving instance (called per request, so it is created with the model, in
    the worker). The parser refuses, before reading the body: any content type but
    ``multipart/form-data`` (415; BentoML would parse a urlencoded body as multipart and fetch
    every value as a URL, server-side). Then it reads the form and refuses: a malformed body;
    fields other than the model's; text values in file fields; too many or no images. The
    images are decoded by :meth:`RequestDecoder.decode_off_the_loop`.
    """
    from bentoml.exceptions import BadInput

    spec = method.input_spec
    file_fields = sorted(spec.multipart_fields)
    expected = ", ".join(f"`{field}`" for field in file_fields)

    class ParsedInput(spec):  # type: ignore[misc, valid-type]
        @classmethod
        async def from_http_request(cls, request: Any, serde: Any) -> Any:
            data = await read_uploads(request, file_fields=file_fields, expected=expected)
            decoder = decoder_of()
            try:
                for uploads in data.values():
                    decoder.check_count(uploads)
                decoded = {
                    name: await decoder.decode_off_the_loop(uploads)
                    for name, uploads in data.items()
                }
            except ValueError as exc:  # ImageDecodeError included
                raise BadInput(str(exc)) from None
            return cls.model_validate(decoded)

    ParsedInput.__name__ = ParsedInput.__qualname__ = spec.__name__
    method.input_spec = ParsedInput


async def read_uploads(request: Any, *, file_fields: list[str], expected: str) -> dict[str, list]:
    """The request's files by field, or a 4xx (BentoML's ``BadInput`` or a 415)."""
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

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
            raise BadInput(f"`{name}` must hold uploaded files, not text (URLs are not fetched)")
        data[name].append(value)
    return data


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


def fix_response_media_type(method: Any) -> None:
    """Resolve the API's response media type once, instead of on every response.

    BentoML 1.4 answers ``output_spec.mime_type()`` for each response, which, for a root model
    without a declared ``media_type``, builds the output's whole JSON schema: half of a worker's
    event-loop time under load (docs/performance.md, "Where a request's CPU goes"). Declaring
    the type it resolves to gives the same answer without the work.
    """
    spec = method.output_spec
    if spec.media_type is None:
        spec.media_type = spec.mime_type()
