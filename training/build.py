"""The build step: seeds, data split, model, loaders, optimiser, schedule and precision."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.artifact import ModelSpec
from models.device import choose_device
from models.factory import create_classifier
from models.labels import LabelSet, Task
from models.preprocessing import PreprocessConfig, create_eval_transform, create_train_transform

from . import balance, finetune
from .config import TrainConfig
from .data import (
    DataError,
    DataIssue,
    ImageDataset,
    LoadedData,
    Sample,
    load_dataset,
    seed_worker,
)
from .distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    optimizer_steps_per_epoch,
    rank_device,
)
from .engine import Precision, create_loss, create_optimizer, create_scheduler
from .parallel import DataParallel, build_data_parallel, sync_batchnorm
from .splits import explicit_split, has_explicit_splits, split_samples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSplit:
    labels: LabelSet
    train_samples: list[Sample]
    val_samples: list[Sample]
    issues: list[DataIssue]  # the bad samples skipped (data.on_error=skip)
    # Evaluated once with the best model (finish step), never for model selection; empty
    # when the data has no test split.
    test_samples: list[Sample] = field(default_factory=list)


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


def _check_task(*, samples: list[Sample], task: Task) -> None:
    if task is Task.SINGLE_LABEL:
        multi = [s.origin for s in samples if len(s.labels) > 1]
        if multi:
            raise DataError(
                f"single_label task but {len(multi)} sample(s) have several labels, "
                f"e.g. {multi[:3]}; use model.task=multi_label"
            )


def load_split(*, cfg: TrainConfig) -> DataSplit:
    """The validated dataset, split into training and validation (and test) samples: as the
    data gives them (data.val_root/test_root, a manifest's split column), else at random."""
    data = load_dataset(cfg.data)
    _check_task(samples=data.samples, task=cfg.task)
    if has_explicit_splits(cfg.data, data.samples):
        return _explicit_data_split(cfg=cfg, data=data)
    train_samples, val_samples = split_samples(data.samples, cfg.data, cfg.seed)
    logger.info(
        "%d labels, %d training / %d validation samples (%d skipped)",
        len(data.labels),
        len(train_samples),
        len(val_samples),
        len(data.issues),
    )
    return DataSplit(data.labels, train_samples, val_samples, data.issues)


def _explicit_data_split(*, cfg: TrainConfig, data: LoadedData) -> DataSplit:
    split = explicit_split(data, cfg.data, cfg.seed)
    _check_task(samples=split.val + split.test, task=cfg.task)
    logger.info(
        "%d labels, %d training / %d validation / %d test samples (explicit splits; %d skipped)",
        len(split.labels),
        len(split.train),
        len(split.val),
        len(split.test),
        len(split.issues),
    )
    return DataSplit(split.labels, split.train, split.val, split.issues, split.test)


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


def _loader(
    dataset, *, cfg: TrainConfig, shuffle: bool, generator=None, sampler=None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=False,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
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
    sampler = None
    if cfg.optim.class_balance == "sampler":
        sampler = balance.create_sampler(
            samples=split.train_samples, labels=split.labels, generator=generator
        )
    return (
        _loader(train_data, cfg=cfg, shuffle=True, generator=generator, sampler=sampler),
        _loader(val_data, cfg=cfg, shuffle=False),
    )


def build_eval_loader(
    *, cfg: TrainConfig, samples: list[Sample], labels: LabelSet, spec: ModelSpec
) -> DataLoader:
    """Unshuffled, unaugmented: the validation loader's recipe for other samples (the test
    split)."""
    dataset = ImageDataset(samples, labels, cfg.task, create_eval_transform(spec.preprocessing))
    return _loader(dataset, cfg=cfg, shuffle=False)


def build_training(*, cfg: TrainConfig, ctx: DistributedContext = SINGLE_PROCESS) -> TrainingSetup:
    """Data, model, loaders, loss, optimiser, schedule and precision, in the order that the
    seeded random state expects (a change of order changes the initial weights). Under torchrun
    (``ctx``) the model is wrapped in DDP, and each rank loads its share of the data."""
    finetune.check_world_size(
        freeze_backbone_epochs=cfg.optim.freeze_backbone_epochs,
        world_size=ctx.world_size,
    )
    split = load_split(cfg=cfg)
    device = rank_device(ctx=ctx, device=choose_device(cfg.device).device)
    precision = Precision.for_device(device, cfg.amp)
    model, spec = build_model(cfg=cfg, labels=split.labels, precision=precision)
    if ctx.enabled and cfg.distributed.sync_batchnorm:
        model = sync_batchnorm(model=model, device=device)
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
    weights = balance.loss_weights(
        samples=split.train_samples, labels=split.labels, task=cfg.task, cfg=cfg.optim
    )
    loss_fn = create_loss(cfg.task, cfg.optim.label_smoothing, weights).to(device)
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
