"""The GPU check's measurements: forward and end-to-end ceiling by batch size, and JPEG decode.

Imports nothing beyond torch, torchvision, timm, PIL, numpy and the standard library, so it runs
on a bare GPU machine (no BentoML, MLflow or pydantic). Every measurement has a seconds budget
and stops at its section's deadline; a point past the deadline is recorded as skipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

logger = logging.getLogger("benchmarks.gpu")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NVJPEG_ON_CPU = "skipped: device is cpu; nvjpeg (torchvision.io.decode_jpeg on CUDA) needs a GPU"


@dataclass(frozen=True)
class Budget:
    """A deadline on the ``time.perf_counter`` clock, never later than its parent's."""

    deadline: float

    @classmethod
    def of(cls, seconds: float, parent: Budget | None = None) -> Budget:
        deadline = time.perf_counter() + seconds
        return cls(min(deadline, parent.deadline) if parent else deadline)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def expired(self) -> bool:
        return self.left() <= 0


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    measure_s: float


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if AUTOCAST_DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[dtype])


def timed(step: Callable[[], object], device: torch.device, timing: Timing, budget: Budget):
    """Seconds per call of ``step`` (synchronized), after a warm-up of at least one call."""
    started, calls = time.perf_counter(), 0
    while True:
        step()
        sync(device)
        calls += 1
        warm = calls >= 2 and time.perf_counter() - started >= timing.warmup_s
        if warm or budget.expired():
            break
    seconds: list[float] = []
    started = time.perf_counter()
    while not seconds or (
        time.perf_counter() - started < timing.measure_s and not budget.expired()
    ):
        t0 = time.perf_counter()
        step()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def summarize(seconds: list[float], images_per_call: int) -> dict:
    return {
        "images_per_s": round(images_per_call * len(seconds) / sum(seconds), 2),
        "ms_per_batch_p50": round(1000 * statistics.median(seconds), 3),
        "calls": len(seconds),
    }


def build_model(architecture: str, device: torch.device, num_classes: int | None = None):
    """A random-weight timm model in eval mode, channels_last, and its eval data config."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(architecture, pretrained=False, **kwargs)
    model = model.eval().to(device, memory_format=torch.channels_last)
    return model, resolve_data_config({}, model=model)


def data_config(architecture: str) -> dict:
    """The eval data config, from a model built on the meta device (no weights, no memory)."""
    with torch.device("meta"):
        return resolve_data_config({}, model=timm.create_model(architecture, pretrained=False))


def pil_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def resize_and_crop_pil(config: dict):
    """The Resize + CenterCrop half of timm's eval transform (PIL in, PIL out)."""
    return create_transform(**config).transforms[:2]


def gpu_preprocess(images: Sequence[torch.Tensor], config: dict) -> torch.Tensor:
    """timm's eval transform on decoded uint8 CHW tensors on the device: shorter side to
    ``floor(size / crop_pct)``, centre crop, scale and normalise; same-sized images as one batch."""
    _, height, width = config["input_size"]
    scale = math.floor(min(height, width) / config["crop_pct"])
    mode = InterpolationMode(config["interpolation"])
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    for indices in groups.values():
        batch = torch.stack([images[i] for i in indices]).float()
        batch = tvf.resize(batch, [scale], interpolation=mode, antialias=True)
        batch = tvf.center_crop(batch.round_().clamp_(0, 255), [height, width])
        for i, tensor in zip(indices, batch, strict=True):
            out[i] = tensor
    stacked = torch.stack(out).div_(255)  # type: ignore[arg-type]
    return tvf.normalize(stacked, list(config["mean"]), list(config["std"]))


