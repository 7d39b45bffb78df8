"""docker-compose.yml, `cpu` profile, on a real engine: classifier behind the nginx proxy +
MLflow (basic auth)/PostgreSQL + Prometheus. (Grafana has no image this CI can build; its
provisioning is checked in tests/unit/test_monitoring.py and its dashboard's queries run against
this Prometheus here.)"""

from __future__ import annotations

import json
import os
import socket
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
from .conftest import DOCKER_CLI, run

SERVICES = ("classifier-cpu", "proxy", "postgres", "mlflow", "prometheus")
MLFLOW_ADMIN = "stack-admin"
# Random cores, looked for in `docker inspect` in whatever encoding; URI-special characters
# around the PostgreSQL one, which the MLflow entrypoint must percent-encode into its backend URI.
PASSWORD_CORES = (uuid.uuid4().hex, uuid.uuid4().hex)
POSTGRES_PASSWORD = f"pg:{PASSWORD_CORES[0]}@/%?#"
MLFLOW_ADMIN_PASSWORD = f"mlflow-{PASSWORD_CORES[1]}"


@pytest.fixture(scope="module")
def stack(docker_env, classifier_image, mlflow_image, session_dir):
    """The cpu profile up (`compose up --wait`); yields URLs, then `compose down -v`."""
    names = ("CLASSIFIER", "PROXY", "MLFLOW", "PROMETHEUS", "GRAFANA")
    ports = {name: free_port() for name in names}
    env = {
        **{k: v for k, v in docker_env.items() if not k.startswith("COMPOSE_")},
        "COMPOSE_PROJECT_NAME": f"ic-test-{uuid.uuid4().hex[:6]}",
        "COMPOSE_PROFILES": "cpu",
        "CLASSIFIER_IMAGE": classifier_image,
        "CLASSIFIER_CPUS": "2",
        "CLASSIFIER_MEMORY": "6g",
        "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
        "MLFLOW_ADMIN_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_ADMIN_PASSWORD": MLFLOW_ADMIN_PASSWORD,
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
    }
    compose = [compose_binary(), "--project-directory", str(PROJECT_ROOT)]
    started = time.monotonic()
    try:
        run([*compose, "up", "-d", "--wait", "--wait-timeout", "420", *SERVICES], env, timeout=600)
        yield {
            "classifier": f"http://127.0.0.1:{ports['CLASSIFIER']}",
            "proxy": f"http://127.0.0.1:{ports['PROXY']}",
            "proxy_port": ports["PROXY"],
            "mlflow": f"http://127.0.0.1:{ports['MLFLOW']}",
            "containers": run([*compose, "ps", "-q"], env).stdout.split(),
            "docker_env": env,
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


def mlflow_credentials(username: str = MLFLOW_ADMIN, password: str = MLFLOW_ADMIN_PASSWORD):
    """MLflow's standard client variables, and nothing inherited from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}


def test_training_on_the_host_logs_to_the_stack_mlflow_and_imports(
    stack, demo_data, tmp_path, monkeypatch
):
    env = {**mlflow_credentials(), "BENTOML_HOME": str(tmp_path / "bentoml")}
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
        [sys.executable, "-m", "registry", "import", "models:/stack-shapes@champion",
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

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_ADMIN_PASSWORD)
    run_info = MlflowClient(stack["mlflow"]).get_run(labels["mlflow_run_id"]).info
    assert run_info.artifact_uri.startswith("mlflow-artifacts:"), run_info.artifact_uri
    assert run_info.status == "FINISHED"


def test_mlflow_refuses_clients_without_valid_credentials(stack, tmp_path):
    """Basic auth on: nobody without the credentials can read, move @champion or delete."""
    api = f"{stack['mlflow']}/api/2.0/mlflow"
    calls = [
        ("GET", f"{api}/experiments/search?max_results=5", None),
        ("POST", f"{api}/registered-models/alias",
         {"name": "stack-shapes", "alias": "champion", "version": "1"}),
        ("POST", f"{api}/runs/delete", {"run_id": "0" * 32}),
    ]  # fmt: skip
    wrong = (MLFLOW_ADMIN, "not-the-password-at-all")
    for method, url, body in calls:
        for auth in (None, wrong):
            response = requests.request(method, url, json=body, auth=auth, timeout=10)
            assert response.status_code == 401, (method, url, auth, response.text[:200])
    # The health check stays open (compose's healthcheck and the tools' reachability check).
    assert requests.get(f"{stack['mlflow']}/health", timeout=10).status_code == 200
    admin = (MLFLOW_ADMIN, MLFLOW_ADMIN_PASSWORD)
    assert requests.get(calls[0][1], auth=admin, timeout=10).status_code == 200
    # The project's own CLI fails fast and says which variables to set.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    started = time.monotonic()
    imported = subprocess.run(
        [sys.executable, "-m", "registry", "import", "models:/stack-shapes@champion",
         "--tracking-uri", stack["mlflow"]],
        env=env, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert imported.returncode != 0
    assert "401" in imported.stderr and "MLFLOW_TRACKING_USERNAME" in imported.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in imported.stderr
    assert time.monotonic() - started < 60


def _container_id(stack, service: str) -> str:
    label = '{{index .Config.Labels "com.docker.compose.service"}}'
    for container in stack["containers"]:
        inspected = run([DOCKER_CLI, "inspect", "-f", label, container], stack["docker_env"])
        if inspected.stdout.strip() == service:
            return container
    raise AssertionError(f"no {service} container in {stack['containers']}")


def test_no_password_is_visible_in_docker_inspect(stack):
    """Passwords reach the containers as secret files, not in their configuration."""
    env = stack["docker_env"]
    assert len(stack["containers"]) == len(SERVICES)
    inspected = run([DOCKER_CLI, "inspect", *stack["containers"]], env).stdout
    for core in PASSWORD_CORES:
        assert core not in inspected
    # ...and the services really use them (the stack would not be up otherwise): the files.
    mlflow = _container_id(stack, "mlflow")
    listed = run([DOCKER_CLI, "exec", mlflow, "ls", "/run/secrets"], env).stdout.split()
    assert {"postgres_password", "mlflow_admin_password"} <= set(listed)


def _raw_request(port: int, request: bytes, timeout_s: float = 20) -> bytes:
    """What nginx answers to ``request`` (bytes as sent), up to when it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_proxy_serves_the_classifier_and_bounds_headers_bodies_and_time(stack, png_images):
    with bentoml.SyncHTTPClient(stack["proxy"]) as client:
        assert client.classify(images=[Image.open(png_images[0])])[0]["labels"]
    proxy = stack["proxy_port"]
    # /metrics stays on the compose network, where Prometheus scrapes it.
    metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert _raw_request(proxy, metrics).split()[1] == b"404"
    # Headers beyond large_client_header_buffers (4 x 8 KiB): refused by nginx itself.
    head = b"Host: x\r\nConnection: close\r\n"
    big = b"GET /readyz HTTP/1.1\r\n" + head + b"X-Big: " + b"a" * 16384 + b"\r\n\r\n"
    status = _raw_request(proxy, big).split(b"\r\n", 1)[0]
    assert status.split()[1] in (b"400", b"431"), status
    # A body over 64 MiB (its Content-Length) is refused before it is read.
    over = b"POST /classify HTTP/1.1\r\n" + head + b"Content-Length: 67108865\r\n\r\n"
    assert _raw_request(proxy, over).split()[1] == b"413"
    # A client that never finishes its headers is cut off after client_header_timeout (10 s).
    started = time.monotonic()
    _raw_request(proxy, b"GET /readyz HTTP/1.1\r\nHost: x\r\n", timeout_s=30)
    assert 8 < time.monotonic() - started < 25


def test_mlflow_users_survive_a_restart(stack):
    """The auth store lives in PostgreSQL: a user the admin created still logs in after MLflow
    restarts (the admin alone would not tell: it is recreated from the secret at each start)."""
    api, admin = f"{stack['mlflow']}/api/2.0/mlflow", (MLFLOW_ADMIN, MLFLOW_ADMIN_PASSWORD)
    user = ("stack-reader", f"reader-{uuid.uuid4().hex}")
    created = requests.post(
        f"{api}/users/create", json={"username": user[0], "password": user[1]}, auth=admin,
        timeout=10,
    )  # fmt: skip
    assert created.status_code == 200, created.text[:300]
    run([DOCKER_CLI, "restart", _container_id(stack, "mlflow")], stack["docker_env"], timeout=120)

    def reader_logs_in():
        try:
            search = f"{api}/experiments/search?max_results=1"
            return requests.get(search, auth=user, timeout=10).status_code == 200
        except requests.RequestException:
            return False

    wait_for(reader_logs_in, 180, "the user created before the restart to log in")
