"""`bentoml build` packages the service, its configuration and the imported model (offline)."""

import subprocess
import sys
from pathlib import Path

import bentoml
import yaml

from ..conftest import PROJECT_ROOT


def test_bento_build_packages_service_config_and_model(single_label_bento):
    import os

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
    bento = bentoml.get(tag)
    src = Path(bento.path) / "src"
    for name in ("service.py", "configuration.yaml", "models/predictor.py"):
        assert (src / name).is_file(), name
    manifest = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    # BentoML 1.4 records the model per service; containerize copies it from the store.
    [service] = manifest["services"]
    assert [m["tag"] for m in service["models"]] == [str(single_label_bento.tag)]
    assert service["config"]["traffic"]["timeout"] == 60  # configuration.yaml was applied
