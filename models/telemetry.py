"""Prometheus metrics the service exports beyond BentoML's built-in request metrics.

The Grafana dashboard and the alert rules in ``monitoring/`` are built on these names; the tests
check every metric they use against a running service's ``/metrics``.

``prometheus_client`` is imported in :func:`install`, which the service calls from its worker:
BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` only after the service module is imported, and a
client imported earlier would silently record into a registry that ``/metrics`` never reads.
Until ``install`` runs (in-process use, tests, training) the ``time_*`` and
``count_predictions`` helpers record nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Per-batch model time on a 2-core CPU ranges from ~10 ms (batch of 1, small model) to seconds;
# on a GPU it is a few ms. Per-image decode is sub-millisecond to ~50 ms for large JPEGs.
BATCH_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DECODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The metric names, without the namespace prefix (configuration.yaml: metrics.namespace).
FORWARD_SECONDS = "model_forward_seconds"
PREPROCESS_SECONDS = "preprocess_seconds"
DECODE_SECONDS = "image_decode_seconds"
PREDICTIONS = "predictions"  # a counter: exported as <namespace>_predictions_total
MODEL_INFO = "model_info"


@dataclass(frozen=True)
class ServiceMetrics:
    forward_seconds: Any
    preprocess_seconds: Any
    decode_seconds: Any
    predictions: Any
    model_info: Any


_metrics: ServiceMetrics | None = None


def install(namespace: str, model_info: dict[str, str]) -> ServiceMetrics:
    """Create the metrics (once per process) and publish ``model_info`` as a constant gauge."""
    global _metrics
    if _metrics is None:
        import prometheus_client as prom

        _metrics = ServiceMetrics(
            forward_seconds=prom.Histogram(
                f"{namespace}_{FORWARD_SECONDS}",
                "Model forward pass per batch, including host-device copies (seconds)",
                buckets=BATCH_BUCKETS,
            ),
            preprocess_seconds=prom.Histogram(
                f"{namespace}_{PREPROCESS_SECONDS}",
                "Assemble one batch: stack and normalise the prepared images (seconds)",
                buckets=BATCH_BUCKETS,
            ),
            decode_seconds=prom.Histogram(
                f"{namespace}_{DECODE_SECONDS}",
                "Decode, resize and crop one uploaded image whose header passed the checks, before "
                "batching (seconds)",
                buckets=DECODE_BUCKETS,
            ),
            predictions=prom.Counter(
                f"{namespace}_{PREDICTIONS}",
                "Labels returned: the top-1 label (single-label) or each label over its "
                "threshold (multi-label)",
                ["label"],
            ),
            model_info=prom.Gauge(
                f"{namespace}_{MODEL_INFO}",
                "The served model; always 1, the labels carry the facts",
                sorted(model_info),
                # One series per label set across workers, dropped when a worker exits.
                multiprocess_mode="livemax",
            ),
        )
    _metrics.model_info.labels(**model_info).set(1)
    return _metrics


@contextmanager
def _timed(histogram_name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        if _metrics is not None:
            getattr(_metrics, histogram_name).observe(time.perf_counter() - started)


def time_forward():
    return _timed("forward_seconds")


def time_preprocess():
    return _timed("preprocess_seconds")


def time_decode():
    return _timed("decode_seconds")


def count_predictions(labels: Iterable[str]) -> None:
    if _metrics is None:
        return
    for label in labels:
        _metrics.predictions.labels(label=label).inc()
