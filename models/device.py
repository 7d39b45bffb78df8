"""The one device and precision policy, with an inference and a training profile.

The service, the MLflow pyfunc, evaluation and the training loop all decide here where the
forward pass runs and whether it autocasts to bf16 or fp16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


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
Profile = Literal["inference", "training"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where it beats fp32
    (figures: docs/performance.md).

    Elsewhere oneDNN emulates bf16 and it is slower than fp32, so ``auto`` keeps fp32 there.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(
    device_type: str, precision: str, *, profile: Profile = "inference"
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on a device (None: plain fp32).

    ``auto`` picks reduced precision where the hardware runs it natively: on CUDA bf16 where
    the GPU has it (Ampere+), else fp16 (training pairs fp16 with a gradient scaler); on CPUs
    with AVX512-BF16/AMX bf16 for inference only. Training on a CPU stays fp32: bf16 gradients
    there are a numerical risk for no measured gain.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "float32":
        return None
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if device_type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native_bf16 else torch.float16
    if profile == "training":
        return None
    return torch.bfloat16 if cpu_has_native_bf16() else None


@dataclass(frozen=True)
class WorkerSlot:
    """Which of a service's worker processes this is, for placing it on one of several GPUs.

    ``index`` is 1-based, as BentoML numbers its workers (``bentoml.server_context.worker_index``,
    circus's worker id); ``per_gpu`` is how many consecutive workers share one GPU. The default,
    worker 1 alone, is any process that is not a served worker (evaluation, the benchmark).
    """

    index: int = 1
    per_gpu: int = 1

    def __post_init__(self) -> None:
        if self.index < 1 or self.per_gpu < 1:
            raise ValueError(f"worker index and workers per GPU start at 1: {self}")


def gpu_for_worker(*, worker: WorkerSlot, device_count: int) -> int:
    """The CUDA device index worker ``worker.index`` runs on: workers 1..per_gpu on GPU 0, the
    next ``per_gpu`` on GPU 1, and so on, wrapping round when there are more workers than
    ``per_gpu`` x GPUs (so no worker is ever left without a device).

    ``device_count`` is what torch sees, i.e. after ``CUDA_VISIBLE_DEVICES``: index 0 is the
    first visible GPU, whatever its physical number.
    """
    if device_count < 1:
        raise ValueError(f"device_count must be at least 1, not {device_count}")
    return ((worker.index - 1) // worker.per_gpu) % device_count


def choose_device(
    preference: str = "auto", precision: str = "auto", *, worker: WorkerSlot | None = None
) -> DevicePlan:
    """Where and in which precision the forward pass runs.

    ``preference`` is ``auto``, ``cuda`` or ``cpu``; asking for ``cuda`` without a GPU is an
    error rather than a silent fallback. ``precision`` is ``auto`` (reduced precision where the
    hardware runs it natively: bf16/fp16 autocast on CUDA, bf16 on CPUs with AVX512-BF16/AMX,
    fp32 elsewhere), or ``float32``/``bfloat16``/``float16`` to force one. Reduced precision is
    autocast: weights stay fp32, and the scores agree with fp32 at the top-1 level (checked by
    the tests and the benchmark), not bit for bit. On a host with several GPUs, ``worker``
    picks which one (:func:`gpu_for_worker`); without CUDA it does not matter.
    """
    if preference not in {"auto", "cuda", "cpu"}:
        raise ValueError(f"device must be auto, cuda or cpu, not {preference!r}")
    use_cuda = torch.cuda.is_available() and preference != "cpu"
    if preference == "cuda" and not use_cuda:
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    if use_cuda:
        index = gpu_for_worker(
            worker=worker or WorkerSlot(), device_count=torch.cuda.device_count()
        )
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    # channels_last speeds up convolutions on GPUs (tensor cores) and x86 CPUs (oneDNN).
    return DevicePlan(device, autocast_dtype(device.type, precision), channels_last=True)
