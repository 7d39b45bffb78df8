"""The HTTP front of the service: middlewares that run before BentoML's own ones.

BentoML 1.4 applies ``add_asgi_middleware`` middlewares *inside* its metrics middleware, access
log, time limit and concurrency limiter (``_bentoml_impl/server/app.py``). Some things must
happen outside them, so :class:`FrontedService` (``@bentoml.service(service_class=...)``) wraps
the app BentoML builds:

- :class:`FoldUnknownPaths`: BentoML labels its request metrics with the raw path, so a scan of
  random paths makes a new set of Prometheus series per path. Paths no route serves are folded
  into one value, :data:`UNMATCHED_PATH` (they still get 404).
- :class:`OverloadAnswers`: the limiter's 429 and the adaptive batcher's 503 come without
  ``Retry-After``, and the 503's body says only "unexpected error"; both are completed here.

:func:`quiet_client_errors` turns BentoML's ERROR-with-traceback log records for client errors
(4xx) and shed requests (503) into one WARNING line each (a client that left: INFO).

:meth:`FrontedService.add_routes` serves more routes from BentoML's own app (inside its
middlewares and the request guard, like the APIs), and :meth:`FrontedService.call_batched`
lets them call a batchable API through its adaptive batcher (the Open Inference Protocol,
``serving/oip.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
from bentoml import Service
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles

from .guard import ASGIApp, Message, Receive, Scope, Send
from .problem_answers import document_problems
from .problems import PROBLEM_JSON, Problem, problem_body, problem_details

T = TypeVar("T")

# The metrics label (and access-log path) of every request no route serves.
UNMATCHED_PATH = "/<unmatched>"
# BentoML's logger for exceptions raised while an API handles a request.
BENTOML_API_ERROR_LOGGER = "bentoml._internal.server.http_app"


@attrs.define
class FrontedService(Service[T]):
    """A BentoML service whose ASGI app is wrapped in front middlewares (outermost first).

    Use as ``@bentoml.service(..., service_class=FrontedService)``, then
    ``Service.add_front_middleware(cls, **options)``.
    """

    front_middlewares: list[tuple[Callable[..., ASGIApp], dict[str, Any]]] = attrs.field(
        factory=list, init=False
    )
    extra_routes: list[BaseRoute] = attrs.field(factory=list, init=False)
    extra_openapi_paths: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # This process's BentoML app factory (set by to_asgi): it owns the adaptive batchers.
    app_factory: Any = attrs.field(default=None, init=False)

    def add_front_middleware(self, middleware: Callable[..., ASGIApp], **options: Any) -> None:
        """Like ``add_asgi_middleware``, but outside all of BentoML's middlewares."""
        self.front_middlewares.append((middleware, options))

    def add_routes(
        self, routes: Sequence[BaseRoute], openapi_paths: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Serve ``routes`` from BentoML's app, behind the same middlewares as the APIs (metrics,
        limiter, time limit, ``add_asgi_middleware`` ones); ``openapi_paths`` documents them
        (OpenAPI path items: ``{path: {"get": operation, ...}}``)."""
        self.extra_routes.extend(routes)
        self.extra_openapi_paths.update(openapi_paths or {})

    async def call_batched(self, api: str, items: list[Any]) -> list[Any]:
        """Call the batchable ``api`` with ``items`` (its first, batched argument; the others
        keep their defaults) through its adaptive batcher, exactly as a request to its route
        is: batched with that route's traffic, counted in the batch size metric, shed with
        ``ServiceUnavailable`` when overloaded.

        Private BentoML API (``ServiceAppFactory.batch_infer``, BentoML 1.4.39), the call its
        ``api_endpoint`` makes after parsing a request; tests/integration/test_oip.py checks it.
        """
        if self.app_factory is None:
            raise RuntimeError("call_batched needs the served app: call to_asgi() first")
        method = self.apis[api]
        if not method.batchable:
            raise ValueError(f"API {api!r} is not batchable")
        argument = next(iter(method.input_spec.model_fields))
        return await self.app_factory.batch_infer(api, (), {argument: items})

    @property
    def openapi_spec(self) -> Any:
        """BentoML's spec, with every API's error answers documented as problem details, and
        the routes added with :meth:`add_routes`."""
        from bentoml._internal.service.openapi.specification import PathItem

        spec = super().openapi_spec
        document_problems(spec)
        for path, operations in self.extra_openapi_paths.items():
            spec.paths[path] = PathItem(**operations)
        return spec

    def to_asgi(self, is_main: bool = True) -> Any:
        # Service.to_asgi, keeping the factory for call_batched.
        from _bentoml_impl.server.app import ServiceAppFactory

        self.inject_config()
        self.app_factory = ServiceAppFactory(self, is_main=is_main)
        app = self.app_factory()
        app.router.routes.extend(self.extra_routes)
        wrapped: ASGIApp = FoldUnknownPaths(app, routes=app.routes)
        for middleware, options in reversed(self.front_middlewares):
            wrapped = middleware(wrapped, **options)
        return wrapped


class FoldUnknownPaths:
    """Requests for paths that no route serves reach the app as :data:`UNMATCHED_PATH`.

    A path matches if a route serves it with or without a trailing slash (Starlette redirects
    between the two). Other scopes (websocket, lifespan) pass unchanged.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's own list: routes mounted later count too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._is_served(scope):
            scope = {**scope, "path": UNMATCHED_PATH, "raw_path": UNMATCHED_PATH.encode()}
        await self.app(scope, receive, send)

    def _is_served(self, scope: Scope) -> bool:
        path = scope["path"]
        twin = path.rstrip("/") if path.endswith("/") else f"{path}/"
        return any(self._matches({**scope, "path": candidate}) for candidate in (path, twin))

    def _matches(self, scope: Scope) -> bool:
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.NONE:
                continue
            if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
                # A static mount matches every path below it: only its files count as served.
                return _is_static_file(route.app, {**scope, **child_scope})
            return True
        return False


