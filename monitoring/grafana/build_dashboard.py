"""Write dashboards/image-classifier.json, the provisioned Grafana dashboard.

The panels are defined here with Grafana's own builders (grafana-foundation-sdk, which also
places them on the grid), and the JSON is generated: `python
monitoring/grafana/build_dashboard.py`. Metric names are not typed here: the service's own come
from serving/telemetry.py, the namespace from configuration.yaml (metrics.namespace, as the
service reads it), and BentoML's built-in request metrics are named once below. Tests check the
committed JSON is up to date, that every query parses (promtool) and that every metric it names
is exported by the running service (or, for GPU panels, by NVIDIA's DCGM exporter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

from grafana_foundation_sdk.builders import dashboard as dashboard_builder  # noqa: E402
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import dashboard as dashboard_model  # noqa: E402
from grafana_foundation_sdk.models.prometheus import PromQueryFormat  # noqa: E402

from serving import telemetry  # noqa: E402
from serving.settings import SERVICE_NAME, load_service_config  # noqa: E402

OUT = Path(__file__).with_name("dashboards") / "image-classifier.json"
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"
CLASSIFY = 'endpoint="/classify"'

# The namespace BentoML and the service put in front of every metric name (serving/app.py).
NAMESPACE = (
    load_service_config(ROOT / "configuration.yaml").get("metrics", {}).get("namespace")
    or SERVICE_NAME
)
# BentoML's built-in per-request metrics, under the namespace; the adaptive batcher's histogram
# has a fixed name.
BENTOML_REQUEST_METRICS = ("request_total", "request_duration_seconds", "request_in_progress")
ADAPTIVE_BATCH_SIZE = "bentoml_service_adaptive_batch_size"


def metric(name: str) -> str:
    """A metric's full name: ``name`` (a serving.telemetry constant or BentoML's) namespaced."""
    return f"{NAMESPACE}_{name}"


REQUEST_TOTAL, REQUEST_DURATION, REQUEST_IN_PROGRESS = map(metric, BENTOML_REQUEST_METRICS)
FORWARD_SECONDS = metric(telemetry.FORWARD_SECONDS)
PREPROCESS_SECONDS = metric(telemetry.PREPROCESS_SECONDS)
DECODE_SECONDS = metric(telemetry.DECODE_SECONDS)
PREDICTIONS_TOTAL = metric(telemetry.PREDICTIONS) + "_total"  # a counter
MODEL_INFO = metric(telemetry.MODEL_INFO)


def quantile(q: float, metric: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def error_ratio(status_class: str) -> str:
    total = f"sum by (endpoint) (rate({REQUEST_TOTAL}[{RATE}]))"
    errors = (
        f"sum by (endpoint) (rate({REQUEST_TOTAL}"
        f'{{http_response_code=~"{status_class}.."}}[{RATE}]))'
    )
    # `or total * 0`: a flat 0 instead of "No data" while there are no such errors.
    return f"({errors} or {total} * 0) / {total}"


PANEL_KINDS = {
    "timeseries": timeseries.Panel,
    "heatmap": heatmap.Panel,
    "table": table.Panel,
    "stat": stat.Panel,
}


def query(expr: str, legend: str, *, ref_id: str, heatmap_format=False, instant=False):
    target = prometheus.Dataquery().ref_id(ref_id).expr(expr).legend_format(legend)
    if heatmap_format:
        target = target.format(PromQueryFormat.HEATMAP)
    if instant:
        target = target.format(PromQueryFormat.TABLE).instant()
    return target


def panel(title, targets, *, kind="timeseries", unit="short", description="", width=12):
    """A panel of ``kind`` with one Prometheus query per ``(expr, legend, options)`` target."""
    builder = (
        PANEL_KINDS[kind]()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
    )
    for index, (expr, legend, *options) in enumerate(targets):
        builder = builder.with_target(
            query(expr, legend, ref_id=chr(ord("A") + index), **(options[0] if options else {}))
        )
    return builder


def row(title):
    return dashboard_builder.Row(title)


def service_panels():
    return [
        row("Traffic"),
        panel(
            "Requests by endpoint and status",
            [
                (
                    f"sum by (endpoint, http_response_code) (rate({REQUEST_TOTAL}[{RATE}]))",
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
                (quantile(q, REQUEST_DURATION, CLASSIFY), f"p{p}")
                for q, p in ((0.5, 50), (0.9, 90), (0.99, 99))
            ],
            unit="s",
        ),
        panel(
            "In-flight requests",
            [(f"sum by (endpoint) ({REQUEST_IN_PROGRESS})", "{{endpoint}}")],
        ),
        row("Batching and model"),
        panel(
            "Adaptive batch size distribution",
            [
                (
                    f"sum by (le) (increase({ADAPTIVE_BATCH_SIZE}_bucket[{RATE}]))",
                    "{{le}}",
                    {"heatmap_format": True},
                )
            ],
            kind="heatmap",
            description="How many images each forward pass got: batches per batch-size bucket.",
        ),
        panel(
            "Mean batch size",
            [
                (
                    f"sum(rate({ADAPTIVE_BATCH_SIZE}_sum[{RATE}])) / "
                    f"sum(rate({ADAPTIVE_BATCH_SIZE}_count[{RATE}]))",
                    "images per batch",
                )
            ],
        ),
        panel(
            "Model forward time per batch",
            [(quantile(q, FORWARD_SECONDS), f"p{p}") for q, p in ((0.5, 50), (0.99, 99))],
            unit="s",
        ),
        panel(
            "Preprocessing time",
            [
                (quantile(0.5, PREPROCESS_SECONDS), "batch transform p50"),
                (quantile(0.99, PREPROCESS_SECONDS), "batch transform p99"),
                (quantile(0.5, DECODE_SECONDS), "decode per image p50"),
                (quantile(0.99, DECODE_SECONDS), "decode per image p99"),
            ],
            unit="s",
        ),
        panel(
            "Predictions per label",
            [
                (
                    f"sum by (label) (rate({PREDICTIONS_TOTAL}[{RATE}]))",
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
                    f"architecture, task, device) ({MODEL_INFO})",
                    "",
                    {"instant": True},
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


def dashboard() -> dashboard_model.Dashboard:
    builder = (
        dashboard_builder.Dashboard("Image classifier")
        .uid("image-classifier")
        .tags(["image-classifier", "bentoml"])
        .timezone("browser")
        .version(1)
        .readonly()
        .refresh("10s")
        .time("now-1h", "now")
    )
    for panel_id, item in enumerate(service_panels() + gpu_panels(), start=1):
        if isinstance(item, dashboard_builder.Row):
            builder = builder.with_row(item.id(panel_id))
        else:
            builder = builder.with_panel(item.id(panel_id))
    built = builder.build()
    for item in built.panels:
        # The builders leave a panel's options null unless one is set; Grafana's own JSON model
        # has an object there, so it is written as one.
        if getattr(item, "options", False) is None:
            item.options = {}
    return built


def render() -> str:
    return json.dumps(dashboard(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
