"""The service's one error model: RFC 9457 problem details (``application/problem+json``).

Every non-2xx answer of every endpoint is a :class:`ProblemDetails`: the guard and the shed
answer build theirs here, the request parser records its own (with the upload errors) in the
request's state, and :class:`serving.http_front.ProblemAnswers` rewrites whatever else answers an
error (BentoML, Starlette) into one. :class:`Problem` is the one home for the problem types;
docs/errors.md lists them and a test checks that list against this enum.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field

PROBLEM_JSON = "application/problem+json"
# Problem type URIs are identifiers (RFC 9457, 3.1.1): stable, and not fetched by clients.
TYPE_BASE = "https://image-classifier.dev/problems/"
# Where the parser leaves the problem it raised, for ProblemAnswers: a key of the request's
# ``scope["state"]`` dict, which every copy of the ASGI scope shares.
STATE_KEY = "image_classifier.problem"
MAX_DETAIL_CHARS = 2000


class Problem(Enum):
    """Every problem type the service answers with: (slug, HTTP status, title)."""

    INVALID_REQUEST = ("invalid-request", 400, "The request is malformed")
    INVALID_IMAGE = ("invalid-image", 400, "An uploaded image cannot be classified")
    UNAUTHORIZED = ("unauthorized", 401, "Missing or invalid API key")
    FORBIDDEN = ("forbidden", 403, "Not allowed")
    NOT_FOUND = ("not-found", 404, "No such endpoint")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed on this endpoint")
    BODY_TIMEOUT = ("body-timeout", 408, "The request body stalled or arrived too slowly")
    REQUEST_TOO_LARGE = ("request-too-large", 413, "The request body is over the size limit")
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported-media-type",
        415,
        "Send multipart/form-data with the images as files",
    )
    INVALID_OPTION = ("invalid-option", 422, "A request option is out of range")
    TOO_MANY_REQUESTS = ("too-many-requests", 429, "Too many requests in progress; retry later")
    INTERNAL_ERROR = ("internal-error", 500, "Internal server error")
    OVERLOADED = ("overloaded", 503, "The server is overloaded; retry later")
    TIMEOUT = ("timeout", 504, "The request took longer than the server's time limit")
    HTTP_ERROR = ("http-error", 0, "HTTP error")  # any other status: the status says it all

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug, self.status, self.title = slug, status, title

    @property
    def type_uri(self) -> str:
        return TYPE_BASE + self.slug

    @classmethod
    def for_status(cls, status: int) -> Problem:
        """The type of an error answered without a more specific one."""
        for problem in cls:  # the first of a status is its general type
            if problem.status == status:
                return problem
        return cls.HTTP_ERROR


class FieldError(BaseModel):
    """One thing wrong with one field of the request (an upload, or an option)."""

    field: str = Field(description="the form field, e.g. `images` or `top_k`")
    file: str | None = Field(
        default=None, description="the uploaded file's name, when the error is about one file"
    )
    reason: str = Field(description="what is wrong with it")


class ProblemDetails(BaseModel):
    """An error answer (RFC 9457, ``application/problem+json``); the types are in docs/errors.md."""

    type: str = Field(description=f"a stable URI naming the problem type ({TYPE_BASE}<slug>)")
    title: str = Field(description="the problem type in words (the same for every occurrence)")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request")
    errors: list[FieldError] = Field(
        default_factory=list, description="the fields (and files) at fault, if any"
    )


def problem_details(
    problem: Problem,
    detail: str,
    *,
    status: int | None = None,
    errors: list[FieldError] | None = None,
) -> ProblemDetails:
    status = status or problem.status or HTTPStatus.INTERNAL_SERVER_ERROR.value
    title = problem.title if problem.status else _status_phrase(status)
    return ProblemDetails(
        type=problem.type_uri,
        title=title,
        status=status,
        detail=sanitise(detail) or title,
        errors=[
            FieldError(field=e.field, file=e.file, reason=sanitise(e.reason)) for e in errors or []
        ],
    )


def problem_body(problem: ProblemDetails) -> bytes:
    return problem.model_dump_json(exclude_none=True).encode()


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


# A path on the server: two or more segments from a "/" that does not follow a word, a dot, a
# colon or another slash (so `multipart/form-data` and URLs' hosts are left alone).
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+-]+/)+[\w.@+-]*")


def sanitise(text: str) -> str:
    """Text fit for a client: server paths replaced, length capped."""
    text = _SERVER_PATH.sub("<path>", text.strip())
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return text


def from_error_body(status: int, body: bytes) -> ProblemDetails:
    """A problem from an error answer that is not one: BentoML's ``{"error": ...}`` (also in a
    list), its validation errors (``{"error", "detail": [pydantic errors]}``), Starlette's
    ``{"detail": ...}`` and plain text. Only messages are kept: no pydantic internals, no URLs
    to library docs."""
    problem = Problem.for_status(status)
    try:
        parsed: Any = json.loads(body or b"null")
    except ValueError:
        text = body.decode("utf-8", "replace")
        return problem_details(problem, text if len(text) < 500 else "", status=status)
    items = parsed if isinstance(parsed, list) else [parsed]
    messages: list[str] = []
    errors: list[FieldError] = []
    for item in items:
        if isinstance(item, str):
            messages.append(item)
        elif isinstance(item, dict):
            validation = item.get("detail")
            if isinstance(validation, list):
                errors += [
                    _validation_error(entry) for entry in validation if isinstance(entry, dict)
                ]
            message = item.get("error") or (validation if isinstance(validation, str) else None)
            if isinstance(message, str):
                messages.append(message)
    if errors:
        messages = ["; ".join(f"{e.field}: {e.reason}" for e in errors)]
    return problem_details(problem, "; ".join(messages), status=status, errors=errors)


def _validation_error(entry: dict[str, Any]) -> FieldError:
    """A pydantic error as a field error: its location's first part and its message."""
    location = [str(part) for part in entry.get("loc", ()) if part not in ("body",)]
    reason = str(entry.get("msg", "invalid value"))
    reason = reason.removeprefix("Value error, ")
    return FieldError(field=location[0] if location else "request", reason=reason)
