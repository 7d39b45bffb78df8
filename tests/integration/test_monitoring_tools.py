"""Prometheus config, alert rules (with promtool unit tests), the Grafana dashboard's queries and
the compose file, checked with the real tools: promtool and Compose v2. Without promtool these
skip (fail under CI, see tests/support/tools.py); the in-process checks of the same files are in
tests/unit/test_monitoring.py."""

from __future__ import annotations

import json
import os
import re
import subprocess

import yaml

from ..conftest import PROJECT_ROOT
from ..support import promql
from ..support.tools import compose_binary, promtool

PROMETHEUS_DIR = PROJECT_ROOT / "monitoring" / "prometheus"


def run(*cmd: str, cwd=PROJECT_ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_prometheus_config_is_valid_and_loads_the_rules(tmp_path):
    # The config names the rules by their path in the container; check a copy whose glob points
    # at the repo's rules, so promtool validates the config and the rule files it loads.
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run(promtool(), "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout + result.stderr


def test_alert_rules_are_valid():
    result = run(promtool(), "check", "rules", str(promql.ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_promtool_unit_tests():
    # Which alerts the tests expect to fire is checked in tests/unit/test_monitoring.py.
    tests_file = PROMETHEUS_DIR / "tests" / "image-classifier.test.yml"
    result = run(promtool(), "test", "rules", tests_file.name, cwd=tests_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_parses(tmp_path):
    # promtool parses every expression of a rules file: one recording rule per panel query.
    queries = promql.grafana_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    result = run(promtool(), "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(profiles: str, **env: str) -> subprocess.CompletedProcess:
    # Only the variables given here: not the shell's, not a developer's .env.
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    return run(
        compose_binary(),
        "--project-directory",
        str(PROJECT_ROOT),
        "--env-file",
        os.devnull,
        "config",
        "--format",
        "json",
        env={**base, "COMPOSE_PROFILES": profiles, **env},
    )


PASSWORDS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "MLFLOW_ADMIN_PASSWORD": "mlflow-secret",
    "GRAFANA_ADMIN_PASSWORD": "gf-secret",
}


def test_compose_file_is_valid_for_both_profiles():
    result = compose_config("gpu,cpu", **PASSWORDS)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"classifier", "classifier-cpu", "gpu-exporter", "proxy", "postgres", "mlflow",
            "prometheus", "grafana"} <= services.keys()  # fmt: skip
    gpu = services["classifier"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["driver"] == "nvidia" and gpu[0]["capabilities"] == ["gpu"]
    assert "reservations" not in services["classifier-cpu"]["deploy"]["resources"]
    assert services["classifier-cpu"]["environment"]["CLASSIFIER_DEVICE"] == "cpu"
    # Unless the user picks one, the image's own (packaged) model is served.
    # Not even an empty entry: Docker would then drop the image's own (packaged) model tag.
    assert "CLASSIFIER_MODEL_TAG" not in services["classifier-cpu"]["environment"]
    for name in ("classifier", "classifier-cpu"):
        service = services[name]
        assert service["image"] == services["classifier-cpu"]["image"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["restart"] == "unless-stopped"
        assert service["deploy"]["resources"]["limits"]["memory"]
    # Nothing is published beyond loopback unless BIND_ADDRESS says so; postgres not at all.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    assert not services["postgres"].get("ports")


def test_compose_refuses_to_start_without_passwords():
    assert compose_config("cpu").returncode != 0
    for missing in PASSWORDS:
        others = {name: value for name, value in PASSWORDS.items() if name != missing}
        result = compose_config("cpu", **others)
        assert result.returncode != 0, missing
        assert missing in result.stderr


def test_compose_publishes_beyond_loopback_only_when_asked_and_the_classifier_never():
    result = compose_config("gpu,cpu", BIND_ADDRESS="0.0.0.0", **PASSWORDS)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("grafana", "proxy", "mlflow"):
        assert services[name]["ports"][0]["host_ip"] == "0.0.0.0", name
    # Beyond this host the classifier is reached only through the buffering proxy.
    for name in ("classifier", "classifier-cpu"):
        assert [port["host_ip"] for port in services[name]["ports"]] == ["127.0.0.1"], name
    proxy = services["proxy"]
    mounts = {v["target"]: v["source"] for v in proxy["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"].endswith("deploy/proxy/nginx.conf")
    assert proxy["ports"][0]["target"] == 8080


def test_no_password_is_in_any_container_configuration():
    """Passwords travel as compose secrets (files under /run/secrets), so `docker inspect`
    cannot show them: no service's environment, command or labels holds one."""
    result = compose_config("gpu,cpu", **PASSWORDS)
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    for name, service in project["services"].items():
        exposed = json.dumps(
            {key: service.get(key) for key in ("environment", "command", "labels", "entrypoint")}
        )
        for password in PASSWORDS.values():
            assert password not in exposed, (name, password)
    secrets = project["secrets"]
    # The classifier's MLflow password (CLASSIFIER_MODEL_URI) is a file the user points to:
    # compose copies environment-sourced secrets into the container, which its read-only root
    # refuses. Unset, it is an empty file.
    assert secrets.pop("classifier_mlflow_password")["file"] == "/dev/null"
    assert {name: secret["environment"] for name, secret in secrets.items()} == {
        "postgres_password": "POSTGRES_PASSWORD",
        "mlflow_admin_password": "MLFLOW_ADMIN_PASSWORD",
        "grafana_admin_password": "GRAFANA_ADMIN_PASSWORD",
    }
    services = project["services"]
    uses = {name: {s["source"] for s in svc.get("secrets", [])} for name, svc in services.items()}
    for classifier in ("classifier", "classifier-cpu"):
        assert uses[classifier] == {"classifier_mlflow_password"}
        assert services[classifier]["environment"]["CLASSIFIER_MLFLOW_PASSWORD_FILE"] == (
            "/run/secrets/classifier_mlflow_password"
        )
    assert uses["postgres"] == {"postgres_password"}
    assert uses["mlflow"] == {"postgres_password", "mlflow_admin_password"}
    assert uses["grafana"] == {"grafana_admin_password"}
    postgres_env = services["postgres"]["environment"]
    assert postgres_env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )


def test_grafana_is_pinned_to_the_patch_release_the_readme_names():
    result = compose_config("cpu", **PASSWORDS)
    image = json.loads(result.stdout)["services"]["grafana"]["image"]
    version = re.fullmatch(r"grafana/grafana:(\d+\.\d+\.\d+)", image)
    assert version, f"{image}: pin a specific patch release"
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert re.search(rf"Grafana {re.escape(version.group(1))}\b.*latest patched release", readme)


def test_grafana_provisioning_matches_the_compose_mounts():
    # The datasource's uid and URL are checked in tests/unit/test_monitoring.py.
    grafana = PROJECT_ROOT / "monitoring" / "grafana"
    providers = yaml.safe_load(
        (grafana / "provisioning" / "dashboards" / "image-classifier.yml").read_text()
    )["providers"]
    compose = compose_config("gpu,cpu", **PASSWORDS)
    services = json.loads(compose.stdout)["services"]
    assert "prometheus" in services
    mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"] if "source" in v}
    # The provider's path and the dashboards folder are the ones compose mounts.
    assert mounts[providers[0]["options"]["path"]].endswith("monitoring/grafana/dashboards")
    assert mounts["/etc/grafana/provisioning"].endswith("monitoring/grafana/provisioning")
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{providers[0]['options']['path']}/{promql.DASHBOARD.name}"
    prometheus_mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus"].endswith("monitoring/prometheus")
