"""Prometheus metrics the service exports beyond BentoML's built-in request metrics.

The Grafana dashboard and the alert rules in ``monitoring/`` are built on these names; the tests
check every metric they use against a running service's ``/metrics``.

``prometheus_client`` is imported in :func:`install`, which the service calls from its worker:
BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` only after the service module is imported, and a
client imported earlier would silently record into a registry that ``/metrics`` never reads.
:func:`install` returns the :class:`ServiceMetrics` that the runtime and the request decoder
record into; in-process users (tests, the benchmark's ceiling) pass :data:`NO_METRICS`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# The buckets span per-batch model time from a GPU's to a small CPU's, and per-image decode
# from a small image's to a large JPEG's. Figures: docs/performance.md, "Metric buckets".
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
    """The service's own metrics; each field is a prometheus_client metric, or None to record
    nothing."""

    forward_seconds: Any = None
    preprocess_seconds: Any = None
    decode_seconds: Any = None
    predictions: Any = None
    model_info: Any = None

    def time_forward(self):
        return _timed(self.forward_seconds)

    def time_preprocess(self):
        return _timed(self.preprocess_seconds)

    def time_decode(self):
        return _timed(self.decode_seconds)

    def count_predictions(self, labels: Iterable[str]) -> None:
        if self.predictions is None:
            return
        for label in labels:
            self.predictions.labels(label=label).inc()

    def publish_model_info(self, model_info: dict[str, str]) -> None:
        if self.model_info is not None:
            self.model_info.labels(**model_info).set(1)


NO_METRICS = ServiceMetrics()

# prometheus_client registers every metric in its process-wide default registry, which refuses
# a name twice: the metrics are created once per process and handed to every caller.
_created: dict[str, ServiceMetrics] = {}


def install(namespace: str, model_info_labels: Iterable[str]) -> ServiceMetrics:
    """This process's metrics under ``namespace`` (created on the first call)."""
    if namespace not in _created:
        _created[namespace] = _create(namespace, sorted(model_info_labels))
    return _created[namespace]


def _create(namespace: str, model_info_labels: list[str]) -> ServiceMetrics:
    import prometheus_client as prom

    return ServiceMetrics(
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
            model_info_labels,
            # One series per label set across workers, dropped when a worker exits.
            multiprocess_mode="livemax",
        ),
    )


@contextmanager
def _timed(histogram: Any) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        if histogram is not None:
            histogram.observe(time.perf_counter() - started)
