"""Every error answer as problem details: :class:`ProblemAnswers`, the outermost front
middleware (``serving/http_front.py``), and the OpenAPI spec that documents them."""

from __future__ import annotations

from typing import Any

from .guard import ASGIApp, Message, Receive, Scope, Send
from .problems import (
    PROBLEM_JSON,
    STATE_KEY,
    Problem,
    ProblemDetails,
    from_error_body,
    problem_body,
)

__all__ = ["ProblemAnswers", "document_problems"]


class ProblemAnswers:
    """Answer every error (status 400 and over) as problem details (``serving/problems.py``).

    An answer already in ``application/problem+json`` (the request guard's, the shed 503) passes
    unchanged. Another error answer (BentoML's ``{"error": ...}`` or ``[{"error": ...}]``, its
    validation errors, Starlette's 404/405) is held, its body read, and sent again as a problem:
    the one the request parser recorded for this request when it raised (with the field
    errors), else one built from the body's messages. Headers such as ``Retry-After``,
    ``WWW-Authenticate`` and ``Allow`` are kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The request's state: the parser's Request sees this dict (scope copies share it).
        state = scope.setdefault("state", {})
        held: Message | None = None
        body = bytearray()

        async def answer(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and _needs_problem(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                recorded = state.pop(STATE_KEY, None)
                status = held["status"]
                if isinstance(recorded, ProblemDetails) and recorded.status == status:
                    problem = recorded
                else:
                    problem = from_error_body(status, bytes(body))
                await _send_problem(send, held, problem)

        await self.app(scope, receive, answer)


def _needs_problem(start: Message) -> bool:
    if start["status"] < 400:
        return False
    content_type = dict(start.get("headers") or []).get(b"content-type", b"")
    return not content_type.lower().startswith(PROBLEM_JSON.encode())


async def _send_problem(send: Send, start: Message, problem: ProblemDetails) -> None:
    body = problem_body(problem)
    headers = [
        (name, value)
        for name, value in start.get("headers") or []
        if name.lower() not in (b"content-length", b"content-type")
    ]
    headers += [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The error statuses each API can answer; APIs that read a multipart body (``/classify``) add
# the body's and the batcher's.
API_ERRORS = (400, 401, 404, 408, 413, 429, 500, 504)
UPLOAD_API_ERRORS = (415, 422, 503)


def document_problems(spec: Any) -> None:
    """Document every API's error answers in BentoML's OpenAPI spec as problem details, in
    place of BentoML's own error schema (which its answers never matched)."""
    from bentoml._internal.service.openapi.specification import MediaType, Reference, Response
    from bentoml._internal.service.openapi.specification import Schema as OpenAPISchema

    schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    components = spec.components
    schemas = components["schemas"] if isinstance(components, dict) else components.schemas
    for name, definition in {**schema.pop("$defs", {}), "ProblemDetails": schema}.items():
        schemas[name] = OpenAPISchema(**definition)
    content = {PROBLEM_JSON: MediaType(schema=Reference("#/components/schemas/ProblemDetails"))}
    for path_item in spec.paths.values():
        operation = path_item.post
        if not isinstance(operation, dict) or "x-bentoml-name" not in operation:
            continue
        uploads = "multipart/form-data" in (operation.get("requestBody") or {}).get("content", {})
        statuses = sorted({*API_ERRORS, *(UPLOAD_API_ERRORS if uploads else ())})
        responses = {
            code: answer
            for code, answer in operation["responses"].items()
            if int(code) < 400  # BentoML's own error entries are replaced
        }
        for status in statuses:
            types = (
                ", ".join(f"`{problem.slug}`" for problem in Problem if problem.status == status)
                or f"`{Problem.HTTP_ERROR.slug}`"
            )
            responses[status] = Response(
                description=f"problem details ({PROBLEM_JSON}); type {types}", content=content
            )
        operation["responses"] = responses
