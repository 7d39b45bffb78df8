"""Per-request options of ``/classify`` (``top_k``, ``threshold``) and how they travel through
adaptive batching: every image becomes a :class:`ClassifyItem` carrying its request's options
(BentoML's composite-input pattern), so requests batched together keep their own answers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
from PIL import Image
from pydantic import Field

from models.artifact import ModelSpec
from models.labels import Task

from .problems import FieldError

TOP_K_DESCRIPTION = (
    "how many labels to answer per image, best first (1 to the number of labels); single-label "
    "models answer exactly this many, multi-label models at most this many of those over their "
    "thresholds. Default: the model's top_k (single-label), every label over its threshold "
    "(multi-label)"
)
THRESHOLD_DESCRIPTION = (
    "multi-label models only: the score a label must reach, for every label (0 to 1); it "
    "replaces the model's threshold and its per-class thresholds for this request. Default: the "
    "model's (classifier.json). A single-label model refuses it (422)"
)
TopK = Annotated[int | None, Field(ge=1, description=TOP_K_DESCRIPTION)]
Threshold = Annotated[float | None, Field(ge=0.0, le=1.0, description=THRESHOLD_DESCRIPTION)]
OPTION_FIELDS = ("top_k", "threshold")


@dataclass(frozen=True)
class ClassifyOptions:
    """One request's options; None keeps the model's default."""

    top_k: int | None = None
    threshold: float | None = None


DEFAULT_OPTIONS = ClassifyOptions()


@dataclass(frozen=True)
class ClassifyItem:
    """One image of a batch with its request's options."""

    image: Image.Image | torch.Tensor
    options: ClassifyOptions = field(default=DEFAULT_OPTIONS)


class OptionError(ValueError):
    """Options a request may not ask for; ``errors`` names each field (a 422)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{error.field}: {error.reason}" for error in errors))
        self.errors = errors


@dataclass(frozen=True)
class OptionRules:
    """What the served model allows."""

    num_labels: int
    multi_label: bool

    @classmethod
    def of(cls, spec: ModelSpec) -> OptionRules:
        return cls(num_labels=spec.num_classes, multi_label=spec.task is Task.MULTI_LABEL)

    def check(self, options: ClassifyOptions) -> ClassifyOptions:
        """``options`` if this model allows them, else :class:`OptionError` naming the fields."""
        errors: list[FieldError] = []
        if options.top_k is not None and not 1 <= options.top_k <= self.num_labels:
            errors.append(
                FieldError(
                    field="top_k",
                    reason=f"must be from 1 to {self.num_labels} (the model's number of labels), "
                    f"got {options.top_k}",
                )
            )
        if options.threshold is not None:
            if not self.multi_label:
                errors.append(
                    FieldError(
                        field="threshold",
                        reason="applies to multi-label models only; this model is single-label "
                        "(use top_k)",
                    )
                )
            elif not 0.0 <= options.threshold <= 1.0:
                errors.append(
                    FieldError(
                        field="threshold", reason=f"must be from 0 to 1, got {options.threshold}"
                    )
                )
        if errors:
            raise OptionError(errors)
        return options


def parse_options(values: dict[str, str]) -> ClassifyOptions:
    """Options from form values (text; BentoML's clients send JSON, so ``null`` is no value),
    or :class:`OptionError` naming each field that is not a number of the right kind."""
    errors: list[FieldError] = []
    parsed: dict[str, int | float | None] = {}
    for name, raw in values.items():
        text = raw.strip()
        if text in ("", "null"):
            continue
        try:
            parsed[name] = _int(text) if name == "top_k" else _fraction(text)
        except ValueError as exc:
            errors.append(FieldError(field=name, reason=str(exc)))
    if errors:
        raise OptionError(errors)
    return ClassifyOptions(**parsed)  # type: ignore[arg-type]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, got {text[:40]!r}") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number from 0 to 1, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a number from 0 to 1, got {text[:40]!r}")
    return value
