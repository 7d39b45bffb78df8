"""`make serve` (a dry run of the real make): the server binds loopback unless told otherwise."""

from __future__ import annotations

import subprocess

import pytest

from ..conftest import PROJECT_ROOT


@pytest.mark.parametrize(
    ("variables", "bind"),
    [([], "--host 127.0.0.1 --port 3000"), (["HOST=0.0.0.0"], "--host 0.0.0.0 --port 3000")],
)
def test_make_serve_binds_loopback_unless_told(variables, bind):
    dry_run = subprocess.run(
        ["make", "-n", "serve", *variables],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    serve = [line for line in dry_run.stdout.splitlines() if "bentoml serve" in line]
    assert serve and serve[-1].endswith(f"bentoml serve {bind}"), dry_run.stdout
