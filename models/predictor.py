"""In-process inference: the same code path the service and evaluation use."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .artifact import ModelSpec, load_artifact
from .compiling import compile_for_device, pad_batch, padded_batch_size
from .device import DevicePlan, WorkerSlot, choose_device
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

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        device: DevicePlan,
        *,
        compile_mode: str = "off",
    ) -> None:
        self.spec = spec
        self.plan = device
        self.labels = spec.label_set
        self.preprocessing = EvalPreprocessing(spec.preprocessing)
        memory_format = torch.channels_last if device.channels_last else torch.contiguous_format
        if device.device.type == "cuda":
            # This process's GPU becomes the current one: pinned copies, CUDA graphs and the
            # caching allocator would otherwise also open a context on cuda:0 in every worker.
            torch.cuda.set_device(device.device)
        self.model = model.eval().to(device.device, memory_format=memory_format)
        self._compiled = compile_for_device(self.model, mode=compile_mode, device=device.device)
        # Batch sizes every batch is padded up to: the compiled shapes, set by warmup().
        self.padded_sizes: tuple[int, ...] = ()
        self._thresholds = thresholds_tensor(self.labels, spec.threshold, spec.class_thresholds)

    @classmethod
    def from_artifact(
        cls,
        directory: str | Path,
        device: str = "auto",
        precision: str = "auto",
        *,
        worker: WorkerSlot | None = None,
        compile_mode: str = "off",
    ) -> Predictor:
        model, spec = load_artifact(directory)
        plan = choose_device(device, precision, worker=worker)
        logger.info(
            "Loaded %s (%s, %d labels) on %s",
            spec.architecture,
            spec.task.value,
            spec.num_classes,
            plan.describe(),
        )
        return cls(model, spec, plan, compile_mode=compile_mode)

    def preprocess(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """PIL images and prepared uint8 tensors (decoded on the device) as one input batch."""
        return self.preprocessing.to_batch(images)

    @torch.inference_mode()
    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` on the CPU for a preprocessed batch (on the
        CPU, or already on the model's device when its images were decoded there)."""
        memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        # Pinned memory lets a host batch's copy overlap; a batch on the device needs no copy.
        non_blocking = self.plan.device.type == "cuda" and batch.device.type == "cpu"
        if non_blocking:
            batch = batch.pin_memory()
        batch = batch.to(self.plan.device, non_blocking=non_blocking, memory_format=memory_format)
        with torch.autocast(
            device_type=self.plan.device.type,
            dtype=self.plan.autocast_dtype or torch.float32,
            enabled=self.plan.autocast_dtype is not None,
        ):
            logits = self._forward(batch)
        return scores_from_logits(logits, self.spec.task).cpu()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for ``batch``: eager, or padded to a warmed size and replayed compiled."""
        size = batch.shape[0]
        target = padded_batch_size(size, shapes=self.padded_sizes)
        if self.padded_sizes and target not in self.padded_sizes:
            # Beyond every warmed size (one request larger than the batch limit): compiling a
            # new shape here would stall serving for as long as a compile takes.
            return self.model(batch)
        memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        batch = pad_batch(batch, size=target, memory_format=memory_format)
        if self._compiled is None:
            return self.model(batch)[:size]
        # A new step for CUDA graph trees: the previous replay's outputs are already copied out.
        torch.compiler.cudagraph_mark_step_begin()
        return self._compiled(batch)[:size]

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
        """Run dummy batches so the first real request does not pay for lazy initialisation.

        Compiled, these become the only batch sizes: each is compiled and its CUDA graph
        recorded here (graph trees record on the second and third call), and every later
        batch is padded up to the next of them.
        """
        started = time.perf_counter()
        calls = 1
        if self._compiled is not None:
            self.padded_sizes = tuple(sorted(set(batch_sizes)))
            calls = 3
        _, height, width = self.spec.preprocessing.input_size
        for size in batch_sizes:
            for _ in range(calls):
                self.scores(torch.zeros(size, 3, height, width))
        elapsed = time.perf_counter() - started
        logger.info("Warm-up (%s) took %.2fs", list(batch_sizes), elapsed)
        return elapsed
