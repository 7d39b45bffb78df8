"""The GPU check's agreement: how often bf16/fp16 autocast, and nvjpeg decode + GPU resize, give
the top-1 answer of fp32 on PIL-decoded inputs.

Random weights make top-1 meaningless (one class wins everywhere), so each model is first
fine-tuned in-process, whole, for a few hundred steps (a seconds budget), on synthetic shapes
(training/synthetic.py, PIL only; five classes) saved as JPEG, and judged on held-out images.
The fp32 reference runs without TF32 (cuDNN convolutions use TF32 by default).
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F  # noqa: N812
from timm.data import create_transform

from training.synthetic import SHAPES, render

from .gpu_measure import (
    NVJPEG_ON_CPU,
    Budget,
    as_tensors,
    autocast,
    build_model,
    gpu_preprocess,
    nvjpeg_decode,
    pil_decode,
    sync,
)

logger = logging.getLogger("benchmarks.gpu")
LEARNING_RATE = 1e-3
WARMUP_STEPS = 20


def shapes_jpegs(
    count: int, size: int, seed: int, pool: ThreadPoolExecutor
) -> tuple[list[bytes], list[int]]:
    """``count`` JPEGs (quality 90) of one shape each, classes in turn, and their labels."""

    def one(index: int) -> bytes:
        image = render([SHAPES[index % len(SHAPES)]], size, random.Random(seed * 1_000_003 + index))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        return out.getvalue()

    return list(pool.map(one, range(count))), [i % len(SHAPES) for i in range(count)]


def pil_batch(jpegs: Sequence[bytes], config: dict, pool: ThreadPoolExecutor) -> torch.Tensor:
    transform = create_transform(**config)
    return torch.stack(list(pool.map(lambda data: transform(pil_decode(data)), jpegs)))


@contextlib.contextmanager
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def fine_tune(model, x, y, *, device, seconds: float, max_steps: int, batch_size: int) -> dict:
    """AdamW on the whole model (bf16 autocast on CUDA) until ``seconds`` or ``max_steps``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    train_dtype = "bf16" if device.type == "cuda" else "fp32"
    generator = torch.Generator().manual_seed(0)
    started, steps, recent = time.perf_counter(), 0, []
    while steps < max_steps and (steps == 0 or time.perf_counter() - started < seconds):
        index = torch.randint(len(x), (batch_size,), generator=generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * min(1.0, (steps + 1) / WARMUP_STEPS)
        with autocast(device, train_dtype):
            logits = model(x[index].contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], loss.detach()]
        steps += 1
    sync(device)
    model.eval()
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 1),
        "train_dtype": train_dtype,
        "final_loss": round(torch.stack(recent).mean().item(), 4),
    }


def predict(model, x: torch.Tensor, device: torch.device, dtype: str) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for chunk in x.split(128):
            chunk = chunk.to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                out.append(model(chunk).float().softmax(-1).cpu())
    return torch.cat(out)


def compare(probs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> dict:
    top1 = probs.argmax(-1)
    accuracy = None if labels is None else round((top1 == labels).float().mean().item(), 4)
    return {
        "images": len(probs),
        "accuracy": accuracy,
        "top1_agreement": round((top1 == reference.argmax(-1)).float().mean().item(), 4),
        "max_abs_prob_diff": round((probs - reference).abs().max().item(), 5),
    }


def pixel_diff(a: torch.Tensor, b: torch.Tensor, config: dict) -> dict:
    """Mean and max difference of two preprocessed batches, in 0-255 pixel units."""
    std = torch.tensor(config["std"]).view(1, 3, 1, 1) * 255
    diff = (a.cpu() - b.cpu()).abs() * std
    return {"mean": round(diff.mean().item(), 3), "max": round(diff.max().item(), 2)}


def _nvjpeg(model, config, *, device, dtypes, test, photos, x_pil, reference, pool) -> dict:
    """The same model fed nvjpeg-decoded, GPU-resized inputs, against fp32 on PIL inputs."""
    labels = torch.tensor(test[1])
    x_gpu = gpu_preprocess(nvjpeg_decode(as_tensors(test[0]), device), config)
    out: dict = {"nvjpeg_vs_pil_pixels": pixel_diff(x_gpu, x_pil, config), "variants": {}}
    for dtype in dtypes:
        with strict_fp32() if dtype == "fp32" else contextlib.nullcontext():
            probs = predict(model, x_gpu, device, dtype)
        out["variants"][f"{dtype} nvjpeg"] = compare(probs, reference, labels)
    # Photo-like JPEGs of the served sizes: the same model, PIL vs nvjpeg inputs, fp32.
    photo_pil = pil_batch(photos, config, pool)
    photo_gpu = gpu_preprocess(nvjpeg_decode(as_tensors(photos), device), config)
    with strict_fp32():
        photo_reference = predict(model, photo_pil, device, "fp32")
        photo_probs = predict(model, photo_gpu, device, "fp32")
    out["photos_nvjpeg_vs_pil"] = {
        **compare(photo_probs, photo_reference, None),
        "pixels": pixel_diff(photo_gpu, photo_pil, config),
    }
    return out


def agreement(
    architecture: str,
    *,
    device: torch.device,
    dtypes: Sequence[str],
    train: tuple[list[bytes], list[int]],
    test: tuple[list[bytes], list[int]],
    photos: Sequence[bytes],
    train_seconds: float,
    max_steps: int,
    batch_size: int,
    budget: Budget,
    pool: ThreadPoolExecutor,
) -> dict:
    model, config = build_model(architecture, device, num_classes=len(SHAPES))
    x_train = pil_batch(train[0], config, pool).to(device)
    y_train = torch.tensor(train[1], device=device)
    seconds = min(train_seconds, max(budget.left() / 2, 1.0))
    result: dict = {"architecture": architecture, "classes": len(SHAPES)}
    result["training"] = fine_tune(
        model, x_train, y_train, device=device, seconds=seconds, max_steps=max_steps,
        batch_size=min(batch_size, len(train[0])),
    )  # fmt: skip
    logger.info("%s fine-tuned: %s", architecture, result["training"])
    del x_train
    labels = torch.tensor(test[1])
    x_pil = pil_batch(test[0], config, pool)
    with strict_fp32():
        reference = predict(model, x_pil, device, "fp32")
    variants = result["variants"] = {"fp32 PIL": compare(reference, reference, labels)}
    for dtype in (d for d in dtypes if d != "fp32"):
        variants[f"{dtype} PIL"] = compare(predict(model, x_pil, device, dtype), reference, labels)
    if device.type != "cuda":
        result["nvjpeg"] = NVJPEG_ON_CPU
    elif budget.expired():
        result["nvjpeg"] = "skipped: time budget"
    else:
        nvjpeg = _nvjpeg(
            model, config, device=device, dtypes=dtypes, test=test, photos=photos,
            x_pil=x_pil, reference=reference, pool=pool,
        )  # fmt: skip
        variants.update(nvjpeg.pop("variants"))
        result.update(nvjpeg)
    logger.info("%s agreement: %s", architecture, variants)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result
