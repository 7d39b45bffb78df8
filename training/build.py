"""The build step: seeds, data split, model, loaders, optimiser, schedule and precision."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from models.artifact import ModelSpec
from models.device import choose_device
from models.factory import create_classifier
from models.labels import LabelSet, Task
from models.preprocessing import PreprocessConfig, create_eval_transform, create_train_transform

from .config import TrainConfig
from .data import DataError, DataIssue, ImageDataset, Sample, load_dataset, split_samples
from .distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    optimizer_steps_per_epoch,
    rank_device,
    shard_indices,
)
from .engine import Precision, create_loss, create_optimizer, create_scheduler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSplit:
    labels: LabelSet
    train_samples: list[Sample]
    val_samples: list[Sample]
    issues: list[DataIssue]  # the bad samples skipped (data.on_error=skip)


@dataclass(frozen=True)
class DataParallel:
    """What a rank of a torchrun job trains with beyond a single-process setup."""

    ctx: DistributedContext
    model: torch.nn.Module  # the DistributedDataParallel wrapper of TrainingSetup.model
    val_shard_loader: DataLoader  # this rank's un-padded share of the validation set


@dataclass(frozen=True)
class TrainingSetup:
    """Everything one training run works with, built before its MLflow run starts."""

    task: Task
    split: DataSplit
    precision: Precision
    model: torch.nn.Module
    spec: ModelSpec
    generator: torch.Generator  # orders and augments the training data; re-seeded every epoch
    train_loader: DataLoader
    val_loader: DataLoader
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    # Under torchrun; model, checkpoints and artifacts stay the plain module's either way.
    parallel: DataParallel | None = None

    @property
    def labels(self) -> LabelSet:
        return self.split.labels

    @property
    def ctx(self) -> DistributedContext:
        return self.parallel.ctx if self.parallel else SINGLE_PROCESS

    @property
    def train_model(self) -> torch.nn.Module:
        """What the training step runs: the DDP wrapper under torchrun, else the model."""
        return self.parallel.model if self.parallel else self.model


def seed_everything(*, seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _check_task(*, samples: list[Sample], task: Task) -> None:
    if task is Task.SINGLE_LABEL:
        multi = [s.origin for s in samples if len(s.labels) > 1]
        if multi:
            raise DataError(
                f"single_label task but {len(multi)} sample(s) have several labels, "
                f"e.g. {multi[:3]}; use model.task=multi_label"
            )


def load_split(*, cfg: TrainConfig) -> DataSplit:
    """The validated dataset, split into training and validation samples."""
    data = load_dataset(cfg.data)
    _check_task(samples=data.samples, task=cfg.task)
    train_samples, val_samples = split_samples(data.samples, cfg.data, cfg.seed)
    logger.info(
        "%d labels, %d training / %d validation samples (%d skipped)",
        len(data.labels),
        len(train_samples),
        len(val_samples),
        len(data.issues),
    )
    return DataSplit(data.labels, train_samples, val_samples, data.issues)


def _model_spec(*, cfg: TrainConfig, labels: LabelSet, preprocess: PreprocessConfig) -> ModelSpec:
    return ModelSpec(
        architecture=cfg.model.architecture,
        task=cfg.task,
        labels=labels.names,
        preprocessing=preprocess,
        threshold=cfg.model.threshold,
        top_k=cfg.model.top_k,
    )


def build_model(
    *, cfg: TrainConfig, labels: LabelSet, precision: Precision
) -> tuple[torch.nn.Module, ModelSpec]:
    """The classifier on the training device, and the spec its artifact will carry."""
    model = create_classifier(
        cfg.model.architecture, len(labels), cfg.model.pretrained, drop_rate=cfg.model.drop_rate
    )
    preprocess = PreprocessConfig.for_model(model, cfg.data.image_size)
    spec = _model_spec(cfg=cfg, labels=labels, preprocess=preprocess)
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    return model.to(precision.device, memory_format=memory_format), spec


def _loader(dataset, *, cfg: TrainConfig, shuffle: bool, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=generator,
        # Fresh workers each epoch: they are seeded from the per-epoch generator, so a resumed run
        # sees the same order and augmentation as an uninterrupted one.
        persistent_workers=False,
    )


def build_loaders(
    *, cfg: TrainConfig, split: DataSplit, spec: ModelSpec, generator: torch.Generator
) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled by ``generator``, augmented) and validation loaders."""
    preprocess = spec.preprocessing
    train_transform = create_train_transform(
        preprocess,
        scale=(cfg.augment.scale_min, 1.0),
        hflip=cfg.augment.hflip,
        color_jitter=cfg.augment.color_jitter,
    )
    train_data = ImageDataset(split.train_samples, split.labels, cfg.task, train_transform)
    val_transform = create_eval_transform(preprocess)
    val_data = ImageDataset(split.val_samples, split.labels, cfg.task, val_transform)
    return (
        _loader(train_data, cfg=cfg, shuffle=True, generator=generator),
        _loader(val_data, cfg=cfg, shuffle=False),
    )


def _sync_batchnorm(*, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type != "cuda":
        raise ValueError(
            f"distributed.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
            f"kernel); training is on {device}"
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


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
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=False,
    )
    val_shard = DataLoader(
        Subset(val_loader.dataset, shard_indices(len(val_loader.dataset), ctx=ctx)),
        batch_size=cfg.optim.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=val_loader.pin_memory,
        worker_init_fn=_seed_worker,
    )
    device = next(model.parameters()).device
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return train_share, DataParallel(ctx=ctx, model=wrapped, val_shard_loader=val_shard)


def build_training(*, cfg: TrainConfig, ctx: DistributedContext = SINGLE_PROCESS) -> TrainingSetup:
    """Data, model, loaders, loss, optimiser, schedule and precision, in the order that the
    seeded random state expects (a change of order changes the initial weights). Under torchrun
    (``ctx``) the model is wrapped in DDP, and each rank loads its share of the data."""
    split = load_split(cfg=cfg)
    device = rank_device(ctx=ctx, device=choose_device(cfg.device).device)
    precision = Precision.for_device(device, cfg.amp)
    model, spec = build_model(cfg=cfg, labels=split.labels, precision=precision)
    if ctx.enabled and cfg.distributed.sync_batchnorm:
        model = _sync_batchnorm(model=model, device=device)
    generator = torch.Generator()
    train_loader, val_loader = build_loaders(cfg=cfg, split=split, spec=spec, generator=generator)
    parallel = None
    if ctx.enabled:
        train_loader, parallel = build_data_parallel(
            cfg=cfg,
            ctx=ctx,
            model=model,
            train_loader=train_loader,
            val_loader=val_loader,
            generator=generator,
        )
    loss_fn = create_loss(cfg.task, cfg.optim.label_smoothing)
    optimizer = create_optimizer(model, cfg.optim)
    steps_per_epoch = optimizer_steps_per_epoch(
        batches=len(train_loader), grad_accum_steps=cfg.optim.grad_accum_steps
    )
    return TrainingSetup(
        task=cfg.task,
        split=split,
        precision=precision,
        model=model,
        spec=spec,
        generator=generator,
        train_loader=train_loader,
        val_loader=val_loader,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.optim, steps_per_epoch),
        scaler=precision.grad_scaler(),
        parallel=parallel,
    )