def _is_static_file(files: StaticFiles, scope: Scope) -> bool:
    try:
        _, found = files.lookup_path(files.get_path(scope))
    except (OSError, ValueError):  # a NUL byte, a name over the filesystem's limit: no file
        return False
    return found is not None


class OverloadAnswers:
    """Add ``Retry-After`` to 429 and 503 answers, and give a 503 from ``shed_paths`` (where only
    the adaptive batcher answers 503) a body that says what happened."""

    def __init__(
        self, app: ASGIApp, retry_after_s: int, shed_paths: Iterable[str], shed_message: str
    ) -> None:
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {retry_after_s}")
        self.app = app
        self.retry_after = str(retry_after_s).encode()
        self.shed_paths = frozenset(shed_paths)
        self.shed_body = problem_body(problem_details(Problem.OVERLOADED, shed_message))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewrite_shed = scope["path"] in self.shed_paths
        held: Message | None = None

        async def answer(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                message = {**message, "headers": self._with_retry_after(message["headers"])}
                if message["status"] == 503 and rewrite_shed:
                    held = message  # sent with the new body, once the app's body is complete
                    return
            if held is None:
                await send(message)
            elif not message.get("more_body", False):
                await self._send_shed(send, held)

        await self.app(scope, receive, answer)

    def _with_retry_after(self, headers: Iterable[tuple[bytes, bytes]]) -> list:
        headers = list(headers)
        if not any(name.lower() == b"retry-after" for name, _ in headers):
            headers.append((b"retry-after", self.retry_after))
        return headers

    async def _send_shed(self, send: Send, start: Message) -> None:
        headers = [
            (name, value)
            for name, value in start["headers"]
            if name.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(self.shed_body)).encode()),
        ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": self.shed_body})


def _client_error_summary(exc: BaseException) -> tuple[int, str] | None:
    """The level and a one-line description of a client error, a shed request or a client that
    left; None for a server error."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        return logging.WARNING, f"400 {problems}"
    if isinstance(exc, BentoMLException) and exc.error_code.value < 500:
        return logging.WARNING, f"{exc.error_code.value} {exc}"
    if isinstance(exc, BentoMLException) and exc.error_code.value == 503:
        return logging.WARNING, f"503 {exc} (shed by adaptive batching)"
    if isinstance(exc, ClientDisconnect):
        # The client left, or the request guard refused it mid-body (and logged why).
        return logging.INFO, "client disconnected before its request was read"
    return None


class ClientErrorsAsWarnings(logging.Filter):
    """Rewrite a record that carries a client error (4xx), a shed request (503) or a client that
    left into one line naming the problem, WARNING (INFO for a disconnect), without the
    traceback: bad uploads are the client's problem, and a traceback per bad request buries real
    server errors. Other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        summary = _client_error_summary(exc) if exc is not None else None
        if summary is not None:
            level, text = summary
            record.msg, record.args = "%s: %s", (record.getMessage(), text)
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors(logger_name: str = BENTOML_API_ERROR_LOGGER) -> None:
    """Install :class:`ClientErrorsAsWarnings` on BentoML's API error logger (once)."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(existing, ClientErrorsAsWarnings) for existing in target.filters):
        target.addFilter(ClientErrorsAsWarnings())
