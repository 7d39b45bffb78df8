"""Prometheus config, alert rules, the Grafana dashboard and the stack's repo files, checked
in-process: no promtool, no Compose, no subprocess (those checks are in
tests/integration/test_monitoring_tools.py)."""

from __future__ import annotations

import json
import re
import runpy
import sys

import pytest
import yaml

from serving import telemetry
from serving.settings import SERVICE_NAME, load_service_config

from ..conftest import PROJECT_ROOT
from ..support import promql

PROMETHEUS_DIR = PROJECT_ROOT / "monitoring" / "prometheus"
PROMTOOL_TESTS = PROMETHEUS_DIR / "tests" / "image-classifier.test.yml"
BUILD_DASHBOARD = PROJECT_ROOT / "monitoring" / "grafana" / "build_dashboard.py"
REQUIRED_ALERTS = {
    "ClassifierDown",
    "ClassifierHighErrorRate",
    "ClassifierHighLatencyP99",
    "ClassifierOverloaded",
    "ClassifierNoTraffic",
}
# What Prometheus appends to a metric's name in its samples (histograms, counters).
SAMPLE_SUFFIXES = ("", "_bucket", "_sum", "_count", "_total", "_created")


@pytest.fixture(scope="module")
def dashboard_module() -> dict:
    return runpy.run_path(str(BUILD_DASHBOARD))


def namespace() -> str:
    """The metrics namespace, read as the service reads it (serving/app.py)."""
    config = load_service_config(PROJECT_ROOT / "configuration.yaml")
    return config.get("metrics", {}).get("namespace") or SERVICE_NAME


def service_metric_names(bentoml_request_metrics) -> set[str]:
    """Every sample name the service can export under its namespace: serving/telemetry.py's
    metric names and BentoML's built-in request metrics."""
    defined = {
        value
        for name, value in vars(telemetry).items()
        if name.isupper() and isinstance(value, str)
    }
    assert {telemetry.FORWARD_SECONDS, telemetry.PREDICTIONS, telemetry.MODEL_INFO} <= defined
    bases = defined | set(bentoml_request_metrics)
    return {f"{namespace()}_{base}{suffix}" for base in bases for suffix in SAMPLE_SUFFIXES}


def unknown_service_metrics(names: set[str], known: set[str]) -> set[str]:
    """The names under the service's namespace that neither it nor BentoML defines."""
    return {name for name in names if name.startswith(f"{namespace()}_") and name not in known}


def promtool_test_series_names() -> set[str]:
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    return {
        name
        for test in tests
        for series in test.get("input_series", [])
        for name in promql.metric_names(series["series"])
    }


def test_dashboard_json_is_generated_from_build_dashboard(dashboard_module):
    assert promql.DASHBOARD.read_text() == dashboard_module["render"](), (
        f"regenerate it: {sys.executable} {BUILD_DASHBOARD.relative_to(PROJECT_ROOT)}"
    )


def test_dashboard_has_the_required_panels():
    dashboard = json.loads(promql.DASHBOARD.read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for needed in (
        "requests by endpoint and status",
        "error ratio",
        "latency quantiles",
        "in-flight",
        "batch size distribution",
        "forward time",
        "preprocessing",
        "predictions per label",
        "served model",
        "gpu utilisation",
    ):
        assert needed in titles, needed
    assert all(
        target["datasource" if "datasource" in target else "refId"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    )
    assert len(promql.grafana_queries()) >= 15


def test_alert_rules_cover_the_required_alerts():
    assert {name for name, _ in promql.alert_queries()} == REQUIRED_ALERTS


def test_every_alert_is_expected_to_fire_in_the_promtool_tests():
    # Each alert is expected to fire (a non-empty exp_alerts) somewhere in the tests.
    fired = {
        case["alertname"]
        for test in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {name for name, _ in promql.alert_queries()}


def test_alert_rules_use_only_metrics_the_service_defines(dashboard_module):
    """serving/telemetry.py names the service's metrics, BentoML its request metrics; the rules
    (YAML, which cannot import them) and their promtool tests are checked against both."""
    known = service_metric_names(dashboard_module["BENTOML_REQUEST_METRICS"])
    in_rules = {name for _, expr in promql.alert_queries() for name in promql.metric_names(expr)}
    assert {name for name in in_rules if name.startswith(f"{namespace()}_")}, "none checked"
    assert not unknown_service_metrics(in_rules, known)
    assert not unknown_service_metrics(promtool_test_series_names(), known)


def test_dashboard_uses_only_metrics_the_service_defines(dashboard_module):
    known = service_metric_names(dashboard_module["BENTOML_REQUEST_METRICS"])
    in_dashboard = {
        name for _, expr in promql.grafana_queries() for name in promql.metric_names(expr)
    }
    assert not unknown_service_metrics(in_dashboard, known)
    # Each of the service's own metrics has a panel.
    for name in (telemetry.FORWARD_SECONDS, telemetry.PREPROCESS_SECONDS, telemetry.MODEL_INFO):
        assert any(used.startswith(f"{namespace()}_{name}") for used in in_dashboard), name


def test_unknown_metric_names_are_caught(dashboard_module):
    known = service_metric_names(dashboard_module["BENTOML_REQUEST_METRICS"])
    typo = f"{namespace()}_request_totl"
    renamed = f"{namespace()}_model_forward_secs_bucket"
    names = {typo, renamed, f"{namespace()}_{telemetry.PREDICTIONS}_total", "up"}
    assert unknown_service_metrics(names, known) == {typo, renamed}


def test_metric_name_extraction():
    expr = (
        'sum by (endpoint) (rate(image_classifier_request_total{http_response_code=~"5.."}[1m]))'
        ' / on() group_left max(up{job="x"}) and DCGM_FI_DEV_GPU_UTIL > bool 3'
    )
    assert promql.metric_names(expr) == {
        "image_classifier_request_total",
        "up",
        "DCGM_FI_DEV_GPU_UTIL",
    }


def test_prometheus_config_scrapes_the_stack_and_loads_the_rules_folder():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"image-classifier", "prometheus", "gpu"} <= jobs


def test_no_default_passwords_in_repo_files():
    example = (PROJECT_ROOT / ".env.example").read_text()
    values = re.findall(r"^\w*PASSWORD=(.*)$", example, flags=re.MULTILINE)
    assert values and all(value.split("#")[0].strip() == "" for value in values)
    compose = (PROJECT_ROOT / "docker-compose.yml").read_text()
    references = re.findall(r"\$\{(\w*PASSWORD)\b([^}]*)\}", compose)
    assert references and all(rest.startswith(":?") for _, rest in references), references
    # The one password file the user may point to has no default but an empty file.
    assert re.findall(r"\$\{(\w*PASSWORD_FILE)([^}]*)\}", compose) == [
        ("CLASSIFIER_MLFLOW_PASSWORD_FILE", ":-/dev/null")
    ]


def test_grafana_provisioning_matches_the_dashboard():
    grafana = PROJECT_ROOT / "monitoring" / "grafana"
    datasources = yaml.safe_load(
        (grafana / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    dashboard = json.loads(promql.DASHBOARD.read_text())
    # Every panel uses the provisioned datasource, by uid.
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert uids == {datasources[0]["uid"]}
    # It reaches Prometheus by its compose service name and port.
    assert datasources[0]["url"] == "http://prometheus:9090"
