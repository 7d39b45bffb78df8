"""The image's requirements (requirements-serve.lock) are cut from requirements.lock, not edited."""

from __future__ import annotations

import runpy

from ..conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "serve_requirements.py"


def test_serve_lock_is_up_to_date_with_the_project_lock():
    render = runpy.run_path(str(SCRIPT))["render"]
    assert (PROJECT_ROOT / "requirements-serve.lock").read_text() == render(), (
        "regenerate it: make serve-requirements"
    )


def test_serve_lock_has_the_runtime_and_not_the_training_stack():
    names = {
        line.split("==")[0].lower()
        for line in (PROJECT_ROOT / "requirements-serve.lock").read_text().splitlines()
        if "==" in line
    }
    assert {"torch", "torchvision", "timm", "bentoml", "pillow", "safetensors"} <= names
    # MLflow's client only (CLASSIFIER_MODEL_URI imports a model at start-up), with the pandas
    # mlflow.pyfunc imports: not the server, its database drivers or plotting.
    assert {"mlflow-skinny", "pandas"} <= names
    assert not names & {"mlflow", "matplotlib", "scikit-learn", "sqlalchemy", "pyarrow"}
    assert not names & {"pytest", "ruff"}
    assert "triton" not in names  # torch.compile's code generator: left out of the image
