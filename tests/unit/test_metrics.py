import numpy as np
import pytest
import torch

from models.labels import LabelSet, Task
from training.metrics import (
    compute_metrics,
    multi_label_metrics,
    scalar_metrics,
    single_label_metrics,
)

LABELS = LabelSet.from_names(["a", "b", "c"])


def test_single_label_metrics_on_known_predictions():
    scores = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    targets = torch.tensor([0, 1, 1, 2])
    metrics = single_label_metrics(scores, targets, LABELS)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["top5"] == pytest.approx(1.0)  # k = min(5, 3 classes)
    # per-class F1: a 2/3, b 2/3, c 1 -> macro 7/9
    assert metrics["macro_f1"] == pytest.approx(7 / 9)
    assert metrics["confusion_matrix"].tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_multi_label_metrics_on_known_predictions():
    scores = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.4], [0.7, 0.6, 0.1]])
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)
    metrics = multi_label_metrics(scores, targets, LABELS, threshold=0.5)
    # a and c rank perfectly (AP 1); b: positive ranked 1st of scores {0.8, 0.6, 0.2} -> AP 1
    assert metrics["map"] == pytest.approx(1.0)
    # predicted at 0.5: [a,c], [b], [a,b] -> TP 4, FP 1, FN 0
    assert metrics["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1))
    assert set(metrics["per_class_ap"]) == {"a", "b", "c"}


def test_classes_without_positives_are_left_out_of_map():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    metrics = multi_label_metrics(scores, targets, LABELS)
    assert set(metrics["per_class_ap"]) == {"a", "b"}


def test_compute_metrics_applies_the_task_activation():
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])
    single = compute_metrics(logits, torch.tensor([0, 1]), LABELS, Task.SINGLE_LABEL)
    assert single["accuracy"] == 1.0
    multi = compute_metrics(
        logits, torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.float32), LABELS, Task.MULTI_LABEL
    )
    assert multi["micro_f1"] == 1.0


def test_scalar_metrics_flattens_per_class_ap():
    flat = scalar_metrics({"map": 0.5, "per_class_ap": {"a": 0.25}, "confusion_matrix": np.eye(2)})
    assert flat == {"val_map": 0.5, "val_ap_a": 0.25}


def test_label_names_become_valid_mlflow_metric_names():
    from mlflow.utils.validation import _validate_metric_name

    from training.metrics import metric_safe

    for label in ("rock&roll", "a+b", "dog's", "x//y", "..", "ok-name 1"):
        _validate_metric_name(f"val_ap_{metric_safe(label)}")
