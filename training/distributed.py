"""Data-parallel training under ``torchrun``: the process-group facts and the few collectives
the pipeline needs.

``torchrun --nproc_per_node=N -m training train ...`` starts N copies of the CLI, each with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its environment. Every rank trains on its share of
the data under ``DistributedDataParallel``; rank 0 alone talks to MLflow and writes the run's
folder. A plain ``python -m training train`` is a world of one: no process group, and every
helper here is a no-op, so single-process runs behave exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

logger = logging.getLogger(__name__)


class PeerStoppedError(RuntimeError):
    """This rank was told to stop (SIGTERM) while training with peers: under torchrun that is
    how the agent ends the surviving workers when one of them fails, so the run failed."""


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is in a data-parallel job; built once, from torchrun's environment."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"inconsistent process group: rank {self.rank}, local rank {self.local_rank}, "
                f"world size {self.world_size}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DistributedContext:
        """From ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (set by torchrun); a world of one without."""
        return cls(
            rank=int(environ.get("RANK", 0)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
        )

    @property
    def enabled(self) -> bool:
        """Whether there are peers (and so a process group) at all."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints and artifacts."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def resolve_backend(*, backend: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA devices, gloo otherwise; an explicit choice must fit the device."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"distributed.backend nccl needs CUDA devices, training is on {device}")
    return backend


def rank_device(*, ctx: DistributedContext, device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA data parallelism (one GPU per
    process), else ``device`` unchanged."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


@contextlib.contextmanager
def process_group(
    *, ctx: DistributedContext, backend: str, device: torch.device, timeout_s: float
) -> Iterator[None]:
    """Join the job's process group for the block (nothing for a world of one).

    ``timeout_s`` bounds every collective: a peer that hangs (rather than dies, which torchrun
    notices at once) fails the job after that long instead of blocking it forever.
    """
    if not ctx.enabled:
        yield
        return
    import torch.distributed as dist

    chosen = resolve_backend(backend=backend, device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=chosen,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=timeout_s),
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    logger.info(
        "Rank %d of %d (local rank %d) on %s, backend %s",
        ctx.rank,
        ctx.world_size,
        ctx.local_rank,
        device,
        chosen,
    )
    yield
    # Only after a clean end: with a peer gone, tearing the group down can block, and the
    # process's exit frees it anyway.
    dist.destroy_process_group()


def broadcast_object(value: Any, *, ctx: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    holder = [value if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Any, *, ctx: DistributedContext) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def weighted_mean(value: float, weight: int, *, ctx: DistributedContext) -> float:
    """The mean of a per-rank mean over all ranks, weighted by each rank's sample count."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
    totals = torch.tensor([value * weight, float(weight)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


def _nccl() -> bool:
    import torch.distributed as dist

    return dist.get_backend() == "nccl"


def shard_indices(num_samples: int, *, ctx: DistributedContext) -> range:
    """This rank's validation samples: every ``world_size``-th one from ``rank``. Unlike a
    ``DistributedSampler`` nothing is padded, so each sample is evaluated by exactly one rank."""
    return range(ctx.rank, num_samples, ctx.world_size)


def restore_order(shards: list[torch.Tensor]) -> torch.Tensor:
    """Undo :func:`shard_indices`: rank r's i-th row is sample ``r + i * world_size``."""
    world_size = len(shards)
    total = sum(len(s) for s in shards)
    if not shards or total == 0:
        return torch.cat(shards) if shards else torch.empty(0)
    out = shards[0].new_empty((total, *shards[0].shape[1:]))
    for rank, shard in enumerate(shards):
        out[rank::world_size] = shard
    return out


def gather_evaluation(
    *, logits: torch.Tensor, targets: torch.Tensor, mean_loss: float, ctx: DistributedContext
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The shards' logits, targets and mean loss as one evaluation of the whole validation set,
    in its original order, on rank 0 (None on the other ranks)."""
    if not ctx.enabled:
        return logits, targets, mean_loss
    gathered = gather_objects((logits.cpu(), targets.cpu(), mean_loss), ctx=ctx)
    if gathered is None:
        return None
    all_logits = restore_order([g[0] for g in gathered])
    all_targets = restore_order([g[1] for g in gathered])
    loss = sum(g[2] * len(g[1]) for g in gathered) / max(1, len(all_targets))
    return all_logits, all_targets, loss


def optimizer_steps_per_epoch(*, batches: int, grad_accum_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches: a last, shorter accumulation
    window still steps, so the schedule counts it."""
    return math.ceil(batches / grad_accum_steps)


def global_batch_size(*, batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Samples per optimizer step over the whole job (``optim.batch_size`` is per process)."""
    return batch_size * world_size * grad_accum_steps


def sync_buffers(module: torch.nn.Module, *, ctx: DistributedContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def raise_peer_stopped(signum, frame):
    """SIGTERM handler for a rank with peers (see :class:`PeerStoppedError`).

    A rank that is already failing (a peer's death usually reaches it first as an error in a
    collective) is left to finish: raising again would interrupt the MLflow call that marks the
    run FAILED. Later SIGTERMs are ignored for the same reason."""
    if sys.exc_info()[1] is not None:
        logger.warning("Signal %d while already failing: finishing the failure first", signum)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise PeerStoppedError(
        f"signal {signum}: torchrun stopped this rank, as it does when another rank fails"
    )
