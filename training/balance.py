"""Class imbalance: class-weighted losses and a class-balanced sampler (``optim.class_balance``).

- ``loss``, single-label: CrossEntropy with weight ``w_c = (1 / n_c) / mean_k(1 / n_k)``, inverse
  class frequency in the training split normalised to mean 1 over classes (a balanced set gets
  all ones, the same loss as ``none``).
- ``loss``, multi-label: BCEWithLogits with ``pos_weight_c = negatives_c / positives_c`` in the
  training split, clipped to ``optim.max_pos_weight``.
- ``sampler``, single-label: a ``WeightedRandomSampler`` (with replacement, one epoch = as many
  draws as training samples) that draws every class equally often on average. It takes the
  per-epoch re-seeded generator, so a resumed run draws the same order as an uninterrupted one.

A class without a training sample counts as one sample (it never is a target, so its weight
only has to be finite).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from models.labels import LabelSet, Task

from .config import OptimConfig
from .data import Sample

logger = logging.getLogger(__name__)

SAMPLER_WITH_TORCHRUN = "class_balance=sampler is not supported with torchrun; use loss"


def class_counts(samples: Sequence[Sample], labels: LabelSet) -> torch.Tensor:
    """Per class, the number of samples carrying it (multi-label: each of its labels counts)."""
    counts = torch.zeros(len(labels), dtype=torch.float64)
    for sample in samples:
        for name in set(sample.labels):
            counts[labels.index(name)] += 1
    return counts


def inverse_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """``(1 / n_c) / mean_k(1 / n_k)``: the rarer the class, the heavier; mean 1 over classes."""
    inverse = 1.0 / counts.clamp(min=1.0)
    return (inverse / inverse.mean()).float()


def positive_weights(counts: torch.Tensor, num_samples: int, max_weight: float) -> torch.Tensor:
    """BCE ``pos_weight``: negatives / positives per class, clipped to ``max_weight``."""
    positives = counts.clamp(min=1.0)
    return ((num_samples - counts) / positives).clamp(max=max_weight).float()


def loss_weights(
    *, samples: Sequence[Sample], labels: LabelSet, task: Task, cfg: OptimConfig
) -> torch.Tensor | None:
    """The class weights (single-label) or ``pos_weight`` (multi-label) the loss will use;
    ``None`` unless ``class_balance`` is ``loss``."""
    if cfg.class_balance != "loss":
        return None
    counts = class_counts(samples, labels)
    if task is Task.SINGLE_LABEL:
        return inverse_frequency_weights(counts)
    return positive_weights(counts, len(samples), cfg.max_pos_weight)


def check_sampler_world_size(world_size: int) -> None:
    if world_size > 1:
        raise ValueError(SAMPLER_WITH_TORCHRUN)


def create_sampler(
    *, samples: Sequence[Sample], labels: LabelSet, generator: torch.Generator
) -> WeightedRandomSampler:
    """Draws each class with equal probability (single-label: one label per sample)."""
    check_sampler_world_size(int(os.environ.get("WORLD_SIZE", "1")))
    counts = class_counts(samples, labels)
    per_sample = torch.tensor(
        [1.0 / counts[labels.index(s.labels[0])].item() for s in samples], dtype=torch.float64
    )
    return WeightedRandomSampler(
        per_sample, num_samples=len(samples), replacement=True, generator=generator
    )


def describe(*, cfg: OptimConfig, task: Task) -> str:
    """The resolved choice, as logged in ``resolved.class_balance``."""
    if cfg.class_balance == "none":
        return "none"
    if cfg.class_balance == "sampler":
        return "sampler (classes drawn equally often)"
    if task is Task.SINGLE_LABEL:
        return "loss (CrossEntropy, class weights = inverse frequency, mean 1)"
    return f"loss (BCEWithLogits, pos_weight = negatives/positives, max {cfg.max_pos_weight:g})"


def balance_report(
    *, samples: Sequence[Sample], labels: LabelSet, task: Task, cfg: OptimConfig
) -> dict:
    """What the run balances with: the choice, the training-split counts and the weights."""
    weights = loss_weights(samples=samples, labels=labels, task=task, cfg=cfg)
    counts = class_counts(samples, labels)
    report: dict = {
        "class_balance": describe(cfg=cfg, task=task),
        "train_counts": {n: int(c) for n, c in zip(labels.names, counts.tolist(), strict=True)},
    }
    if weights is not None:
        key = "class_weights" if task is Task.SINGLE_LABEL else "pos_weight"
        report[key] = {n: float(w) for n, w in zip(labels.names, weights.tolist(), strict=True)}
    return report
