"""registry/tracking_server.py against a real HTTP server on 127.0.0.1 that guards its API with
basic auth the way `mlflow server --app-name basic-auth` does (/health open, the API 401)."""

from __future__ import annotations

import base64
import contextlib
import http.server
from collections.abc import Iterator

import pytest

from registry.tracking_server import TrackingServerError, check_tracking_reachable

from ..support.http_stub import local_http_server

USERNAME, PASSWORD = "trainer", "a-long-enough-password"


@contextlib.contextmanager
def _auth_server() -> Iterator[tuple[str, list[str | None]]]:
    """Yields the server's URI and the Authorization header of every request it received."""
    seen: list[str | None] = []
    expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()

    class Guarded(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            header = self.headers.get("Authorization")
            seen.append(header)
            if self.path == "/health" or header == expected:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"experiments": []}')
                return
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()

        def log_message(self, *args):
            pass

    with local_http_server(Guarded) as url:
        yield url, seen


@pytest.fixture
def no_credentials(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_credentials_from_the_environment_are_sent(no_credentials, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USERNAME)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with _auth_server() as (uri, seen):
        check_tracking_reachable(uri, attempts=1)
    # /health, then an API call that only passes with the credentials.
    assert len(seen) == 2 and all(header and header.startswith("Basic ") for header in seen)


def test_missing_credentials_give_a_401_error_naming_the_variables(no_credentials):
    with _auth_server() as (uri, seen), pytest.raises(TrackingServerError) as raised:
        check_tracking_reachable(uri, attempts=1)
    message = str(raised.value)
    assert "401" in message and "requires authentication" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert seen == [None, None]


def test_wrong_credentials_are_reported_as_rejected_without_the_password(
    no_credentials, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USERNAME)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with _auth_server() as (uri, _), pytest.raises(TrackingServerError) as raised:
        check_tracking_reachable(uri, attempts=1)
    message = str(raised.value)
    assert "rejected the credentials" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert "not-the-password" not in message
