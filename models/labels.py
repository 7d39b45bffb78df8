"""Label sets, task types and turning model outputs into labelled predictions.

The label order is part of the model: index ``i`` of the classifier head is ``labels[i]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Task(str, Enum):
    """What the classifier head predicts."""

    SINGLE_LABEL = "single_label"  # exactly one class per image: softmax, top-k
    MULTI_LABEL = "multi_label"  # any subset of classes: sigmoid, threshold


class LabelScore(BaseModel):
    """One label and the model's score for it (a probability in [0, 1])."""

    model_config = ConfigDict(frozen=True)

    label: str
    score: float


class LabelSet(BaseModel):
    """An ordered, duplicate-free list of class names."""

    model_config = ConfigDict(frozen=True)

    names: tuple[str, ...] = Field(min_length=1)

    @field_validator("names")
    @classmethod
    def _unique_and_non_blank(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        blank = [i for i, name in enumerate(names) if not name.strip()]
        if blank:
            raise ValueError(f"label names must not be blank (positions {blank})")
        seen: set[str] = set()
        duplicates = sorted({n for n in names if n in seen or seen.add(n)})
        if duplicates:
            raise ValueError(f"duplicate label names: {duplicates}")
        return names

    @classmethod
    def from_names(cls, names: Iterable[str]) -> LabelSet:
        return cls(names=tuple(names))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The class index of ``name``; ``KeyError`` naming the label if unknown."""
        try:
            return self._index_map()[name]
        except KeyError:
            raise KeyError(f"unknown label {name!r}; known labels: {list(self.names)}") from None

    def _index_map(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {name: i for i, name in enumerate(self.names)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def encode_multi_hot(self, names: Iterable[str]) -> torch.Tensor:
        """A float vector with 1.0 at the index of every given label."""
        target = torch.zeros(len(self.names), dtype=torch.float32)
        for name in names:
            target[self.index(name)] = 1.0
        return target


def scores_from_logits(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Probabilities from raw head outputs: softmax for single-label, sigmoid for multi-label."""
    logits = logits.float()
    if task is Task.SINGLE_LABEL:
        return logits.softmax(dim=-1)
    return logits.sigmoid()


def thresholds_tensor(
    labels: LabelSet, threshold: float, per_class: dict[str, float] | None
) -> torch.Tensor:
    """A per-class threshold vector: the global threshold, overridden per class where given."""
    values = torch.full((len(labels),), float(threshold))
    for name, value in (per_class or {}).items():
        values[labels.index(name)] = float(value)
    return values


def top_k_predictions(scores: torch.Tensor, labels: LabelSet, k: int) -> list[list[LabelScore]]:
    """The ``k`` best labels per row of ``scores``, best first."""
    k = max(1, min(k, len(labels)))
    values, indices = scores.topk(k, dim=-1)
    return [
        [
            LabelScore(label=labels.names[i], score=round(v, 6))
            for v, i in zip(row_v, row_i, strict=False)
        ]
        for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=False)
    ]


def thresholded_predictions(
    scores: torch.Tensor, labels: LabelSet, thresholds: torch.Tensor
) -> list[list[LabelScore]]:
    """Every label whose score reaches its threshold, per row, highest score first."""
    predictions: list[list[LabelScore]] = []
    hits = scores >= thresholds.to(scores.device)
    for row_scores, row_hits in zip(scores.tolist(), hits.tolist(), strict=False):
        chosen = [
            LabelScore(label=labels.names[i], score=round(s, 6))
            for i, (s, hit) in enumerate(zip(row_scores, row_hits, strict=False))
            if hit
        ]
        predictions.append(sorted(chosen, key=lambda ls: ls.score, reverse=True))
    return predictions


def multi_hot_to_names(target: Sequence[float], labels: LabelSet) -> list[str]:
    return [labels.names[i] for i, value in enumerate(target) if value >= 0.5]
