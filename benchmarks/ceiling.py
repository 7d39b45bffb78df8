"""The ceiling: the served model's own code path, in-process, with no server in the way.

Decode (the runtime's ``RequestDecoder``, what request parsing runs: reduced-size JPEG decode,
resize and crop), then batch assembly and forward on the runtime's torch thread, through the
runtime ``serving.runtime.build_runtime`` builds for the service.
The best images/s over batch sizes is what a server could reach if HTTP, queuing and batching
cost nothing. The machines drift over minutes (shared hosts, boost clocks; how much:
docs/performance.md), so the harness re-measures the ceiling right before each server and
compares the two side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .workload import Upload

if TYPE_CHECKING:
    pass

SWEEP_SECONDS = 4.0
ADJACENT_SECONDS = 4.0


def _run_batch(runtime, uploads: Sequence[Upload]) -> None:
    images = [runtime.decoder.decode_one(upload.jpeg) for upload in uploads]
    runtime.torch_thread.call(runtime.classify_batch, images)


def throughput(runtime, uploads: list[Upload], batch_size: int, seconds: float) -> float:
    """Images/s decoding, preprocessing and classifying ``batch_size`` images at a time."""
    _run_batch(runtime, uploads[:batch_size])  # warm this shape
    done, started = 0, time.perf_counter()
    while done < 3 * batch_size or time.perf_counter() - started < seconds:
        offset = done % len(uploads)
        batch = (uploads * 2)[offset : offset + batch_size]
        _run_batch(runtime, batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def single_image_ms(runtime, uploads: list[Upload]) -> float:
    """Median latency of one image through decode + preprocess + forward."""
    timings = []
    for upload in uploads:
        started = time.perf_counter()
        _run_batch(runtime, [upload])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def sweep(runtime, uploads: list[Upload], batch_sizes: Sequence[int]) -> dict:
    """Images/s per batch size and the best of them."""
    per_batch = {size: throughput(runtime, uploads, size, SWEEP_SECONDS) for size in batch_sizes}
    best = max(per_batch, key=per_batch.get)
    return {
        "images_per_s_by_batch": {str(k): round(v, 2) for k, v in per_batch.items()},
        "best_batch_size": best,
        "ceiling_images_per_s": round(per_batch[best], 2),
        "single_image_ms_p50": round(single_image_ms(runtime, uploads), 1),
    }


def adjacent(runtime, uploads: list[Upload], best_batch_size: int) -> dict:
    """The ceiling again, quickly, to compare a server with the machine as it is right now."""
    return {
        "ceiling_images_per_s": round(
            throughput(runtime, uploads, best_batch_size, ADJACENT_SECONDS), 2
        ),
        "single_image_ms_p50": round(single_image_ms(runtime, uploads), 1),
    }


def forward_ms(runtime, repeats: int = 30) -> float:
    """Median milliseconds of the bare forward of one image (preprocessed input ready), on the
    runtime's torch thread, in the precision and layout the service uses."""
    import torch

    predictor = runtime.predictor
    _, height, width = predictor.spec.preprocessing.input_size
    batch = runtime.torch_thread.call(torch.zeros, 1, 3, height, width)  # no torch op elsewhere

    def timed() -> float:
        started = time.perf_counter()
        predictor.scores(batch)
        return (time.perf_counter() - started) * 1000

    runtime.torch_thread.call(timed)  # warm
    return round(statistics.median(runtime.torch_thread.call(timed) for _ in range(repeats)), 3)


def describe_model(choice, forward: float, input_size: tuple[int, int, int], plan: str) -> str:
    """How the report names the model: honestly, for the near-no-op one."""
    size = f"{input_size[2]}x{input_size[1]}"
    what = (
        f"{choice.architecture} at {size}, forward ~{forward:.2f} ms in-process (batch 1, {plan})"
    )
    return f"near-no-op: {what}" if choice.framework_ceiling else what
