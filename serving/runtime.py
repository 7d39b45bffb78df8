"""The serving stack for one model, built in one place.

:func:`build_runtime` is what the service, the benchmark's in-process ceiling and the fast-path
agreement test all use, so they measure and check exactly what is served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from models.device import WorkerSlot
from models.labels import LabelScore, Task
from models.predictor import Predictor

from .decoding import RequestDecoder
from .options import ClassifyOptions
from .settings import ServingSettings
from .telemetry import NO_METRICS, ServiceMetrics
from .torch_thread import TorchThread

logger = logging.getLogger(__name__)


def warmup_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch_size`` (and it): the shapes adaptive batching will form
    most, so the first requests do not pay for kernel selection (oneDNN/cuDNN) at each shape."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return tuple(dict.fromkeys([*sizes, max_batch_size]))


@dataclass
class Runtime:
    """A loaded model with everything that serves it: the torch thread every torch call runs
    on, the request decoder for its preprocessing, and the metrics both record into."""

    predictor: Predictor
    torch_thread: TorchThread
    decoder: RequestDecoder
    max_batch_size: int
    metrics: ServiceMetrics
    owns_torch_thread: bool = True

    async def classify(
        self,
        images: list[Image.Image | torch.Tensor],
        options: Sequence[ClassifyOptions] | None = None,
    ) -> list[list[LabelScore]]:
        """One batch, on the torch thread, without blocking the event loop."""
        return await self.torch_thread.run(self.classify_batch, images, options)

    def classify_batch(
        self,
        images: list[Image.Image | torch.Tensor],
        options: Sequence[ClassifyOptions] | None = None,
    ) -> list[list[LabelScore]]:
        """One batch on the calling thread (call it on the torch thread). Images are PIL ones or
        prepared tensors on the model's device (``jpeg_decoder``), mixed as decoding left them;
        ``options`` are each image's request's (None: the model's defaults for all)."""
        with self.metrics.time_preprocess():
            batch = self.predictor.preprocess(images)
        with self.metrics.time_forward():
            scores = self.predictor.scores(batch)
        results = self.decode(scores, options)
        # Single-label answers are ranked top-k lists: count what the client acts on, the top-1.
        multi_label = self.predictor.spec.task is Task.MULTI_LABEL
        self.metrics.count_predictions(
            score.label for labels in results for score in (labels if multi_label else labels[:1])
        )
        return results

    def decode(
        self, scores: torch.Tensor, options: Sequence[ClassifyOptions] | None
    ) -> list[list[LabelScore]]:
        """Each row's labels under its own options: one decode per distinct set of options in
        the batch (one, usually)."""
        if options is None:
            return self.predictor.decode(scores)
        results: list[list[LabelScore]] = [[] for _ in options]
        for chosen, rows in _rows_by_options(options).items():
            decoded = self.predictor.decode(scores[rows], chosen.top_k, chosen.threshold)
            for row, labels in zip(rows, decoded, strict=True):
                # top_k caps a multi-label answer too (a single-label one already has k labels).
                results[row] = labels[: chosen.top_k] if chosen.top_k else labels
        return results

    def close(self) -> None:
        self.decoder.close()
        if self.owns_torch_thread:
            self.torch_thread.close()


def _rows_by_options(options: Sequence[ClassifyOptions]) -> dict[ClassifyOptions, list[int]]:
    rows: dict[ClassifyOptions, list[int]] = {}
    for row, chosen in enumerate(options):
        rows.setdefault(chosen, []).append(row)
    return rows


def build_runtime(
    settings: ServingSettings,
    artifact_dir: str | Path,
    *,
    metrics: ServiceMetrics = NO_METRICS,
    warmup: bool = True,
    torch_thread: TorchThread | None = None,
    worker: WorkerSlot | None = None,
    torch_threads: int | None = None,
) -> Runtime:
    """Load the artifact on a new torch thread, build its request decoder and warm it up for
    the batch sizes adaptive batching will form. Loading errors propagate unchanged.

    In-process users that run other torch work (the benchmark prepares models) pass their own
    ``torch_thread`` and do all of it there: a second thread running torch ops slows both
    (serving/torch_thread.py), and the runtime would then measure slower than it serves.
    ``worker`` places a served worker on one of several GPUs (models/device.py);
    ``torch_threads`` sets torch's intra-op threads (on the torch thread, whose OpenMP team they
    are) before the model loads; None leaves torch's default (all usable cores).
    """
    owns_torch_thread = torch_thread is None
    torch_thread = torch_thread or TorchThread()
    try:
        if torch_threads is not None:
            torch_thread.call(torch.set_num_threads, torch_threads)
        predictor = torch_thread.call(
            Predictor.from_artifact,
            artifact_dir,
            device=settings.device,
            precision=settings.precision,
            worker=worker,
            compile_mode=settings.compile_mode,
        )
        max_batch_size = settings.batch_size_limit()
        if warmup:
            torch_thread.call(predictor.warmup, batch_sizes=warmup_batch_sizes(max_batch_size))
    except BaseException:
        if owns_torch_thread:
            torch_thread.close()
        raise
    decoder = RequestDecoder.from_settings(
        settings,
        preprocessing=predictor.preprocessing,
        metrics=metrics,
        tensor_device=jpeg_decode_device(settings.jpeg_decoder, predictor=predictor),
    )
    return Runtime(
        predictor=predictor,
        torch_thread=torch_thread,
        decoder=decoder,
        max_batch_size=max_batch_size,
        metrics=metrics,
        owns_torch_thread=owns_torch_thread,
    )


def jpeg_decode_device(choice: str, *, predictor: Predictor) -> torch.device | None:
    """Where torchvision decodes JPEG uploads (``jpeg_decoder``), or None for PIL.

    ``auto`` takes nvjpeg on a CUDA model only: on a CPU, PIL's reduced-size DCT decode does
    less work than torchvision's full decode and resize (docs/performance.md).
    """
    device = predictor.plan.device
    wanted = choice == "torchvision" or (choice == "auto" and device.type == "cuda")
    if wanted and not predictor.preprocessing.supports_tensors:
        logger.warning(
            "jpeg_decoder=%s: this model's resize/crop (%s) runs on PIL images only; "
            "decoding JPEGs with PIL",
            choice,
            predictor.spec.preprocessing.crop_mode,
        )
        return None
    return device if wanted else None
