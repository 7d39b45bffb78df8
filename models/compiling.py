"""``torch.compile`` with CUDA graphs for a fixed set of batch sizes, and the padding that keeps
every batch on one of them.

A CUDA graph replays one captured shape. Compiled with ``dynamic=False``, each new batch size
would recompile (seconds to a minute) in the middle of serving, so the predictor warms every
size adaptive batching pads to, and pads each batch up to the next warmed size: zero images
cost a little GPU time, a recompile costs a request's timeout.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Literal

import torch

logger = logging.getLogger(__name__)

CompileMode = Literal["off", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = ("off", "reduce-overhead", "max-autotune")


def compile_unavailable_reason(mode: str) -> str | None:
    """Why ``mode`` cannot run here (None: it can): both modes need triton, torch.compile's GPU
    code generator, which the serving image leaves out (serving/image.py)."""
    if mode == "off" or importlib.util.find_spec("triton") is not None:
        return None
    return (
        f"compile mode {mode!r} needs triton (torch.compile's GPU code generator), which is not "
        "installed: the serving image leaves it out; use compile mode 'off' or install "
        "triton (`pip install triton`, the version torch requires)"
    )


def compile_for_device(
    model: torch.nn.Module, *, mode: str, device: torch.device
) -> torch.nn.Module | None:
    """The compiled forward for ``mode`` on ``device``, or None to run ``model`` eagerly.

    Both modes capture CUDA graphs, which exist on CUDA only: elsewhere the setting is logged
    and ignored rather than paying inductor's compile time for no graph replay. Without triton
    either mode raises ``RuntimeError`` on any device, so an image without it says so at once.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")
    if mode == "off":
        return None
    if reason := compile_unavailable_reason(mode):
        raise RuntimeError(reason)
    if device.type != "cuda":
        logger.warning(
            "compile mode %r applies on CUDA only (CUDA graphs); the model runs eagerly on %s",
            mode,
            device,
        )
        return None
    # dynamic=False: one graph per batch size, the shapes warm-up captures and padding reuses.
    return torch.compile(model, mode=mode, dynamic=False)


def padded_batch_size(size: int, *, shapes: Sequence[int]) -> int:
    """The smallest of ``shapes`` that holds ``size`` images; ``size`` itself when none does
    (or no shapes are given), which then runs at its own shape."""
    fitting = [shape for shape in shapes if shape >= size]
    return min(fitting) if fitting else size


def pad_batch(
    batch: torch.Tensor, *, size: int, memory_format: torch.memory_format
) -> torch.Tensor:
    """``batch`` with zero images appended up to ``size`` (unchanged when already that big).

    Rows are independent in eval mode (batch norm uses its running statistics), so the first
    rows' outputs do not depend on the padding; callers slice them back.
    """
    missing = size - batch.shape[0]
    if missing <= 0:
        return batch
    zeros = batch.new_zeros((missing, *batch.shape[1:]))
    return torch.cat([batch, zeros]).contiguous(memory_format=memory_format)
