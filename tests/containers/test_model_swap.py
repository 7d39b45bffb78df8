"""A promoted model deployed in the compose stack without an image build (issue 16, part 3).

The `cpu` profile's classifier follows `models:/swap-shapes@champion` of the stack's MLflow
(CLASSIFIER_MODEL_URI, credentials from a file secret): register v1 and start the stack, classify
(the lineage says v1); register v2 and move the alias, `docker compose restart classifier-cpu`,
classify (v2); move the alias back and restart: v1 again (a rollback). The same image throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import requests

from ..conftest import PROJECT_ROOT
from ..integration.conftest import free_port
from ..support.tools import compose_binary
from .conftest import DOCKER_CLI, REPORT, run
from .test_stack import MLFLOW_ADMIN, MLFLOW_ADMIN_PASSWORD, mlflow_credentials

MODEL_NAME = "swap-shapes"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
SERVICE = "classifier-cpu"
READY_TIMEOUT_S = 300

# Run on the host like a user's training job: log the artifact as a new run and version.
REGISTER = """
import json, sys
import mlflow
from mlflow import MlflowClient
from registry.mlflow_pyfunc import log_classifier_model
artifact, example, name = sys.argv[1:4]
mlflow.set_experiment("swap-test")
with mlflow.start_run():
    info = log_classifier_model(artifact, open(example, "rb").read(), registered_model_name=name)
print(json.dumps({"version": str(info.registered_model_version)}))
"""


def _register_version(stack: dict, artifact: str, example: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", REGISTER, artifact, example, MODEL_NAME],
        env=stack["host_env"], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["version"]


def _move_alias(stack: dict, version: str) -> None:
    response = requests.post(
        f"{stack['mlflow']}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL_NAME, "alias": "champion", "version": version},
        auth=(MLFLOW_ADMIN, MLFLOW_ADMIN_PASSWORD),
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]


@pytest.fixture(scope="module")
def swap_stack(docker_env, classifier_image, mlflow_image, session_dir, tmp_path_factory):
    """MLflow and PostgreSQL up; the classifier is started by the test, after v1 exists."""
    ports = {name: free_port() for name in ("CLASSIFIER", "PROXY", "MLFLOW", "PROMETHEUS")}
    secrets = tmp_path_factory.mktemp("swap-secrets")
    password_file = secrets / "mlflow-password"
    password_file.write_text(MLFLOW_ADMIN_PASSWORD + "\n")
    password_file.chmod(0o644)  # a bind mount: the container's user reads it as it is
    env = {
        **{k: v for k, v in docker_env.items() if not k.startswith("COMPOSE_")},
        "COMPOSE_PROJECT_NAME": f"ic-test-{uuid.uuid4().hex[:6]}",
        "COMPOSE_PROFILES": "cpu",
        "CLASSIFIER_IMAGE": classifier_image,
        "CLASSIFIER_CPUS": "2",
        "CLASSIFIER_MEMORY": "6g",
        "CLASSIFIER_MODEL_URI": MODEL_URI,
        "CLASSIFIER_MLFLOW_USERNAME": MLFLOW_ADMIN,
        "CLASSIFIER_MLFLOW_PASSWORD_FILE": str(password_file),
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "MLFLOW_ADMIN_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_ADMIN_PASSWORD": MLFLOW_ADMIN_PASSWORD,
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
    }
    compose = [compose_binary(), "--project-directory", str(PROJECT_ROOT)]
    mlflow = f"http://127.0.0.1:{ports['MLFLOW']}"
    try:
        run([*compose, "up", "-d", "--wait", "--wait-timeout", "300", "mlflow"], env, timeout=420)
        yield {
            "compose": compose,
            "env": env,
            "classifier": f"http://127.0.0.1:{ports['CLASSIFIER']}",
            "mlflow": mlflow,
            "host_env": {**mlflow_credentials(), "MLFLOW_TRACKING_URI": mlflow},
        }
    finally:
        logs = run([*compose, "logs", "--no-color", "--tail", "300"], env, check=False)
        (session_dir / "compose-swap.log").write_text(logs.stdout + logs.stderr)
        run([*compose, "down", "-v", "--timeout", "20"], env, check=False, timeout=300)


def _served_version(url: str) -> str | None:
    try:
        response = requests.post(f"{url}/metadata", timeout=10)
    except requests.RequestException:
        return None
    return response.json()["model"]["mlflow_version"] if response.status_code == 200 else None


def _wait_for_version(stack: dict, version: str, started: float) -> float:
    """Seconds from ``started`` until the classifier serves ``version`` (and classifies)."""
    while (served := _served_version(stack["classifier"])) != version:
        if time.monotonic() - started > READY_TIMEOUT_S:
            pytest.fail(f"the classifier served {served!r}, not v{version}, after the timeout")
        time.sleep(1)
    took = time.monotonic() - started
    return took


def _classify_lineage(stack: dict, png: bytes) -> dict:
    files = {"images": ("a.png", png, "image/png")}
    response = requests.post(f"{stack['classifier']}/classify", files=files, timeout=60)
    assert response.status_code == 200, response.text[:500]
    return response.json()[0]["model"]


def _classifier_image_id(stack: dict) -> str:
    container = run([*stack["compose"], "ps", "-q", SERVICE], stack["env"]).stdout.strip()
    return run([DOCKER_CLI, "inspect", "-f", "{{.Image}}", container], stack["env"]).stdout.strip()


def test_the_classifier_follows_an_mlflow_alias_without_an_image_build(
    swap_stack, single_label_bento, png_images
):
    from registry.bento_import import artifact_dir

    artifact, example = str(artifact_dir(single_label_bento)), str(png_images[0])
    png = png_images[0].read_bytes()
    v1 = _register_version(swap_stack, artifact, example)
    _move_alias(swap_stack, v1)
    compose, env = swap_stack["compose"], swap_stack["env"]

    started = time.monotonic()
    run([*compose, "up", "-d", SERVICE], env, timeout=300)
    first_start_s = _wait_for_version(swap_stack, v1, started)
    lineage = _classify_lineage(swap_stack, png)
    assert lineage["mlflow_registered_name"] == MODEL_NAME and lineage["mlflow_version"] == v1
    assert lineage["tag"].startswith("image-classifier-registry:")
    image = _classifier_image_id(swap_stack)

    v2 = _register_version(swap_stack, artifact, example)
    assert v2 != v1
    _move_alias(swap_stack, v2)
    started = time.monotonic()
    run([*compose, "restart", SERVICE], env, timeout=300)
    restart_s = _wait_for_version(swap_stack, v2, started)
    assert _classify_lineage(swap_stack, png)["mlflow_version"] == v2
    assert _classifier_image_id(swap_stack) == image  # the same image: nothing was built

    # A rollback: the old version is still in the registry and served again after a restart.
    _move_alias(swap_stack, v1)
    started = time.monotonic()
    run([*compose, "restart", SERVICE], env, timeout=300)
    _wait_for_version(swap_stack, v1, started)
    assert _classify_lineage(swap_stack, png)["mlflow_version"] == v1
    REPORT.append(
        f"model from the registry (compose, {MODEL_URI}): v{v1} served {first_start_s:.0f} s "
        f"after `compose up`, v{v2} {restart_s:.0f} s after `compose restart`, no image build"
    )
