"""Waiting for a served classifier (a `bentoml serve` process or a container) to be ready."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest
import requests


def wait_until_ready(
    url: str,
    *,
    what: str,
    timeout_s: float,
    exit_status: Callable[[], int | None],
    logs: Callable[[], str],
    poll_s: float = 0.5,
) -> None:
    """Poll ``url``/readyz until it answers 200; fail with the logs if the server exits first
    (``exit_status`` returns its exit code, or None while it runs) or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = exit_status()
        if code is not None:
            pytest.fail(f"{what} exited with {code}:\n{logs()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready in {timeout_s}s:\n{logs()}")
        time.sleep(poll_s)
