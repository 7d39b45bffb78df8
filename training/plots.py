"""PNG plots logged with each run: training curves, confusion matrix, PR curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve


def plot_training_curves(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    for key in ("val_accuracy", "val_macro_f1", "val_map", "val_micro_f1"):
        if key in history[0]:
            ax_metric.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_metric.set(xlabel="epoch", ylim=(0, 1.02), title="Validation")
    ax_metric.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(
    matrix: np.ndarray, labels: tuple[str, ...], path: Path, *, split: str = "validation"
) -> Path:
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix ({split})",
    )
    ax.set_xticklabels(labels, rotation=90)
    ax.set_yticklabels(labels)
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pr_curves(
    *,
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: tuple[str, ...],
    path: Path,
    split: str = "validation",
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(labels):
        if y_true[:, i].any():
            precision, recall, _ = precision_recall_curve(y_true[:, i], y_score[:, i])
            ax.plot(recall, precision, label=name)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"Precision-recall per class ({split})",
    )
    if len(labels) <= 20:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
