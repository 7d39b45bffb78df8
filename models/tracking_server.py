"""Checks on the MLflow tracking server that training and import make before they start."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)


class TrackingServerError(RuntimeError):
    """The tracking server cannot be used; the message says which and why."""


def redact(uri: str) -> str:
    """Drop credentials from a URI before it is logged or stored as a label."""
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()  # keeps [::1]
    return uri


def check_tracking_reachable(
    tracking_uri: str, timeout_s: float = 5.0, attempts: int = 3, backoff_s: float = 1.0
) -> None:
    """Fail fast with a clear message instead of MLflow's long retry loop mid-job.

    HTTP servers get ``attempts`` tries at ``/health`` (a restarting server is worth a few
    seconds); connection errors and 5xx answers count as failures. Other schemes pass.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    import requests

    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s)
            if response.status_code < 500:
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
        f"cannot reach the MLflow tracking server at {redact(tracking_uri)}: {problem}"
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
