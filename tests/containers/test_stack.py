"""docker-compose.yml, `cpu` profile, on a real engine: classifier + MLflow/PostgreSQL +
Prometheus. (Grafana has no image this CI can build; its provisioning is checked in
tests/unit/test_monitoring.py and its dashboard's queries run against this Prometheus here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import bentoml
import pytest
import requests
from PIL import Image

from ..conftest import PROJECT_ROOT
from ..integration.conftest import free_port
from ..support import promql
from ..support.tools import compose_binary
from .conftest import run

SERVICES = ("classifier-cpu", "postgres", "mlflow", "prometheus")


@pytest.fixture(scope="module")
def stack(docker_env, classifier_image, mlflow_image, session_dir):
    """The cpu profile up (`compose up --wait`); yields URLs, then `compose down -v`."""
    ports = {name: free_port() for name in ("CLASSIFIER", "MLFLOW", "PROMETHEUS", "GRAFANA")}
    env = {
        **{k: v for k, v in docker_env.items() if not k.startswith("COMPOSE_")},
        "COMPOSE_PROJECT_NAME": f"ic-test-{uuid.uuid4().hex[:6]}",
        "COMPOSE_PROFILES": "cpu",
        "CLASSIFIER_IMAGE": classifier_image,
        "CLASSIFIER_CPUS": "2",
        "CLASSIFIER_MEMORY": "6g",
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
    }
    compose = [compose_binary(), "--project-directory", str(PROJECT_ROOT)]
    started = time.monotonic()
    try:
        run([*compose, "up", "-d", "--wait", "--wait-timeout", "420", *SERVICES], env, timeout=600)
        yield {
            "classifier": f"http://127.0.0.1:{ports['CLASSIFIER']}",
            "mlflow": f"http://127.0.0.1:{ports['MLFLOW']}",
            "prometheus": f"http://127.0.0.1:{ports['PROMETHEUS']}",
            "started_s": time.monotonic() - started,
        }
    finally:
        logs = run([*compose, "logs", "--no-color", "--tail", "200"], env, check=False)
        (session_dir / "compose-stack.log").write_text(logs.stdout + logs.stderr)
        run([*compose, "down", "-v", "--timeout", "20"], env, check=False, timeout=300)


def promql_query(prometheus: str, expr: str) -> list:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(2)


def test_prometheus_scrapes_the_classifier_and_every_dashboard_query_runs(stack, png_images):
    with bentoml.SyncHTTPClient(stack["classifier"]) as client:
        for path in png_images[:12]:
            assert client.classify(images=[Image.open(path)])[0]["labels"]
    # The classifier's request count, as Prometheus scraped it over the compose network.
    count_query = 'sum(image_classifier_request_total{endpoint="/classify"})'

    def scraped_count():
        result = promql_query(stack["prometheus"], count_query)
        return result and float(result[0]["value"][1]) >= 12

    wait_for(scraped_count, 90, f"{count_query} >= 12")
    up = promql_query(stack["prometheus"], 'up{job="image-classifier"}')
    assert up and up[0]["value"][1] == "1"
    rules = requests.get(f"{stack['prometheus']}/api/v1/rules", timeout=10).json()
    loaded = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
    assert {name for name, _ in promql.alert_queries()} <= loaded
    # Every dashboard panel's query is accepted by Prometheus (promql_query asserts it), and
    # those over the service's own metrics return data after the traffic above. rate()s need
    # two scrapes in their window, hence the wait. (No GPU exporter in the cpu profile.)
    service_queries = [
        (title, expr.replace("[1m]", "[5m]"))
        for title, expr in promql.grafana_queries()
        if not all(promql.NOT_FROM_SERVICE.match(n) for n in promql.metric_names(expr))
    ]

    def panels_without_data():
        return [title for title, expr in service_queries if not promql_query(prometheus, expr)]

    prometheus = stack["prometheus"]
    for _, expr in promql.grafana_queries():
        promql_query(prometheus, expr)
    deadline = time.monotonic() + 60
    while (empty := panels_without_data()) and time.monotonic() < deadline:
        time.sleep(3)
    assert not empty, f"dashboard panels without data: {empty}"


def test_training_on_the_host_logs_to_the_stack_mlflow_and_imports(stack, demo_data, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    train = subprocess.run(
        [sys.executable, "-m", "training", "train",
         "--mlflow.tracking_uri", stack["mlflow"],
         "--mlflow.registered_model", "stack-shapes",
         "--mlflow.experiment", "stack-test",
         "--data.root", str(demo_data["single_label"]),
         "--optim.epochs", "1",
         "--output_dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-4000:]
    imported = subprocess.run(
        [sys.executable, "-m", "models", "import", "models:/stack-shapes@champion",
         "--tracking-uri", stack["mlflow"]],
        env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-4000:]
    tag = imported.stdout.strip().splitlines()[-1]
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "get", tag, "-o", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    info = json.loads(listed.stdout)
    labels = info["labels"]
    assert labels["mlflow_registered_name"] == "stack-shapes"
    assert labels["mlflow_tracking_uri"] == stack["mlflow"]
    # The run's artifacts went through the server into its volume, not to a host path.
    from mlflow import MlflowClient

    run_info = MlflowClient(stack["mlflow"]).get_run(labels["mlflow_run_id"]).info
    assert run_info.artifact_uri.startswith("mlflow-artifacts:"), run_info.artifact_uri
    assert run_info.status == "FINISHED"
