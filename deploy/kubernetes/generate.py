"""Write the Kubernetes copies of the monitoring files, so that monitoring/ stays their one home.

    python deploy/kubernetes/generate.py          # rewrite them
    python deploy/kubernetes/generate.py --check  # exit 1 if a committed copy is out of date

- base/prometheusrule.yaml: a prometheus-operator PrometheusRule whose groups are those of
  monitoring/prometheus/rules/image-classifier.yml, unchanged;
- base/grafana-dashboard.yaml: a ConfigMap holding monitoring/grafana/dashboards/
  image-classifier.json, labelled for the Grafana sidecar (`grafana_dashboard: "1"`).

Kustomize cannot read those files itself: it loads nothing from outside a kustomization's
directory. tests/integration/test_kubernetes_manifests.py checks the committed copies equal what
this script writes now.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RULES = ROOT / "monitoring" / "prometheus" / "rules" / "image-classifier.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "image-classifier.json"
PROMETHEUS_RULE = HERE / "base" / "prometheusrule.yaml"
DASHBOARD_CONFIGMAP = HERE / "base" / "grafana-dashboard.yaml"
NAME = "image-classifier"
# kube-prometheus-stack's Prometheus selects rules by its Helm release name; its Grafana sidecar
# loads ConfigMaps with this label (the sidecar's default).
RELEASE_LABEL = {"release": "kube-prometheus-stack"}
SIDECAR_LABEL = {"grafana_dashboard": "1"}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, the dashboard's JSON) as literal blocks, readable in a diff."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _header(source: Path) -> str:
    relative = source.relative_to(ROOT)
    return (
        f"# GENERATED from {relative}\n"
        "# by deploy/kubernetes/generate.py: change the source and rerun it; never edit this.\n"
    )


def _dump(document: dict[str, Any], source: Path) -> str:
    body = yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=4096)
    return _header(source) + body


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule for a Prometheus rules file's content (its `groups`)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME, **RELEASE_LABEL}},
        "spec": {"groups": rules["groups"]},
    }


def dashboard_configmap(dashboard_json: str) -> dict[str, Any]:
    """The ConfigMap the Grafana sidecar provisions the dashboard from (the JSON verbatim)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{NAME}-dashboard",
            "labels": {"app.kubernetes.io/name": NAME, **SIDECAR_LABEL},
        },
        "data": {DASHBOARD.name: dashboard_json},
    }


def render() -> dict[Path, str]:
    """Each generated file's path and the text it must hold."""
    rules = yaml.safe_load(RULES.read_text())
    return {
        PROMETHEUS_RULE: _dump(prometheus_rule(rules), RULES),
        DASHBOARD_CONFIGMAP: _dump(dashboard_configmap(DASHBOARD.read_text()), DASHBOARD),
    }


def stale(rendered: dict[Path, str]) -> list[Path]:
    """The generated files whose committed text differs from ``rendered``."""
    return [path for path, text in rendered.items() if _read(path) != text]


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        outdated = stale(rendered)
        for path in outdated:
            sys.stderr.write(f"out of date: {path.relative_to(ROOT)}\n")
        return 1 if outdated else 0
    for path, text in rendered.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
