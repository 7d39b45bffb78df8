"""Every dependency pinned. tests/integration/test_repo_hygiene.py scans the tracked files for
secrets (it runs git)."""

from __future__ import annotations

from ..conftest import PROJECT_ROOT as ROOT


def test_every_dependency_is_pinned():
    for lock in ("requirements.lock", "requirements-serve.lock"):
        lines = [
            line.strip()
            for line in (ROOT / lock).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        unpinned = [line for line in lines if "==" not in line]
        assert lines and not unpinned, f"{lock}: {unpinned}"
