"""The bars `python -m training promote` checks before it moves an alias."""

import pytest

from training.promote import PromotionError, Requirement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy>=0.9", Requirement("accuracy", ">=", 0.9)),
        (" map >= 0.85 ", Requirement("map", ">=", 0.85)),
        ("ap_red-circle<=1", Requirement("ap_red-circle", "<=", 1.0)),
    ],
)
def test_requirements_parse(text, expected):
    assert Requirement.parse(text) == expected


@pytest.mark.parametrize("text", ["accuracy>0.9", "accuracy=0.9", ">=0.9", "accuracy>=high", ""])
def test_malformed_requirements_are_refused_by_name(text):
    with pytest.raises(PromotionError, match="requirement"):
        Requirement.parse(text)


def test_a_requirement_is_met_at_its_bound():
    metrics = {"accuracy": 0.9, "loss": 0.2}
    assert Requirement.parse("accuracy>=0.9").met_by(metrics)
    assert not Requirement.parse("accuracy>=0.9001").met_by(metrics)
    assert Requirement.parse("loss<=0.2").met_by(metrics)
    assert not Requirement.parse("loss<=0.1999").met_by(metrics)
