"""`bentoml build` packages the service, its configuration and the imported model (offline)."""

import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml

from ..conftest import PROJECT_ROOT

# What the Bento's src/ holds besides the two packages' modules: bentofile.yaml's include, and
# the build's own copy of bentofile.yaml (BentoML writes it).
TOP_LEVEL_FILES = {"service.py", "configuration.yaml", "requirements-serve.lock", "bentofile.yaml"}
# registry/: a container can import its model from MLflow at start-up (CLASSIFIER_MODEL_URI).
SHIPPED_PACKAGES = ("models", "serving", "registry")
NEVER_SHIPPED = (
    "training",
    "scoring",
    "benchmarks",
    "devtools",
    "tests",
    "deploy",
    "monitoring",
    "scripts",
)


@pytest.fixture(scope="module")
def built_bento(single_label_bento):
    env = {**os.environ, "CLASSIFIER_MODEL_TAG": str(single_label_bento.tag)}
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    result = subprocess.run(
        [str(bentoml_cli), "build", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return bentoml.get(tag)


def test_bento_build_packages_service_config_and_model(built_bento, single_label_bento):
    src = Path(built_bento.path) / "src"
    for name in ("service.py", "configuration.yaml", "models/predictor.py"):
        assert (src / name).is_file(), name
    manifest = yaml.safe_load((Path(built_bento.path) / "bento.yaml").read_text())
    # BentoML 1.4 records the model per service; containerize copies it from the store.
    [service] = manifest["services"]
    assert [m["tag"] for m in service["models"]] == [str(single_label_bento.tag)]
    assert service["config"]["traffic"]["timeout"] == 60  # configuration.yaml was applied


def test_the_bento_ships_the_service_models_serving_and_registry_only(built_bento):
    src = Path(built_bento.path) / "src"
    shipped = {
        p.relative_to(src).as_posix()
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    modules = {
        f"{package}/{p.name}"
        for package in SHIPPED_PACKAGES
        for p in (PROJECT_ROOT / package).glob("*.py")
    }
    strays = sorted(f for f in shipped if f.split("/")[0] in NEVER_SHIPPED)
    assert not strays, strays
    # The /ui page's static files (serving/ui.py serves them from the Bento).
    page_files = {f"serving/ui/{p.name}" for p in (PROJECT_ROOT / "serving" / "ui").iterdir()}
    assert {"serving/ui/index.html", "serving/ui/ui.js", "serving/ui/ui.css"} <= page_files
    assert shipped == TOP_LEVEL_FILES | modules | page_files
