"""The epoch loop: train and evaluate one epoch, log it, keep the best model, stop early.

An epoch is split the way data-parallel training will need it: :func:`run_epoch` is the part
every rank would run; :func:`log_epoch` and :func:`save_progress` are the parts only one rank
would run, since only one may talk to MLflow and write the run's folder.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from . import checkpoint, distributed, finetune
from .build import TrainingSetup
from .config import TrainConfig
from .engine import evaluate, train_one_epoch
from .metrics import MONITORED, compute_metrics, scalar_metrics

logger = logging.getLogger(__name__)

# Rank r of a torchrun job seeds its augmentation with seed + epoch + r * RANK_SEED_STRIDE.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    lr: float  # after the epoch's last step
    metrics: dict  # compute_metrics() on the validation set
    val_samples: int = 0  # how many validation samples the metrics count (each exactly once)

    def row(self) -> dict:
        """The epoch's scalars, as the history and MLflow record them."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "lr": self.lr,
            **scalar_metrics(self.metrics),
        }


@dataclass(frozen=True)
class EarlyStopping:
    """Best-score bookkeeping kept in the checkpointed state, so that a resumed run keeps its
    best model and stops at the epoch where an uninterrupted one would."""

    patience: int
    min_delta: float

    def update(self, state: checkpoint.TrainingState, *, epoch: int, score: float) -> bool:
        """Record ``epoch``'s score; whether it is the new best."""
        if score > state.best_score + self.min_delta:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            return True
        state.bad_epochs += 1
        return False

    def should_stop(self, state: checkpoint.TrainingState) -> bool:
        return state.bad_epochs >= self.patience


def run_epoch(*, cfg: TrainConfig, setup: TrainingSetup, epoch: int) -> EpochResult | None:
    """Train one epoch, then evaluate on the validation set. Under torchrun every rank trains
    and evaluates its share; the result, over the whole validation set, is rank 0's (None on
    the other ranks)."""
    ctx = setup.ctx
    # Re-seeding per epoch makes a resumed run see the same data order and augmentation; each
    # rank augments differently (rank 0 as a single process would). Python's and NumPy's
    # generators too: timm's random-resized crop draws from `random`, in this process when
    # data.num_workers is 0 (workers are seeded by data.seed_worker).
    seed = cfg.seed + epoch + RANK_SEED_STRIDE * ctx.rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    setup.generator.manual_seed(seed)
    if setup.parallel:
        setup.train_loader.sampler.set_epoch(epoch)
    # From the epoch alone, so that a resumed run is in the same stage as an uninterrupted one.
    frozen = finetune.is_frozen_epoch(
        epoch=epoch, freeze_backbone_epochs=cfg.optim.freeze_backbone_epochs
    )
    if cfg.optim.freeze_backbone_epochs:
        finetune.set_backbone_frozen(setup.model, frozen=frozen)
        logger.info("epoch %d trains %s", epoch, "the head only" if frozen else "all layers")
    train_loss = train_one_epoch(
        model=setup.train_model,
        loader=setup.train_loader,
        loss_fn=setup.loss_fn,
        optimizer=setup.optimizer,
        scheduler=setup.scheduler,
        scaler=setup.scaler,
        precision=setup.precision,
        epoch=epoch,
        freeze_backbone=frozen,
        grad_accum_steps=cfg.optim.grad_accum_steps,
    )
    # Each rank updated its BatchNorm statistics on its own batches; rank 0's are the ones saved.
    distributed.sync_buffers(setup.model, ctx=ctx)
    shard = evaluate(
        model=setup.model,
        loader=setup.parallel.val_shard_loader if setup.parallel else setup.val_loader,
        loss_fn=setup.loss_fn,
        precision=setup.precision,
    )
    train_loss = distributed.weighted_mean(train_loss, len(setup.train_loader.sampler), ctx=ctx)
    gathered = distributed.gather_evaluation(
        logits=shard[0], targets=shard[1], mean_loss=shard[2], ctx=ctx
    )
    if gathered is None:
        return None
    logits, targets, val_loss = gathered
    metrics = compute_metrics(
        logits, targets, setup.labels, setup.task, threshold=cfg.model.threshold
    )
    lr = setup.scheduler.get_last_lr()[0]
    return EpochResult(epoch, train_loss, val_loss, lr, metrics, val_samples=len(targets))


def log_epoch(*, result: EpochResult, state: checkpoint.TrainingState, monitored: str) -> None:
    """Append the epoch to the history (for the training-curve plot) and log it to MLflow."""
    row = result.row()
    state.history.append({k: float(v) for k, v in row.items()})
    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=result.epoch)
    mlflow.log_metric("val_samples", result.val_samples, step=result.epoch)
    logger.info(
        "epoch %d: train_loss %.4f val_loss %.4f val_%s %.4f",
        result.epoch,
        result.train_loss,
        result.val_loss,
        monitored,
        result.metrics[monitored],
    )


def save_progress(
    *, run_dir: Path, state: checkpoint.TrainingState, setup: TrainingSetup, improved: bool
) -> None:
    """Replace ``best/`` when the epoch improved on it, then write the resumable checkpoint."""
    if improved:
        checkpoint.save_best_artifact(run_dir, setup.model, setup.spec)
    checkpoint.save_checkpoint(
        run_dir / checkpoint.LAST_CHECKPOINT,
        state=state,
        model=setup.model,
        optimizer=setup.optimizer,
        scheduler=setup.scheduler,
        scaler=setup.scaler,
    )


def train_loop(
    *,
    cfg: TrainConfig,
    setup: TrainingSetup,
    state: checkpoint.TrainingState,
    run_dir: Path | None,
) -> None:
    """The epochs after ``state.epoch`` up to ``optim.epochs``, or until early stopping.

    Under torchrun only rank 0 logs, keeps the best model and decides on early stopping
    (``run_dir`` is None on the other ranks); its decision reaches every rank, so all leave the
    loop after the same epoch."""
    stopping = EarlyStopping(patience=cfg.optim.patience, min_delta=cfg.optim.min_delta)
    monitored = MONITORED[setup.task]
    for epoch in range(state.epoch + 1, cfg.optim.epochs + 1):
        result = run_epoch(cfg=cfg, setup=setup, epoch=epoch)
        state.epoch = epoch
        stop = False
        if result is not None:
            stop = _keep_epoch(
                result=result,
                state=state,
                setup=setup,
                run_dir=run_dir,
                stopping=stopping,
                monitored=monitored,
            )
        if distributed.broadcast_object(stop, ctx=setup.ctx):
            break


def _keep_epoch(
    *,
    result: EpochResult,
    state: checkpoint.TrainingState,
    setup: TrainingSetup,
    run_dir: Path,
    stopping: EarlyStopping,
    monitored: str,
) -> bool:
    """Rank 0's share of an epoch: log it, keep the best model, checkpoint; whether to stop."""
    log_epoch(result=result, state=state, monitored=monitored)
    improved = stopping.update(state, epoch=result.epoch, score=result.metrics[monitored])
    save_progress(run_dir=run_dir, state=state, setup=setup, improved=improved)
    if stopping.should_stop(state):
        logger.info(
            "Early stopping after epoch %d (best: epoch %d)", result.epoch, state.best_epoch
        )
        return True
    return False
