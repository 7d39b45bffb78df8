"""The training loop's parts: optimiser, schedule, one epoch, evaluation, precision."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.device import autocast_dtype
from models.labels import Task

from .config import OptimConfig
from .finetune import freeze_backbone_norms, layer_decay_param_groups


@dataclass(frozen=True)
class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling), chosen by
    the training profile of ``models.device``."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> Precision:
        dtype = autocast_dtype(device.type, "auto" if amp else "float32", profile="training")
        return cls(device, dtype, channels_last=device.type == "cuda")

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)


def create_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation parameters; with
    ``layer_decay``, one group per layer with its own decayed LR (see :mod:`.finetune`)."""
    from timm.optim import param_groups_weight_decay

    if cfg.layer_decay is not None:
        groups = layer_decay_param_groups(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
        )
        return torch.optim.AdamW(groups, lr=cfg.lr)
    groups = param_groups_weight_decay(model, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def create_loss(
    task: Task, label_smoothing: float, weights: torch.Tensor | None = None
) -> torch.nn.Module:
    """``weights``: per-class weights (single-label) or ``pos_weight`` (multi-label), from
    :func:`.balance.loss_weights`."""
    if task is Task.SINGLE_LABEL:
        return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    return torch.nn.BCEWithLogitsLoss(pos_weight=weights)


@dataclass(frozen=True)
class AccumulationWindow:
    """Where a micro-batch falls in its gradient-accumulation window."""

    starts: bool  # the first micro-batch of its window: gradients are reset before it
    steps: bool  # the last one: the optimizer and the schedule step after it
    size: int  # micro-batches in this window (the epoch's last window may be shorter)


def accumulation_window(index: int, *, batches: int, grad_accum_steps: int) -> AccumulationWindow:
    """Micro-batch ``index`` of an epoch of ``batches``, accumulated ``grad_accum_steps`` at a
    time."""
    start = index - index % grad_accum_steps
    size = min(grad_accum_steps, batches - start)
    return AccumulationWindow(starts=index == start, steps=index == start + size - 1, size=size)


def _no_sync(model):
    """DDP's ``no_sync()`` (skip the gradient all-reduce); nothing for a plain module."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


def train_one_epoch(
    *,
    model,
    loader: DataLoader,
    loss_fn,
    optimizer,
    scheduler,
    scaler,
    precision: Precision,
    epoch: int,
    freeze_backbone: bool = False,
    grad_accum_steps: int = 1,
) -> float:
    """One pass over ``loader``, stepping the optimizer and the schedule every
    ``grad_accum_steps`` batches (and after the last); the mean training loss.
    ``freeze_backbone``: stage 1 of fine-tuning, the backbone's norm statistics stay as they are
    (its parameters are frozen by :func:`.finetune.set_backbone_frozen`)."""
    model.train()
    if freeze_backbone:
        freeze_backbone_norms(model)
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False, disable=None)
    for index, (images, targets) in enumerate(bar):
        window = accumulation_window(index, batches=len(loader), grad_accum_steps=grad_accum_steps)
        images = precision.to_device(images)
        targets = targets.to(precision.device, non_blocking=True)
        # DDP all-reduces gradients in backward(); between optimizer steps that is wasted work.
        sync = contextlib.nullcontext() if window.steps else _no_sync(model)
        with sync:
            with precision.autocast():
                loss = loss_fn(model(images), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch}; lower optim.lr or check the data"
                )
            if window.starts:
                optimizer.zero_grad(set_to_none=True)
            # The window's mean gradient: each micro-batch's mean loss, divided by its count.
            scaler.scale(loss / window.size if window.size > 1 else loss).backward()
        if window.steps:
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        total += loss.item() * images.shape[0]
        count += images.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / max(1, count)


@torch.inference_mode()
def evaluate(
    *, model, loader: DataLoader, loss_fn, precision: Precision, desc: str = "validate"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logits and targets (on CPU) for the whole loader, and the mean loss."""
    model.eval()
    all_logits, all_targets, total = [], [], 0.0
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        images = precision.to_device(images)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        total += loss_fn(logits, targets.to(logits.device)).item() * images.shape[0]
        all_logits.append(logits.cpu())
        all_targets.append(targets)
    logits, targets = torch.cat(all_logits), torch.cat(all_targets)
    return logits, targets, total / max(1, len(targets))
