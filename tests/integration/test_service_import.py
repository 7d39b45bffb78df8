"""`import service` with nothing in the BentoML store: importing the service file reads settings
only (the model is checked before a Bento is built, before workers start, and loaded in each), so
the OpenAPI docs and tooling can import it anywhere; `bentoml build` then refuses a missing model
with our message. A fresh interpreter, with a BentoML home of its own, so nothing this session
imported or stored counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import PROJECT_ROOT

# Importing bentoml, torch and the service takes a few seconds; loading a model would need one
# in the store (there is none) and fail. The bound only catches an import that hangs or waits.
IMPORT_TIMEOUT_S = 120
PROBE = (
    "import service; "
    "assert service.ImageClassifier.apis['classify'] is not None; "
    "print(service.SETTINGS.model_tag)"
)


def _isolated_env(bentoml_home, model_tag: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLASSIFIER_MODEL_TAG"}
    env["BENTOML_HOME"] = str(bentoml_home)
    if model_tag:
        env["CLASSIFIER_MODEL_TAG"] = model_tag
    return env


@pytest.mark.parametrize("model_tag", [None, "not-in-the-store:v1"], ids=["default", "absent"])
def test_service_imports_without_any_model_in_the_store(tmp_path, model_tag):
    bentoml_home = tmp_path / "bentoml"
    bentoml_home.mkdir()
    env = _isolated_env(bentoml_home, model_tag)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if model_tag:
        assert result.stdout.strip().splitlines()[-1] == model_tag
    assert not list((bentoml_home / "models").glob("*/*")), "a model appeared in the store"


def test_bento_build_refuses_a_missing_model_saying_what_to_do(tmp_path):
    """Not BentoML's "could not be found locally and failed to fetch from remote": ours."""
    bentoml_home = tmp_path / "bentoml"
    bentoml_home.mkdir()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("bentoml")), "build"],
        cwd=PROJECT_ROOT,
        env=_isolated_env(bentoml_home, "not-in-the-store:v1"),
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "is not in the BentoML store" in output and "python -m registry import" in output
    assert "cloud" not in output.lower(), output[-3000:]
    assert not list((bentoml_home / "bentos").glob("*/*")), "a Bento was built"
