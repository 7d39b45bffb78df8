"""The one adapter to BentoML internals: how ``/classify`` reads its requests.

BentoML parses an API's body through its input model's ``from_http_request``; this module
replaces that model with a subclass (same fields, same OpenAPI schema) whose parser accepts
multipart files only and decodes them with the service's :class:`RequestDecoder`, and that hands
the API each image with its request's options (``serving/options.py``). Its refusals are problem
details (``serving/problems.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Annotated, Any, NoReturn

from PIL import Image
from pydantic import BeforeValidator

from models.image_io import from_pil, load_image

from .decoding import DecodedImage, RequestDecoder, check_image_count
from .options import ClassifyItem, OptionError, OptionRules, Threshold, TopK, parse_options
from .problems import STATE_KEY, FieldError, Problem, problem_details
from .settings import ServingSettings

MULTIPART = "multipart/form-data"
__all__ = ["Threshold", "TopK", "UploadedImage", "UploadedImages", "install_request_parsing"]


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


def install_request_parsing(
    method: Any,
    *,
    decoder_of: Callable[[], RequestDecoder],
    rules_of: Callable[[], OptionRules] | None = None,
) -> None:
    """Parse this API's requests ourselves: multipart files only, decoded off the event loop
    under the request's budgets, and every malformed request a 4xx problem
    (``serving/problems.py``).

    ``method`` is a BentoML API method (``Service.apis[name]``); ``decoder_of`` returns the
    decoder of the serving instance (called per request, so it is created with the model, in
    the worker), ``rules_of`` the options its model allows. The parser refuses, before reading
    the body: any content type but ``multipart/form-data`` (415; BentoML would parse a
    urlencoded body as multipart and fetch every value as a URL, server-side). Then it reads
    the form and refuses: a malformed body; fields other than the model's; text values in file
    fields; too many or no images (400); options out of range (422). The images are decoded by
    :meth:`RequestDecoder.decode_off_the_loop`.

    The API is then called with each file field as a list of :class:`ClassifyItem`, every image
    with its request's options (the API's option parameters stay unset): a batchable API
    batches one argument, so the options travel inside it.
    """
    spec = method.input_spec
    file_fields = sorted(spec.multipart_fields)
    option_fields = sorted(name for name in spec.model_fields if name not in file_fields)
    expected = ", ".join(f"`{field}`" for field in file_fields)

    class ParsedInput(spec):  # type: ignore[misc, valid-type]
        @classmethod
        async def from_http_request(cls, request: Any, serde: Any) -> Any:
            try:
                data, values = await read_uploads(
                    request, file_fields=file_fields, expected=expected, option_fields=option_fields
                )
                options = parse_options(values)
                if rules_of is not None:
                    options = rules_of().check(options)
            except OptionError as exc:
                refuse(request, Problem.INVALID_OPTION, str(exc), errors=exc.errors)
            decoder = decoder_of()
            decoded: dict[str, list[DecodedImage]] = {}
            for name, uploads in data.items():
                try:
                    decoder.check_count(uploads)
                    decoded[name] = await decoder.decode_off_the_loop(uploads)
                except ValueError as exc:  # ImageDecodeError included
                    refuse_upload(request, field=name, error=exc)
            return ParsedFields(
                {
                    name: [ClassifyItem(image.image, options) for image in images]
                    for name, images in decoded.items()
                }
            )

    ParsedInput.__name__ = ParsedInput.__qualname__ = spec.__name__
    method.input_spec = ParsedInput


class ParsedFields:
    """A parsed request as BentoML's API endpoint reads it: it calls the API with
    ``{name: getattr(parsed, name) for name in parsed.model_fields}``."""

    def __init__(self, fields: dict[str, list[ClassifyItem]]) -> None:
        self.model_fields = tuple(fields)
        self.__dict__.update(fields)


def refuse(
    request: Any, problem: Problem, detail: str, *, errors: list[FieldError] | None = None
) -> NoReturn:
    """Answer ``problem``: recorded in the request's state for ``ProblemAnswers`` (the field
    errors included), raised as the BentoML error that gives its status."""
    from bentoml.exceptions import BentoMLException

    details = problem_details(problem, detail, errors=errors)
    request.scope.setdefault("state", {})[STATE_KEY] = details
    raise BentoMLException(detail, error_code=HTTPStatus(details.status)) from None


def refuse_upload(request: Any, *, field: str, error: ValueError) -> NoReturn:
    """A 400 for uploads that cannot be classified: the file at fault, if one is."""
    file = getattr(error, "file", None)
    reason = getattr(error, "reason", None) or str(error)
    refuse(
        request,
        Problem.INVALID_IMAGE if file else Problem.INVALID_REQUEST,
        str(error),
        errors=[FieldError(field=field, file=file, reason=reason)],
    )


async def read_uploads(
    request: Any, *, file_fields: list[str], expected: str, option_fields: Sequence[str] = ()
) -> tuple[dict[str, list], dict[str, str]]:
    """The request's files by field and its option values, or a 4xx problem."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    _require_multipart(request, expected)
    try:
        form = await request.form()
    except UnicodeDecodeError:
        refuse(
            request,
            Problem.INVALID_REQUEST,
            "malformed request: binary data where text was expected",
        )
    except (MultiPartException, HTTPException) as exc:
        reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
        refuse(request, Problem.INVALID_REQUEST, f"malformed request: {reason}")
    data: dict[str, list] = {field: [] for field in file_fields}
    values: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in option_fields:
            if isinstance(value, UploadFile) or name in values:
                refuse(
                    request,
                    Problem.INVALID_OPTION,
                    f"`{name}` must be given once, as a form value",
                    errors=[FieldError(field=name, reason="must be given once, as a form value")],
                )
            values[name] = value
            continue
        if name not in data:
            accepted = ", ".join([expected, *(f"`{option}`" for option in option_fields)])
            refuse(
                request,
                Problem.INVALID_REQUEST,
                f"unexpected field `{name}`: send the images as files in {expected}"
                + (f" (fields accepted: {accepted})" if option_fields else ""),
                errors=[FieldError(field=name, reason="unexpected field")],
            )
        if not isinstance(value, UploadFile):
            refuse(
                request,
                Problem.INVALID_REQUEST,
                f"`{name}` must hold uploaded files, not text (URLs are not fetched)",
                errors=[FieldError(field=name, reason="must hold uploaded files, not text")],
            )
        data[name].append(value)
    return data, values


def _require_multipart(request: Any, expected: str) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != MULTIPART:
        got = f"`{media_type}`" if media_type else "no content type"
        refuse(
            request,
            Problem.UNSUPPORTED_MEDIA_TYPE,
            f"send {MULTIPART} with the images as files in {expected} (for example "
            f"`curl -F images=@cat.jpg`); got {got}. URLs and text are not accepted.",
        )


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
