"""Per-class decision thresholds for multi-label models, tuned on the validation set.

For each class the threshold is the one that maximises that class's F1 (prediction:
``score >= threshold``). Candidates are the global threshold and every observed score of the
class; among equally good ones the closest to the global threshold wins (so a class whose F1 the
global threshold already maximises keeps it exactly). A class without a positive validation
sample has no F1 to maximise: it gets no entry, and so keeps the global threshold.

The tuned thresholds are fitted to the validation set, so F1 measured on that same set with them
is optimistic; only a held-out set tells how much they help.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from models.artifact import SPEC_FILE, ModelSpec, read_spec
from models.labels import LabelSet

logger = logging.getLogger(__name__)


def _f1_at(scores: np.ndarray, positives: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 of ``scores >= t`` for each ``t`` in ``thresholds`` (O(n log n) via sorting)."""
    order = np.sort(scores)
    # Predicted positives at t: scores >= t; true positives: positive scores >= t.
    predicted = len(order) - np.searchsorted(order, thresholds, side="left")
    positive_scores = np.sort(scores[positives])
    true_pos = len(positive_scores) - np.searchsorted(positive_scores, thresholds, side="left")
    denominator = predicted + len(positive_scores)
    return np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1), 0.0)


def best_threshold(scores: np.ndarray, positives: np.ndarray, global_threshold: float) -> float:
    """The threshold maximising F1 for one class; ties go to the one closest to the global."""
    candidates = np.unique(np.append(scores, global_threshold).astype(np.float64))
    f1 = _f1_at(scores.astype(np.float64), positives, candidates)
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0.0, atol=1e-12))
    closest = best[np.argmin(np.abs(candidates[best] - global_threshold))]
    return float(candidates[closest])


def tune_class_thresholds(
    scores: torch.Tensor, targets: torch.Tensor, labels: LabelSet, *, global_threshold: float
) -> dict[str, float]:
    """Per-class F1-maximising thresholds for ``scores`` (probabilities, ``(N, classes)``)
    against multi-hot ``targets``; classes without a positive sample are left out."""
    y_score = scores.detach().cpu().double().numpy()
    y_true = targets.detach().cpu().numpy().astype(bool)
    tuned = {}
    for i, name in enumerate(labels.names):
        if not y_true[:, i].any():
            logger.info("No positive validation sample for %r: it keeps the global threshold", name)
            continue
        # Scores are probabilities; clipping only guards against rounding just outside [0, 1].
        value = best_threshold(y_score[:, i], y_true[:, i], global_threshold)
        tuned[name] = min(1.0, max(0.0, value))
    return tuned


def store_class_thresholds(artifact_dir: Path, class_thresholds: dict[str, float]) -> ModelSpec:
    """Rewrite the artifact's ``classifier.json`` with ``class_thresholds`` (validated, written
    to a temporary file and renamed, so a crash leaves the old or the new spec)."""
    spec = read_spec(artifact_dir)
    updated = ModelSpec.model_validate(
        {**spec.model_dump(mode="json"), "class_thresholds": class_thresholds}
    )
    path = Path(artifact_dir) / SPEC_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(updated.model_dump_json(indent=2))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return updated
