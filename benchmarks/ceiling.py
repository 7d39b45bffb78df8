"""The ceiling: the served model's own code path, in-process, with no server in the way.

Decode (``models.serving.decode_upload``, what request validation runs: reduced-size JPEG decode,
resize and crop), batch assembly and forward through the same ``Predictor`` the service builds.
The best images/s over batch sizes is what a server could reach if HTTP, queuing and batching
cost nothing. The machines drift by 20-30% over minutes (shared hosts, boost clocks), so the
harness re-measures the ceiling right before each server and compares the two side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from .workload import Upload

SWEEP_SECONDS = 4.0
ADJACENT_SECONDS = 4.0


def _run_batch(predictor, uploads: Sequence[Upload]) -> None:
    from models.serving import decode_upload

    predictor.predict([decode_upload(upload.jpeg) for upload in uploads])


def throughput(predictor, uploads: list[Upload], batch_size: int, seconds: float) -> float:
    """Images/s decoding, preprocessing and classifying ``batch_size`` images at a time."""
    _run_batch(predictor, uploads[:batch_size])  # warm this shape
    done, started = 0, time.perf_counter()
    while done < 3 * batch_size or time.perf_counter() - started < seconds:
        offset = done % len(uploads)
        batch = (uploads * 2)[offset : offset + batch_size]
        _run_batch(predictor, batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def single_image_ms(predictor, uploads: list[Upload]) -> float:
    """Median latency of one image through decode + preprocess + forward."""
    timings = []
    for upload in uploads:
        started = time.perf_counter()
        _run_batch(predictor, [upload])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def sweep(predictor, uploads: list[Upload], batch_sizes: Sequence[int]) -> dict:
    """Images/s per batch size and the best of them."""
    per_batch = {size: throughput(predictor, uploads, size, SWEEP_SECONDS) for size in batch_sizes}
    best = max(per_batch, key=per_batch.get)
    return {
        "images_per_s_by_batch": {str(k): round(v, 2) for k, v in per_batch.items()},
        "best_batch_size": best,
        "ceiling_images_per_s": round(per_batch[best], 2),
        "single_image_ms_p50": round(single_image_ms(predictor, uploads), 1),
    }


def adjacent(predictor, uploads: list[Upload], best_batch_size: int) -> dict:
    """The ceiling again, quickly, to compare a server with the machine as it is right now."""
    return {
        "ceiling_images_per_s": round(
            throughput(predictor, uploads, best_batch_size, ADJACENT_SECONDS), 2
        ),
        "single_image_ms_p50": round(single_image_ms(predictor, uploads), 1),
    }
