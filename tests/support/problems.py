"""Checks of an error answer's shape: RFC 9457 problem details (serving/problems.py), with
nothing in it that names a path on the server or a library's internals."""

from __future__ import annotations

from typing import Any

from serving.problems import PROBLEM_JSON, Problem, ProblemDetails

# What an answer must never carry: library internals and paths on the server.
LEAKS = ("pydantic", "errors.pydantic.dev", "Traceback", "/home/", "/tmp/", "site-packages")


def assert_problem(
    response: Any,
    status: int,
    problem: Problem,
    *,
    detail: str | None = None,
    field: str | None = None,
    file: str | None = None,
) -> ProblemDetails:
    """``response`` (requests' or httpx's) is ``problem`` with ``status``; ``detail`` is in its
    detail, and its errors name ``field`` (and ``file``) when given."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    answer = ProblemDetails.model_validate_json(response.content)
    assert answer.status == status
    assert (answer.type, answer.title) == (problem.type_uri, problem.title), answer
    assert set(response.json()) == {"type", "title", "status", "detail", "errors"}
    if detail is not None:
        assert detail in answer.detail, answer.detail
    if field is not None:
        assert any(e.field == field and (file is None or e.file == file) for e in answer.errors), (
            answer.errors
        )
    for leak in LEAKS:
        assert leak not in response.text, response.text[:500]
    return answer
