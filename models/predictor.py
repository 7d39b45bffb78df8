"""In-process inference: the same code path the service and evaluation use."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from .artifact import ModelSpec, load_artifact
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
T = TypeVar("T")


@dataclass(frozen=True)
class DevicePlan:
    """Where and how the forward pass runs."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool

    def describe(self) -> str:
        precision = (
            str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        )
        if self.device.type == "cuda":
            where = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        else:
            where = f"cpu ({torch.get_num_threads()} threads)"
        return f"{where}, {precision}, channels_last={self.channels_last}"


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where it is ~2x fp32.

    Elsewhere oneDNN emulates bf16 and it is slower than fp32, so ``auto`` keeps fp32 there.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _autocast_dtype(device_type: str, precision: str) -> torch.dtype | None:
    if precision == "float32":
        return None
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if device_type == "cuda":  # auto: bf16 where the GPU has it natively (Ampere+), else fp16
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native_bf16 else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def choose_device(preference: str = "auto", precision: str = "auto") -> DevicePlan:
    """Where and in which precision the forward pass runs.

    ``preference`` is ``auto``, ``cuda`` or ``cpu``; asking for ``cuda`` without a GPU is an
    error rather than a silent fallback. ``precision`` is ``auto`` (reduced precision where the
    hardware runs it natively: bf16/fp16 autocast on CUDA, bf16 on CPUs with AVX512-BF16/AMX,
    fp32 elsewhere), or ``float32``/``bfloat16``/``float16`` to force one. Reduced precision is
    autocast: weights stay fp32, and the scores agree with fp32 at the top-1 level (checked by
    the tests and the benchmark), not bit for bit.
    """
    if preference not in {"auto", "cuda", "cpu"}:
        raise ValueError(f"device must be auto, cuda or cpu, not {preference!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    use_cuda = torch.cuda.is_available() and preference != "cpu"
    if preference == "cuda" and not use_cuda:
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    # channels_last speeds up convolutions on GPUs (tensor cores) and x86 CPUs (oneDNN).
    return DevicePlan(device, _autocast_dtype(device.type, precision), channels_last=True)


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


class TorchThread:
    """One dedicated thread for every torch call of a loaded model: loading, warm-up, batches.

    torch's CPU thread pool is OpenMP, and each Python thread that runs torch ops gets its own
    OpenMP team. Once two teams exist they slow each other down: loading a model on one thread
    and running it on another made batch-1 forwards ~2x slower on a 2-core CPU (efficientnet_b0:
    34 ms vs 15 ms; docs/performance.md). BentoML builds the service on the worker's main thread
    and runs sync APIs in a thread pool, so the service routes all its torch work through here.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    def call(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """Run ``fn`` on the torch thread and wait for it (for start-up code)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """Run ``fn`` on the torch thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
