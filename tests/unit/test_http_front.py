"""The front middlewares in-process: unknown paths folded, Retry-After and the shed 503's body,
BentoML's client-error log records turned into one warning line, and the service class that puts
them outside BentoML's own middlewares."""

from __future__ import annotations

import logging
from typing import Annotated

import bentoml
import httpx
import pytest
from bentoml.exceptions import BadInput, ServiceUnavailable
from pydantic import BeforeValidator, ValidationError, create_model
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from serving.http_front import (
    UNMATCHED_PATH,
    FoldUnknownPaths,
    FrontedService,
    OverloadAnswers,
    quiet_client_errors,
)
from serving.problems import PROBLEM_JSON, Problem

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _routes():
    async def ok(_):
        return PlainTextResponse("ok")

    return [
        Route("/classify", ok, methods=["POST"]),
        Route("/livez", ok),
        Route("/", ok),
        Mount("/static_content", routes=[Route("/{name}", ok)]),
    ]


async def _get(app, path: str, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path)


@pytest.mark.parametrize(
    ("method", "path", "seen_as"),
    [
        ("POST", "/classify", "/classify"),
        ("GET", "/classify", "/classify"),  # 405, but a route: its own label
        ("GET", "/livez/", "/livez/"),  # Starlette redirects it: served
        ("GET", "/", "/"),
        ("GET", "/static_content/app.js", "/static_content/app.js"),
        ("GET", "/x123", UNMATCHED_PATH),
        ("GET", "/classify/../../etc/passwd", UNMATCHED_PATH),
        ("GET", "/static_contents/x", UNMATCHED_PATH),
    ],
)
async def test_paths_no_route_serves_are_folded_into_one(method, path, seen_as):
    seen = []
    starlette = Starlette(routes=_routes())

    async def recorder(scope, receive, send):  # where BentoML's metrics middleware sits
        seen.append(scope["path"])
        await starlette(scope, receive, send)

    response = await _get(FoldUnknownPaths(recorder, routes=starlette.routes), path, method)
    assert seen == [seen_as]
    if seen_as == UNMATCHED_PATH:
        assert response.status_code == 404


def _answering(status: int, body: bytes = b'{"error": "x"}', headers=None):
    async def app(scope, receive, send):
        response = JSONResponse(None, status_code=status, headers=headers)
        response.body = body
        response.init_headers(headers)
        await response(scope, receive, send)

    return app


def _overload(app) -> OverloadAnswers:
    return OverloadAnswers(
        app, retry_after_s=2, shed_paths=["/classify"], shed_message="shed: retry later"
    )


async def test_429_gets_retry_after_and_keeps_its_body():
    response = await _get(_overload(_answering(429, b'{"error": "Too many requests"}')), "/any")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json() == {"error": "Too many requests"}


async def test_a_shed_503_says_what_happened():
    generic = b'{"error": "An unexpected error has occurred, please check the server log."}'
    response = await _get(_overload(_answering(503, generic)), "/classify")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {
        "type": Problem.OVERLOADED.type_uri,
        "title": Problem.OVERLOADED.title,
        "status": 503,
        "detail": "shed: retry later",
        "errors": [],
    }
    assert int(response.headers["content-length"]) == len(response.content)


async def test_other_answers_pass_unchanged():
    elsewhere = await _get(_overload(_answering(503, b'{"error": "other"}')), "/metadata")
    assert elsewhere.json() == {"error": "other"} and elsewhere.headers["retry-after"] == "2"
    own = await _get(_overload(_answering(429, headers={"Retry-After": "30"})), "/classify")
    assert own.headers.get_list("retry-after") == ["30"]
    fine = await _get(_overload(_answering(200, b"{}")), "/classify")
    assert fine.status_code == 200 and "retry-after" not in fine.headers


def _validation_error(message: str) -> ValidationError:
    """What pydantic raises when an upload fails the input model's validator."""

    def refuse(_):
        raise ValueError(message)

    model = create_model("Input", images=(list[Annotated[str, BeforeValidator(refuse)]], ...))
    try:
        model(images=["x"])
    except ValidationError as exc:
        return exc
    raise AssertionError("validated")


def _log_exception(logger: logging.Logger, exc: Exception) -> None:
    """What BentoML's `log_exception` does with an API's exception."""
    try:
        raise exc
    except Exception:
        logger.error("Exception on %s [%s]", "/classify", "POST", exc_info=True)


def test_client_errors_are_one_warning_line_server_errors_keep_their_traceback(caplog):
    logger = logging.getLogger("tests.bentoml_api_errors")
    quiet_client_errors(logger.name)
    quiet_client_errors(logger.name)  # installed once
    with caplog.at_level(logging.INFO, logger=logger.name):
        _log_exception(logger, BadInput("cat.txt: not a recognised image format"))
        _log_exception(logger, ServiceUnavailable("process is overloaded"))
        _log_exception(logger, _validation_error("notes.txt: not a recognised image format"))
        _log_exception(logger, RuntimeError("a real bug"))
    bad, shed, invalid, bug = caplog.records
    assert bad.levelno == logging.WARNING and bad.exc_info is None
    assert bad.getMessage() == (
        "Exception on /classify [POST]: 400 cat.txt: not a recognised image format"
    )
    assert shed.levelno == logging.WARNING and "503 process is overloaded" in shed.getMessage()
    assert invalid.levelno == logging.WARNING and invalid.exc_info is None
    assert invalid.getMessage().endswith(
        "400 images.0: Value error, notes.txt: not a recognised image format"
    )
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert "Traceback" in caplog.text and caplog.text.count("Traceback") == 1


def test_front_middlewares_wrap_everything_bentoml_builds(anyio_backend):
    @bentoml.service(name="front_probe", service_class=FrontedService)
    class Probe:
        @bentoml.api
        def echo(self, value: int) -> int:
            return value

    Probe.add_front_middleware(
        OverloadAnswers, retry_after_s=1, shed_paths=["/echo"], shed_message="m"
    )
    app = Probe.to_asgi()
    assert isinstance(app, OverloadAnswers)
    assert isinstance(app.app, FoldUnknownPaths)
    assert isinstance(app.app.app, Starlette)  # BentoML's app, with its limiter and metrics


async def test_a_static_mount_counts_only_its_files_as_served(tmp_path):
    # BentoML mounts StaticFiles at /static_content, which matches every path below it.
    from starlette.staticfiles import StaticFiles

    (tmp_path / "app.js").write_text("// ui")
    starlette = Starlette(routes=[Mount("/static_content", app=StaticFiles(directory=tmp_path))])
    seen = []

    async def recorder(scope, receive, send):
        seen.append(scope["path"])
        await starlette(scope, receive, send)

    folded = FoldUnknownPaths(recorder, routes=starlette.routes)
    assert (await _get(folded, "/static_content/app.js")).status_code == 200
    for i in range(3):
        assert (await _get(folded, f"/static_content/random{i}")).status_code == 404
    # Names the filesystem refuses to look up (a NUL byte, over 255 bytes): no file, not a 500.
    for hostile in ("/static_content/%00", f"/static_content/{'a' * 300}"):
        assert (await _get(folded, hostile)).status_code == 404
    assert seen == ["/static_content/app.js", *[UNMATCHED_PATH] * 5]
