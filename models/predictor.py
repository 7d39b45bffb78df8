"""In-process inference: the same code path the service and evaluation use."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .artifact import ModelSpec, load_artifact
from .device import DevicePlan, choose_device
from .labels import (
    LabelScore,
    Task,
    scores_from_logits,
    thresholded_predictions,
    thresholds_tensor,
    top_k_predictions,
)
from .preprocessing import EvalPreprocessing

logger = logging.getLogger(__name__)


class Predictor:
    """A loaded classifier: images in, labelled scores out."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: DevicePlan) -> None:
        self.spec = spec
        self.plan = device
        self.labels = spec.label_set
        self.preprocessing = EvalPreprocessing(spec.preprocessing)
        memory_format = torch.channels_last if device.channels_last else torch.contiguous_format
        self.model = model.eval().to(device.device, memory_format=memory_format)
        self._thresholds = thresholds_tensor(self.labels, spec.threshold, spec.class_thresholds)

    @classmethod
    def from_artifact(
        cls, directory: str | Path, device: str = "auto", precision: str = "auto"
    ) -> Predictor:
        model, spec = load_artifact(directory)
        plan = choose_device(device, precision)
        logger.info(
            "Loaded %s (%s, %d labels) on %s",
            spec.architecture,
            spec.task.value,
            spec.num_classes,
            plan.describe(),
        )
        return cls(model, spec, plan)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.preprocessing.to_batch(images)

    @torch.inference_mode()
    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` on the CPU for a preprocessed batch."""
        memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        non_blocking = self.plan.device.type == "cuda"
        if non_blocking:
            batch = batch.pin_memory()
        batch = batch.to(self.plan.device, non_blocking=non_blocking, memory_format=memory_format)
        with torch.autocast(
            device_type=self.plan.device.type,
            dtype=self.plan.autocast_dtype or torch.float32,
            enabled=self.plan.autocast_dtype is not None,
        ):
            logits = self.model(batch)
        return scores_from_logits(logits, self.spec.task).cpu()

    def decode(
        self, scores: torch.Tensor, top_k: int | None = None, threshold: float | None = None
    ) -> list[list[LabelScore]]:
        """Labelled predictions: top-k for single-label, above-threshold for multi-label."""
        if self.spec.task is Task.SINGLE_LABEL:
            return top_k_predictions(scores, self.labels, top_k or self.spec.top_k)
        thresholds = (
            torch.full_like(self._thresholds, threshold)
            if threshold is not None
            else self._thresholds
        )
        return thresholded_predictions(scores, self.labels, thresholds)

    def predict(
        self,
        images: Sequence[Image.Image],
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> list[list[LabelScore]]:
        if not images:
            return []
        return self.decode(self.scores(self.preprocess(images)), top_k, threshold)

    def warmup(self, batch_sizes: Sequence[int] = (1, 2)) -> float:
        """Run dummy batches so the first real request does not pay for lazy initialisation."""
        started = time.perf_counter()
        _, height, width = self.spec.preprocessing.input_size
        for size in batch_sizes:
            self.scores(torch.zeros(size, 3, height, width))
        elapsed = time.perf_counter() - started
        logger.info("Warm-up (%s) took %.2fs", list(batch_sizes), elapsed)
        return elapsed
