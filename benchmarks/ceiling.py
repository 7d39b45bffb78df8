"""The ceiling: the served model's own code path, in-process, with no server in the way.

Decode (``models.serving.decode_upload``, what request validation runs), preprocess and forward
through the same ``Predictor`` the service builds, for every batch size up to the service's
largest. The best images/s is what a server could reach if HTTP, queuing and batching cost nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from .workload import Upload

MIN_IMAGES = 48
MIN_SECONDS = 4.0


def _run_batch(predictor, uploads: Sequence[Upload]) -> None:
    from models.serving import decode_upload

    images = [decode_upload(upload.jpeg) for upload in uploads]
    predictor.predict(images)


def measure_ceiling(
    predictor, uploads: list[Upload], batch_sizes: Sequence[int] = (1, 2, 4, 8, 16)
) -> dict:
    """Images/s per batch size, the best of them, and single-image latency (batch of 1)."""
    per_batch: dict[int, float] = {}
    for size in batch_sizes:
        _run_batch(predictor, uploads[:size])  # warm this shape
        done, started = 0, time.perf_counter()
        while done < MIN_IMAGES or time.perf_counter() - started < MIN_SECONDS:
            offset = done % len(uploads)
            batch = (uploads * 2)[offset : offset + size]
            _run_batch(predictor, batch)
            done += len(batch)
        per_batch[size] = done / (time.perf_counter() - started)
    single_ms = []
    for upload in uploads * 2:
        started = time.perf_counter()
        _run_batch(predictor, [upload])
        single_ms.append((time.perf_counter() - started) * 1000)
    best = max(per_batch, key=per_batch.get)
    return {
        "images_per_s_by_batch": {str(k): round(v, 2) for k, v in per_batch.items()},
        "best_batch_size": best,
        "ceiling_images_per_s": round(per_batch[best], 2),
        "single_image_ms_p50": round(statistics.median(single_ms), 1),
    }
