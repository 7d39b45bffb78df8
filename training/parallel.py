"""What a rank of a torchrun job adds to a training setup: its share of the training data (a
``DistributedSampler`` reshuffled each epoch), the ``DistributedDataParallel`` wrapper and its
un-padded share of the validation set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .config import TrainConfig
from .data import seed_worker
from .distributed import DistributedContext, shard_indices


@dataclass(frozen=True)
class DataParallel:
    """What a rank of a torchrun job trains with beyond a single-process setup."""

    ctx: DistributedContext
    model: torch.nn.Module  # the DistributedDataParallel wrapper of TrainingSetup.model
    val_shard_loader: DataLoader  # this rank's un-padded share of the validation set


def sync_batchnorm(*, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type != "cuda":
        raise ValueError(
            f"distributed.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
            f"kernel); training is on {device}"
        )
    return torch.nn.SyncBatchNorm.convertsync_batchnorm(model)


def build_data_parallel(
    *,
    cfg: TrainConfig,
    ctx: DistributedContext,
    model: torch.nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    generator: torch.Generator,
) -> tuple[DataLoader, DataParallel]:
    """This rank's training loader (a ``DistributedSampler`` share, reshuffled each epoch by
    ``set_epoch``) and its DDP wrapper and validation shard."""
    sampler = DistributedSampler(
        train_loader.dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    train_share = DataLoader(
        train_loader.dataset,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=cfg.data.num_workers,
        pin_memory=train_loader.pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=False,
    )
    val_shard = DataLoader(
        Subset(val_loader.dataset, shard_indices(len(val_loader.dataset), ctx=ctx)),
        batch_size=cfg.optim.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=val_loader.pin_memory,
        worker_init_fn=seed_worker,
    )
    device = next(model.parameters()).device
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return train_share, DataParallel(ctx=ctx, model=wrapped, val_shard_loader=val_shard)
