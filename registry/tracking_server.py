"""Checks on the MLflow tracking server that training and import make before they start."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

# MLflow's own client reads these (mlflow.environment_variables); the checks here send the same
# credentials, so they see the server as training and import will.
USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"
TOKEN_VAR = "MLFLOW_TRACKING_TOKEN"
# Any authenticated user may call it (results are filtered by permission); /health is open even
# on an auth-enabled server, so only a call like this one tells whether the credentials work.
_AUTH_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


class TrackingServerError(RuntimeError):
    """The tracking server cannot be used; the message says which and why. ``retryable``: it
    did not answer (it may yet); refused credentials are not worth retrying."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def redact(uri: str) -> str:
    """Drop credentials from a URI before it is logged or stored as a label."""
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()  # keeps [::1]
    return uri


def tracking_auth_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Authorization header MLflow's client sends: basic auth from the username/password
    variables (both needed), else a bearer token; none when neither is set."""
    import base64

    env = os.environ if environ is None else environ
    username, password = env.get(USERNAME_VAR), env.get(PASSWORD_VAR)
    if username and password:
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    if token := env.get(TOKEN_VAR):
        return {"Authorization": f"Bearer {token}"}
    return {}


def _check_credentials(tracking_uri: str, headers: dict[str, str], timeout_s: float) -> None:
    """Raise on 401: the server wants credentials we lack or rejected the ones we sent."""
    import requests

    url = f"{tracking_uri.rstrip('/')}{_AUTH_PROBE}"
    try:
        response = requests.get(url, headers=headers, timeout=timeout_s)
    except requests.RequestException:
        return  # it answered /health a moment ago; MLflow's own retries take it from here
    if response.status_code != 401:
        return
    what = "rejected the credentials in" if headers else "requires authentication: set"
    raise TrackingServerError(
        f"the MLflow tracking server at {redact(tracking_uri)} answered 401 Unauthorized: it "
        f"{what} {USERNAME_VAR} and {PASSWORD_VAR} (or {TOKEN_VAR})"
    )


def check_tracking_reachable(
    tracking_uri: str, timeout_s: float = 5.0, attempts: int = 3, backoff_s: float = 1.0
) -> None:
    """Fail fast with a clear message instead of MLflow's long retry loop mid-job.

    HTTP servers get ``attempts`` tries at ``/health`` (a restarting server is worth a few
    seconds); connection errors and 5xx answers count as failures. Other schemes pass. A server
    that answers then gets one authenticated call, with the credentials MLflow's client would
    send (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or ``_TOKEN``): a 401 fails right away.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    import requests

    headers = tracking_auth_headers()
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = requests.get(
                f"{tracking_uri.rstrip('/')}/health", headers=headers, timeout=timeout_s
            )
            if response.status_code < 500:
                _check_credentials(tracking_uri, headers, timeout_s)
                return
            problem = f"it answered {response.status_code} {response.reason}"
        except requests.RequestException as exc:
            problem = str(exc)
        if attempt < attempts:
            logger.warning(
                "MLflow tracking server %s: %s; retrying (%d/%d)",
                redact(tracking_uri),
                problem,
                attempt,
                attempts - 1,
            )
            time.sleep(backoff_s * attempt)
    raise TrackingServerError(
        f"cannot reach the MLflow tracking server at {redact(tracking_uri)}: {problem}",
        retryable=True,
    )


def check_sqlite_exists(tracking_uri: str) -> None:
    if urlparse(tracking_uri).scheme != "sqlite":
        return
    db_path = tracking_uri.removeprefix("sqlite:///")
    if db_path and db_path != ":memory:" and not Path(db_path).exists():
        raise TrackingServerError(
            f"MLflow database {db_path} does not exist (tracking URI {tracking_uri}); "
            "train a model first or point --tracking-uri at your registry"
        )
