"""The error model (serving/problems.py) in-process: docs/errors.md against the ``Problem`` enum,
what an answer may say, and ``ProblemAnswers`` over a tiny real BentoML service, whose own
errors (validation, 500, 404, 405) must come out as problem details, documented in its spec."""

from __future__ import annotations

import json
import re

import bentoml
import pytest
from starlette.testclient import TestClient

from serving.http_front import FrontedService
from serving.problem_answers import ProblemAnswers
from serving.problems import (
    PROBLEM_JSON,
    TYPE_BASE,
    Problem,
    ProblemDetails,
    from_error_body,
    sanitise,
)

from ..conftest import PROJECT_ROOT

ERRORS_DOC = PROJECT_ROOT / "docs" / "errors.md"


def _documented_types() -> list[tuple[str, str, str]]:
    text = ERRORS_DOC.read_text()
    table = text[text.index("## Problem types") :]
    rows = re.findall(r"^\| `([a-z-]+)` \| ([^|]+) \| ([^|]+) \|", table, flags=re.MULTILINE)
    return [(slug, status.strip(), title.strip()) for slug, status, title in rows]


def test_docs_list_every_problem_type_as_the_enum_defines_it():
    expected = [
        (
            problem.slug,
            str(problem.status) if problem.status else "any other",
            problem.title if problem.status else "the status's reason phrase",
        )
        for problem in Problem
    ]
    assert _documented_types() == expected, "docs/errors.md's table differs from Problem"
    slugs = [problem.slug for problem in Problem]
    assert len(set(slugs)) == len(slugs)
    assert all(problem.type_uri == TYPE_BASE + problem.slug for problem in Problem)


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("model /home/bentoml/models/x/v1 failed", "model <path> failed", "/home"),
        ("No such file: '/tmp/abc.png'", "'<path>'", "/tmp"),
        ("send multipart/form-data to /classify", "multipart/form-data to /classify", "<path>"),
        ("see https://example.com/a/b", "https://example.com/a/b", "<path>"),
    ],
)
def test_server_paths_never_reach_a_client(text, kept, gone):
    assert kept in sanitise(text) and gone not in sanitise(text)


def test_bentoml_validation_errors_lose_their_pydantic_internals():
    body = {
        "error": "1 validation error for ParsedInput",
        "detail": [
            {
                "type": "value_error",
                "loc": ["images", 0],
                "msg": "Value error, truncated.jpg: corrupt or truncated image",
                "url": "https://errors.pydantic.dev/2.11/v/value_error",
            }
        ],
    }
    problem = from_error_body(400, json.dumps(body).encode())
    assert problem.type == Problem.INVALID_REQUEST.type_uri
    assert [error.model_dump() for error in problem.errors] == [
        {"field": "images", "file": None, "reason": "truncated.jpg: corrupt or truncated image"}
    ]
    dumped = problem.model_dump_json()
    for internal in ("pydantic", "value_error", "ParsedInput", "loc"):
        assert internal not in dumped


@pytest.mark.parametrize(
    ("status", "body", "slug", "detail"),
    [
        (400, b'[{"error": "unexpected field `image`"}]', "invalid-request", "unexpected field"),
        (429, b'{"error": "Too many requests"}', "too-many-requests", "Too many requests"),
        (404, b"Not Found", "not-found", "Not Found"),
        (504, b"Not able to process the request in 1 seconds", "timeout", "Not able to process"),
        (418, b"", "http-error", "I'm a Teapot"),
    ],
)
def test_other_error_bodies_become_problems(status, body, slug, detail):
    problem = from_error_body(status, body)
    assert problem.type == TYPE_BASE + slug and problem.status == status
    assert detail in problem.detail


@bentoml.service(name="problem_probe", service_class=FrontedService, metrics={"enabled": False})
class ProblemProbe:
    @bentoml.api
    def echo(self, value: int) -> int:
        return value

    @bentoml.api
    def broken(self) -> str:
        raise RuntimeError("cannot open /srv/models/secret/weights.safetensors")


ProblemProbe.add_front_middleware(ProblemAnswers)


@pytest.fixture(scope="module")
def client():
    with TestClient(ProblemProbe.to_asgi(), raise_server_exceptions=False) as test_client:
        yield test_client


def _problem(response, status: int, problem: Problem) -> ProblemDetails:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    assert int(response.headers["content-length"]) == len(response.content)
    details = ProblemDetails.model_validate_json(response.content)
    assert (details.type, details.status) == (problem.type_uri, status)
    assert details.title == problem.title and details.detail
    return details


def test_bentoml_and_starlette_errors_are_problems(client):
    invalid = _problem(client.post("/echo", json={"value": "x"}), 400, Problem.INVALID_REQUEST)
    assert [error.field for error in invalid.errors] == ["value"]
    assert "pydantic" not in invalid.model_dump_json()
    broken = _problem(client.post("/broken", json={}), 500, Problem.INTERNAL_ERROR)
    assert "/srv" not in broken.model_dump_json()
    _problem(client.get("/no/such/route"), 404, Problem.NOT_FOUND)
    wrong_method = client.get("/echo")
    _problem(wrong_method, 405, Problem.METHOD_NOT_ALLOWED)
    assert "POST" in wrong_method.headers["allow"]


def test_successes_pass_unchanged(client):
    response = client.post("/echo", json={"value": 3})
    assert response.status_code == 200 and response.json() == 3
    assert client.get("/livez").status_code == 200


def test_the_openapi_spec_documents_the_problem_answers(client):
    spec = client.get("/docs.json").json()
    schema = spec["components"]["schemas"]["ProblemDetails"]
    assert set(schema["required"]) == {"type", "title", "status", "detail"}
    assert "FieldError" in spec["components"]["schemas"]
    responses = spec["paths"]["/echo"]["post"]["responses"]
    errors = {code: answer for code, answer in responses.items() if int(code) >= 400}
    assert {"400", "401", "404", "413", "429", "500", "504"} <= set(errors)
    for answer in errors.values():
        assert list(answer["content"]) == [PROBLEM_JSON]
        assert answer["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("/ProblemDetails")
