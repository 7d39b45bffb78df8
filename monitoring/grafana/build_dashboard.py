"""Write dashboards/image-classifier.json, the provisioned Grafana dashboard.

The panels are defined here, readably, and the JSON is generated: `python
monitoring/grafana/build_dashboard.py`. A test checks the committed JSON is up to date, that
every query parses (promtool) and that every metric it names is exported by the running service
(or, for GPU panels, by NVIDIA's DCGM exporter).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("dashboards") / "image-classifier.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
CLASSIFY = 'endpoint="/classify"'


def quantile(q: float, metric: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def error_ratio(status_class: str) -> str:
    total = f"sum by (endpoint) (rate(image_classifier_request_total[{RATE}]))"
    errors = (
        f"sum by (endpoint) (rate(image_classifier_request_total"
        f'{{http_response_code=~"{status_class}.."}}[{RATE}]))'
    )
    # `or total * 0`: a flat 0 instead of "No data" while there are no such errors.
    return f"({errors} or {total} * 0) / {total}"


def panel(title, targets, *, kind="timeseries", unit="short", description="", width=12, **extra):
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, **target_extra}
            for i, (expr, legend, *rest) in enumerate(targets)
            for target_extra in [rest[0] if rest else {}]
        ],
        **extra,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}}


def service_panels():
    return [
        row("Traffic"),
        panel(
            "Requests by endpoint and status",
            [
                (
                    f"sum by (endpoint, http_response_code) "
                    f"(rate(image_classifier_request_total[{RATE}]))",
                    "{{endpoint}} {{http_response_code}}",
                )
            ],
            unit="reqps",
        ),
        panel(
            "Error ratio by endpoint (4xx, 5xx)",
            [(error_ratio(c), f"{{{{endpoint}}}} {c}xx") for c in "45"],
            unit="percentunit",
            description="Share of requests answered 4xx / 5xx; 0 when there are none.",
        ),
        panel(
            "/classify latency quantiles",
            [
                (quantile(q, "image_classifier_request_duration_seconds", CLASSIFY), f"p{p}")
                for q, p in ((0.5, 50), (0.9, 90), (0.99, 99))
            ],
            unit="s",
        ),
        panel(
            "In-flight requests",
            [("sum by (endpoint) (image_classifier_request_in_progress)", "{{endpoint}}")],
        ),
        row("Batching and model"),
        panel(
            "Adaptive batch size distribution",
            [
                (
                    f"sum by (le) (increase(bentoml_service_adaptive_batch_size_bucket[{RATE}]))",
                    "{{le}}",
                    {"format": "heatmap"},
                )
            ],
            kind="heatmap",
            description="How many images each forward pass got: batches per batch-size bucket.",
        ),
        panel(
            "Mean batch size",
            [
                (
                    f"sum(rate(bentoml_service_adaptive_batch_size_sum[{RATE}])) / "
                    f"sum(rate(bentoml_service_adaptive_batch_size_count[{RATE}]))",
                    "images per batch",
                )
            ],
        ),
        panel(
            "Model forward time per batch",
            [
                (quantile(q, "image_classifier_model_forward_seconds"), f"p{p}")
                for q, p in ((0.5, 50), (0.99, 99))
            ],
            unit="s",
        ),
        panel(
            "Preprocessing time",
            [
                (quantile(0.5, "image_classifier_preprocess_seconds"), "batch transform p50"),
                (quantile(0.99, "image_classifier_preprocess_seconds"), "batch transform p99"),
                (quantile(0.5, "image_classifier_image_decode_seconds"), "decode per image p50"),
                (quantile(0.99, "image_classifier_image_decode_seconds"), "decode per image p99"),
            ],
            unit="s",
        ),
        panel(
            "Predictions per label",
            [
                (
                    f"sum by (label) (rate(image_classifier_predictions_total[{RATE}]))",
                    "{{label}}",
                )
            ],
            unit="reqps",
            description="Top-1 label (single-label) or every label over threshold (multi-label).",
        ),
        panel(
            "Served model",
            [
                (
                    "max by (model_tag, mlflow_model, mlflow_version, mlflow_run_id, "
                    "architecture, task, device) (image_classifier_model_info)",
                    "",
                    {"format": "table", "instant": True},
                )
            ],
            kind="table",
            description="Model tag and MLflow lineage reported by each running classifier.",
        ),
        panel(
            "Classifier up",
            [('up{job="image-classifier"}', "{{instance}}")],
            kind="stat",
        ),
    ]


def gpu_panels():
    return [
        row("GPU (gpu profile: NVIDIA DCGM exporter)"),
        panel("GPU utilisation", [("DCGM_FI_DEV_GPU_UTIL", "GPU {{gpu}}")], unit="percent"),
        panel(
            "GPU memory used",
            [("DCGM_FI_DEV_FB_USED * 1024 * 1024", "GPU {{gpu}}")],
            unit="bytes",
        ),
        panel("GPU temperature", [("DCGM_FI_DEV_GPU_TEMP", "GPU {{gpu}}")], unit="celsius"),
        panel("GPU power", [("DCGM_FI_DEV_POWER_USAGE", "GPU {{gpu}}")], unit="watt"),
    ]


def layout(panels):
    x = y = 0
    for panel_id, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24 or item["type"] == "row":
            x, y = 0, y + (8 if x else 0)
        grid.update(x=x, y=y)
        item["id"] = panel_id
        x += grid["w"]
        if item["type"] == "row":
            x, y = 0, y + 1
    return panels


def dashboard():
    return {
        "uid": "image-classifier",
        "title": "Image classifier",
        "tags": ["image-classifier", "bentoml"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": layout(service_panels() + gpu_panels()),
        "templating": {"list": []},
        "annotations": {"list": []},
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