def nvjpeg_decode(blobs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(list(blobs), mode=ImageReadMode.RGB, device=device)


def as_tensors(jpegs: Sequence[bytes]) -> list[torch.Tensor]:
    return [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]


def _cycle(items: Sequence, start: int, count: int) -> list:
    return [items[(start + i) % len(items)] for i in range(count)]


def _measure_point(model, preprocess, jpegs, point: dict, *, device, input_size, timing, budget,
                   pool) -> None:  # fmt: skip
    """One dtype and batch size: the bare forward, then end to end from JPEG bytes."""
    dtype, batch_size = point["dtype"], point["batch_size"]
    x = torch.randn(batch_size, *input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    cursor = [0]

    def forward(inputs: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(device, dtype):
            model(inputs)

    def end_to_end() -> None:
        batch = _cycle(jpegs, cursor[0], batch_size)
        cursor[0] += batch_size
        host = torch.stack(list(pool.map(preprocess, batch)))
        if device.type == "cuda":
            host = host.pin_memory()
        inputs = host.to(device, non_blocking=True)
        forward(inputs.contiguous(memory_format=torch.channels_last))

    point["forward"] = summarize(timed(lambda: forward(x), device, timing, budget), batch_size)
    point["end_to_end"] = summarize(timed(end_to_end, device, timing, budget), batch_size)


def ceiling(
    architecture: str,
    jpegs: Sequence[bytes],
    *,
    device: torch.device,
    batch_sizes: Sequence[int],
    dtypes: Sequence[str],
    timing: Timing,
    budget: Budget,
    pool: ThreadPoolExecutor,
) -> dict:
    """images/s and ms per batch of the bare forward (inputs already on the device) and of
    PIL decode + timm transform on CPU threads, pinned H2D copy and forward, by batch size."""
    model, config = build_model(architecture, device)
    transform = create_transform(**config)
    result = {
        "architecture": architecture,
        "input_size": list(config["input_size"]),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "points": [],
    }

    def preprocess(data: bytes) -> torch.Tensor:
        return transform(pil_decode(data))

    for dtype in dtypes:
        for batch_size in batch_sizes:
            point: dict = {"dtype": dtype, "batch_size": batch_size}
            result["points"].append(point)
            if budget.expired():
                point["skipped"] = "time budget"
                continue
            try:
                _measure_point(
                    model, preprocess, jpegs, point, device=device,
                    input_size=config["input_size"], timing=timing, budget=budget, pool=pool,
                )  # fmt: skip
            except torch.cuda.OutOfMemoryError as error:
                point["error"] = f"out of memory: {error}"[:200]
                torch.cuda.empty_cache()
            logger.info("%s %s batch %d: %s", architecture, dtype, batch_size, point)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def decode(
    jpegs_by_size: dict[str, list[bytes]],
    *,
    device: torch.device,
    config: dict,
    batch_size: int,
    timing: Timing,
    budget: Budget,
    pool: ThreadPoolExecutor,
) -> dict:
    """Decode images/s by image size: PIL (decode + convert + the eval Resize/CenterCrop) on one
    thread and on the pool, and batched nvjpeg, bare and followed by the same resize on the GPU."""
    resize = resize_and_crop_pil(config)

    def pil_one(data: bytes) -> Image.Image:
        image = pil_decode(data)
        for step in resize:
            image = step(image)
        return image

    out: dict = {"batch_size": batch_size, "sizes": {}}
    for size, jpegs in jpegs_by_size.items():
        batch = _cycle(jpegs, 0, batch_size)
        blobs = as_tensors(batch)
        steps: dict[str, Callable[[], object]] = {
            "pil_1_thread": lambda batch=batch: [pil_one(data) for data in batch],
            "pil_threads": lambda batch=batch: list(pool.map(pil_one, batch)),
        }
        if device.type == "cuda":
            steps["nvjpeg"] = lambda blobs=blobs: nvjpeg_decode(blobs, device)
            steps["nvjpeg_resize"] = lambda blobs=blobs: gpu_preprocess(
                nvjpeg_decode(blobs, device), config
            )
        row: dict = {"bytes_mean": round(statistics.mean(len(j) for j in jpegs))}
        for name, step in steps.items():
            if budget.expired():
                row[name] = {"skipped": "time budget"}
                continue
            try:
                row[name] = summarize(timed(step, device, timing, budget), batch_size)
            except RuntimeError as error:  # an nvjpeg failure must not lose the other figures
                row[name] = {"error": str(error)[:200]}
            logger.info("decode %s %s: %s", size, name, row[name])
        if device.type != "cuda":
            row["nvjpeg"] = row["nvjpeg_resize"] = {"skipped": NVJPEG_ON_CPU}
        out["sizes"][size] = row
    return out
