"""Evaluation metrics for single-label and multi-label classification."""

from __future__ import annotations

import re

import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score

from models.labels import LabelSet, Task, scores_from_logits, thresholds_tensor

# The metric that selects the best checkpoint and drives early stopping, per task.
MONITORED = {Task.SINGLE_LABEL: "accuracy", Task.MULTI_LABEL: "map"}


def single_label_metrics(scores: torch.Tensor, targets: torch.Tensor, labels: LabelSet) -> dict:
    """Accuracy, top-5 accuracy (top-k with k = min(5, classes)), macro-F1, confusion matrix."""
    y_true = targets.numpy()
    y_pred = scores.argmax(dim=1).numpy()
    k = min(5, len(labels))
    topk = scores.topk(k, dim=1).indices.numpy()
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "top5": float((topk == y_true[:, None]).any(axis=1).mean()),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=range(len(labels)), zero_division=0)
        ),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=range(len(labels))),
    }


def multi_label_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    labels: LabelSet,
    *,
    threshold: float = 0.5,
    class_thresholds: dict[str, float] | None = None,
) -> dict:
    """mAP over classes with positives, micro/macro F1 at the threshold(s), per-class AP."""
    y_true = targets.numpy().astype(int)
    y_score = scores.numpy()
    y_pred = (scores >= thresholds_tensor(labels, threshold, class_thresholds)).numpy().astype(int)
    per_class_ap = {}
    for i, name in enumerate(labels.names):
        if y_true[:, i].any():
            per_class_ap[name] = float(average_precision_score(y_true[:, i], y_score[:, i]))
    return {
        "map": float(np.mean(list(per_class_ap.values()))) if per_class_ap else 0.0,
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class_ap": per_class_ap,
    }


def compute_metrics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: LabelSet,
    task: Task,
    *,
    threshold: float = 0.5,
    class_thresholds: dict[str, float] | None = None,
) -> dict:
    return metrics_from_scores(
        scores_from_logits(logits, task),
        targets,
        labels,
        task,
        threshold=threshold,
        class_thresholds=class_thresholds,
    )


def metrics_from_scores(
    scores: torch.Tensor,
    targets: torch.Tensor,
    labels: LabelSet,
    task: Task,
    *,
    threshold: float = 0.5,
    class_thresholds: dict[str, float] | None = None,
) -> dict:
    """:func:`compute_metrics` for class probabilities (what ``models.Predictor.scores`` gives)."""
    if task is Task.SINGLE_LABEL:
        return single_label_metrics(scores, targets, labels)
    return multi_label_metrics(
        scores, targets, labels, threshold=threshold, class_thresholds=class_thresholds
    )


def metric_safe(name: str) -> str:
    """A label as MLflow accepts it in a metric name (letters, digits, ``_ - .`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", name).strip(" .") or "_"


def scalar_metrics(metrics: dict, prefix: str = "val_") -> dict[str, float]:
    """The loggable scalars, prefixed (per-class AP becomes ``val_ap_<label>``)."""
    out = {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, float)}
    for name, ap in metrics.get("per_class_ap", {}).items():
        out[f"{prefix}ap_{metric_safe(name)}"] = ap
    return out
