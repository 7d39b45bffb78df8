"""Read the queries in the Grafana dashboard and the alert rules, and the metric names in them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "image-classifier.json"
ALERT_RULES = MONITORING / "prometheus" / "rules" / "image-classifier.yml"

# Series that come from Prometheus itself or from NVIDIA's DCGM exporter (gpu profile), not from
# the classifier; the classifier's own /metrics is checked for every other name.
NOT_FROM_SERVICE = re.compile(r"^(up|DCGM_FI_\w+)$")

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def grafana_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, Grafana's variables replaced by durations."""
    queries = []
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def alert_queries(path: Path = ALERT_RULES) -> list[tuple[str, str]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a light tokenizer, enough for our own queries)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()[:1]
        if following == "(" or match.group() in _KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    return names


def exported_sample_names(metrics_text: str) -> set[str]:
    """Every sample name in a Prometheus text exposition (histograms as _bucket/_sum/_count)."""
    names = set()
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
