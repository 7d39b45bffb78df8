"""The service's own Prometheus metrics, and the names the dashboard and alerts rely on."""

from __future__ import annotations

import re

import bentoml
import pytest
import requests
from PIL import Image

from ..support import promql
from .conftest import bentoml_server


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture(scope="module")
def served_metrics(single_label_bento, png_images, session_dir):
    """/metrics of a real server after classifying every held-out PNG once."""
    with bentoml_server(str(single_label_bento.tag), session_dir / "metrics-serve.log") as url:
        with bentoml.SyncHTTPClient(url) as client:
            results = [client.classify(images=[Image.open(path)]) for path in png_images]
            client.classify(images=[Image.open(p) for p in png_images[:4]])
        # A rejected upload exercises the error series the error-rate panels read.
        requests.post(f"{url}/classify", files={"images": ("x.txt", b"not an image")}, timeout=30)
        text = requests.get(f"{url}/metrics", timeout=10).text
    top1 = [result[0]["labels"][0]["label"] for result in results]
    return text, top1, single_label_bento


def test_service_metrics_count_what_was_served(served_metrics):
    text, top1, bento = served_metrics
    n_requests = len(top1) + 1  # + one 4-image request
    for label in set(top1):  # the 4-image request may add to some labels
        assert sample(text, "image_classifier_predictions_total", label=label) >= top1.count(label)
    total_predictions = sum(
        sample(text, "image_classifier_predictions_total", label=label) or 0
        for label in bento.info.metadata["labels"]
    )
    assert total_predictions == len(top1) + 4  # the top-1 label of every image classified
    # Every image decoded is timed; the text file is refused from its header, before decoding.
    assert sample(text, "image_classifier_image_decode_seconds_count") == len(top1) + 4
    # One forward per batch: at most one per request, at least one.
    forwards = sample(text, "image_classifier_model_forward_seconds_count")
    assert 1 <= forwards <= n_requests
    assert sample(text, "image_classifier_preprocess_seconds_count") == forwards
    assert sample(text, "image_classifier_model_forward_seconds_sum") > 0
    info = sample(
        text,
        "image_classifier_model_info",
        model_tag=str(bento.tag),
        mlflow_model=bento.info.labels["mlflow_registered_name"],
        mlflow_version=bento.info.labels["mlflow_version"],
        task="single_label",
        device="cpu",
    )
    assert info == 1.0


def test_every_metric_in_the_dashboard_and_alerts_is_exported(served_metrics):
    text, _, _ = served_metrics
    exported = promql.exported_sample_names(text)
    queries = promql.grafana_queries() + promql.alert_queries()
    named = {
        (where, name)
        for where, expr in queries
        for name in promql.metric_names(expr)
        if not promql.NOT_FROM_SERVICE.match(name)
    }
    assert len({name for _, name in named}) >= 8
    missing = sorted((where, name) for where, name in named if name not in exported)
    assert not missing, f"not exported by the service: {missing}"
