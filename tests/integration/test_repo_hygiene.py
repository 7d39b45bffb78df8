"""No secrets in the files git tracks (listed by `git ls-files`); tests/unit/test_repo_hygiene.py
checks that every dependency is pinned."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..conftest import PROJECT_ROOT as ROOT
from ..support.tools import skip_or_fail

SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "password in a URI": re.compile(r"://[^/\s:@'\"]+:(?!\$\{)[^@\s/'\"$]{4,}@"),
    # A literal assigned to a password-like name (tests' obviously fake keys are exempt).
    "assigned password": re.compile(
        r"(?i)\b[A-Z_]*(PASSWORD|SECRET|API_KEYS?)\b\s*[:=]\s*['\"][^'\"$\s{]{8,}['\"]"
    ),
}
TEST_ONLY = {"assigned password"}


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip_or_fail("not a git checkout (or no git): the tracked files cannot be listed")
    return [ROOT / line for line in out.splitlines() if line]


def test_no_secrets_are_committed():
    files = _tracked_files()
    assert ".env" not in {f.name for f in files}, ".env holds the stack's passwords"
    found = []
    for path in files:
        skip = path.suffix in {".png", ".jpg", ".ico"} or path == Path(__file__).resolve()
        if skip or not path.is_file():  # (this file holds samples of what it looks for)
            continue
        text = path.read_text(errors="ignore")
        for what, pattern in SECRET_PATTERNS.items():
            if what in TEST_ONLY and path.relative_to(ROOT).parts[0] == "tests":
                continue
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)[:40]}")
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    samples = {
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
        "AWS access key": "key AKIAABCDEFGHIJKLMNOP",
        "GitHub token": "ghp_" + "a" * 36,
        "password in a URI": "postgresql://mlflow:hunter2secret@db/mlflow",
        "assigned password": 'POSTGRES_PASSWORD = "hunter2secret"',
    }
    for what, sample in samples.items():
        assert SECRET_PATTERNS[what].search(sample), what
    assert not SECRET_PATTERNS["password in a URI"].search("postgresql://u:${PASSWORD}@db/x")
