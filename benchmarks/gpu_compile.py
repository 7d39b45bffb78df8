"""The GPU check's compiled forward: ``torch.compile(mode="reduce-overhead")`` (inductor + CUDA
graphs, ``dynamic=False`` as the service compiles it) against eager, at the batch sizes the
service warms, with the time each shape takes to compile and record.

Standard library, torch and timm only (via gpu_measure). A compile cannot be interrupted, so a
shape starts only while its section has at least 1.5x the slowest compile so far left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from .gpu_measure import Budget, Timing, autocast, build_model, summarize, sync, timed

logger = logging.getLogger("benchmarks.gpu")
MODE = "reduce-overhead"
COMPILE_ON_CPU = "skipped: device is cpu; CUDA graphs (reduce-overhead) need a GPU"
FIRST_COMPILE_S = 20.0  # least budget to start a model's first compile


def _forward(module, inputs: torch.Tensor, *, device: torch.device, dtype: str, graphs: bool):
    with torch.inference_mode(), autocast(device, dtype):
        if graphs:
            # The previous replay's outputs are not read again: a new step for graph trees.
            torch.compiler.cudagraph_mark_step_begin()
        module(inputs)


def compiled_vs_eager(
    architecture: str,
    *,
    device: torch.device,
    dtype: str,
    batch_sizes: Sequence[int],
    timing: Timing,
    budget: Budget,
) -> dict:
    """Eager and compiled ms per batch, speed-up and compile seconds, per batch size."""
    result: dict = {"architecture": architecture, "dtype": dtype, "mode": MODE, "points": []}
    if device.type != "cuda":
        result["skipped"] = COMPILE_ON_CPU
        return result
    if budget.left() < FIRST_COMPILE_S:
        result["skipped"] = "time budget"
        return result
    model, config = build_model(architecture, device)
    compiled = torch.compile(model, mode=MODE, dynamic=False)
    slowest = FIRST_COMPILE_S / 1.5
    for batch_size in batch_sizes:
        point: dict = {"batch_size": batch_size}
        result["points"].append(point)
        if budget.left() < 1.5 * slowest:
            point["skipped"] = "time budget"
            continue
        try:
            _measure(model, compiled, point, device=device, dtype=dtype,
                     input_size=config["input_size"], timing=timing, budget=budget)  # fmt: skip
        except Exception as error:  # inductor/triton missing or failing: a note, not a failure
            result["note"] = f"compile failed: {type(error).__name__}: {error}"[:300]
            logger.warning("%s compiled forward failed: %s", architecture, error)
            break
        slowest = max(slowest, point["compile_s"])
        logger.info("%s %s compiled batch %d: %s", architecture, dtype, batch_size, point)
    del model, compiled
    torch._dynamo.reset()  # free the graphs and their memory pool before the next model
    torch.cuda.empty_cache()
    return result


def _measure(model, compiled, point: dict, *, device, dtype, input_size, timing, budget) -> None:
    batch_size = point["batch_size"]
    x = torch.randn(batch_size, *input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    eager = summarize(
        timed(lambda: _forward(model, x, device=device, dtype=dtype, graphs=False),
              device, timing, budget), batch_size,
    )  # fmt: skip
    started = time.perf_counter()
    for _ in range(3):  # compile, warm, record: graph trees record on the third call
        _forward(compiled, x, device=device, dtype=dtype, graphs=True)
    sync(device)
    point["compile_s"] = round(time.perf_counter() - started, 1)
    replayed = summarize(
        timed(lambda: _forward(compiled, x, device=device, dtype=dtype, graphs=True),
              device, timing, budget), batch_size,
    )  # fmt: skip
    point["eager"], point["compiled"] = eager, replayed
    point["speedup"] = round(eager["ms_per_batch_p50"] / replayed["ms_per_batch_p50"], 2)


def compiled_section(
    models: Sequence[str],
    *,
    device: torch.device,
    dtypes: Sequence[str],
    batch_sizes: Sequence[int],
    timing: Timing,
    budget: Budget,
) -> list[dict]:
    """Each model in turn, in the first reduced-precision dtype asked for (what the service's
    ``auto`` precision serves on a GPU), sharing the section's budget."""
    dtype = next((d for d in dtypes if d != "fp32"), "fp32")
    out = []
    for index, architecture in enumerate(models):
        share = Budget.of(budget.left() / (len(models) - index), budget)
        out.append(compiled_vs_eager(
            architecture, device=device, dtype=dtype, batch_sizes=batch_sizes, timing=timing,
            budget=share,
        ))  # fmt: skip
    return out
