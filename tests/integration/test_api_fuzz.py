"""Schemathesis against the served OpenAPI spec: generated requests to every operation, valid
and invalid, must never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .conftest import bentoml_server

API_KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def fuzz_server(single_label_bento, session_dir):
    with bentoml_server(
        str(single_label_bento.tag),
        session_dir / "serve-fuzz.log",
        extra_env={"CLASSIFIER_API_KEYS": API_KEY},
    ) as url:
        yield url


def _operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    return [result.ok() for result in schema.get_all_operations()]


# Schemathesis' own pytest plugin (from_fixture) fails on pytest 9, so its strategies are
# driven by Hypothesis directly, one operation at a time.
def test_no_generated_request_gets_a_server_error(fuzz_server):
    operations = _operations(fuzz_server)
    assert {op.label for op in operations} >= {"POST /classify", "POST /metadata"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def no_server_error(case):
            for headers in ({"Authorization": f"Bearer {API_KEY}"}, {}):  # with and without key
                case.call_and_validate(
                    base_url=fuzz_server, headers=headers, checks=[not_a_server_error], timeout=60
                )

        no_server_error()
