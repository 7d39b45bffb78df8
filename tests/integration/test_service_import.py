"""`import service` with nothing in the BentoML store: importing the service file reads settings
only (the model is checked before workers start and loaded in each), so `bentoml build`, the
OpenAPI docs and tooling can import it anywhere. A fresh interpreter, with a BentoML home of its
own, so nothing this session imported or stored counts."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.mark.parametrize("model_tag", [None, "not-in-the-store:v1"], ids=["default", "absent"])
def test_service_imports_without_any_model_in_the_store(tmp_path, model_tag):
    bentoml_home = tmp_path / "bentoml"
    bentoml_home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CLASSIFIER_MODEL_TAG"}
    env["BENTOML_HOME"] = str(bentoml_home)
    if model_tag:
        env["CLASSIFIER_MODEL_TAG"] = model_tag
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
