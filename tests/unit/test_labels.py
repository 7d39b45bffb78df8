import pytest
import torch
from pydantic import ValidationError

from models.labels import (
    LabelSet,
    Task,
    scores_from_logits,
    thresholded_predictions,
    thresholds_tensor,
    top_k_predictions,
)

LABELS = LabelSet.from_names(["cat", "dog", "fox"])


def test_label_order_is_preserved_and_indexable():
    assert LABELS.names == ("cat", "dog", "fox")
    assert [LABELS.index(n) for n in ("fox", "cat")] == [2, 0]


def test_unknown_label_error_names_it_and_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown label 'owl'.*'cat', 'dog', 'fox'"):
        LABELS.index("owl")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "b", "a"], "duplicate label names: \\['a'\\]"),
        (["a", " "], "must not be blank"),
        ([], "at least 1"),
    ],
)
def test_invalid_label_sets_are_rejected(names, message):
    with pytest.raises(ValidationError, match=message):
        LabelSet.from_names(names)


def test_multi_hot_encoding():
    assert LABELS.encode_multi_hot(["fox", "cat"]).tolist() == [1.0, 0.0, 1.0]


def test_scores_softmax_for_single_sigmoid_for_multi():
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    assert torch.allclose(scores_from_logits(logits, Task.SINGLE_LABEL), torch.full((1, 3), 1 / 3))
    assert torch.allclose(scores_from_logits(logits, Task.MULTI_LABEL), torch.full((1, 3), 0.5))


def test_top_k_is_sorted_and_clamped_to_label_count():
    scores = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    top = top_k_predictions(scores, LABELS, k=10)
    assert [p.label for p in top[0]] == ["dog", "cat", "fox"]
    assert [p.label for p in top_k_predictions(scores, LABELS, k=1)[1]] == ["cat"]
    assert top[0][0].score == pytest.approx(0.7)


def test_threshold_global_and_per_class_override():
    scores = torch.tensor([[0.6, 0.45, 0.9], [0.1, 0.2, 0.3]])
    thresholds = thresholds_tensor(LABELS, 0.5, {"dog": 0.4, "fox": 0.95})
    assert thresholds.tolist() == pytest.approx([0.5, 0.4, 0.95])
    predictions = thresholded_predictions(scores, LABELS, thresholds)
    assert [p.label for p in predictions[0]] == ["cat", "dog"]  # fox 0.9 < 0.95
    assert predictions[1] == []


def test_threshold_is_inclusive():
    predictions = thresholded_predictions(
        torch.tensor([[0.5, 0.49, 0.0]]), LABELS, thresholds_tensor(LABELS, 0.5, None)
    )
    assert [p.label for p in predictions[0]] == ["cat"]
