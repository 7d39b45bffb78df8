"""Real-data options in-process: class-balance weights and sampler, the per-class threshold
tuner, layer-wise LR decay groups and the frozen-backbone stage of fine-tuning."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.artifact import ModelSpec, read_spec, save_artifact
from models.factory import create_classifier
from models.labels import LabelSet, Task
from models.preprocessing import PreprocessConfig
from training import balance, finetune, thresholds
from training.config import OptimConfig, load_config
from training.data import Sample
from training.engine import Precision, create_optimizer, create_scheduler, train_one_epoch
from training.metrics import multi_label_metrics

LABELS = LabelSet.from_names(["a", "b", "c"])


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [
        Sample(Path(f"{name}{i}.jpg"), (name,), f"{name}{i}")
        for name, n in counts.items()
        for i in range(n)
    ]


def test_single_label_class_weights_are_inverse_frequency_with_mean_one():
    weights = balance.loss_weights(
        samples=_samples({"a": 10, "b": 10, "c": 2}),
        labels=LABELS,
        task=Task.SINGLE_LABEL,
        cfg=OptimConfig(class_balance="loss"),
    )
    expected = torch.tensor([0.1, 0.1, 0.5]) / (0.7 / 3)
    assert torch.allclose(weights, expected)
    assert weights.mean().item() == pytest.approx(1.0)
    balanced = balance.inverse_frequency_weights(torch.tensor([7.0, 7.0, 7.0]))
    assert torch.allclose(balanced, torch.ones(3))


def test_multi_label_pos_weight_is_negatives_over_positives_clipped():
    samples = [
        Sample(Path(f"{i}.jpg"), labels, str(i))
        for i, labels in enumerate([("a", "b")] + [("a",)] * 4 + [("c",)] * 5)
    ]  # 10 samples: a 5 positives, b 1, c 5
    cfg = OptimConfig(class_balance="loss", max_pos_weight=5.0)
    weights = balance.loss_weights(samples=samples, labels=LABELS, task=Task.MULTI_LABEL, cfg=cfg)
    assert weights.tolist() == pytest.approx([1.0, 5.0, 1.0])  # b: 9/1 clipped to 5
    unclipped = balance.positive_weights(torch.tensor([5.0, 1.0, 0.0]), 10, 100.0)
    assert unclipped.tolist() == pytest.approx([1.0, 9.0, 10.0])  # no positive: counts as one


def test_no_class_balance_means_no_weights():
    cfg = OptimConfig()
    assert cfg.class_balance == "none"
    samples = _samples({"a": 3, "b": 1, "c": 1})
    assert (
        balance.loss_weights(samples=samples, labels=LABELS, task=Task.SINGLE_LABEL, cfg=cfg)
        is None
    )


def test_sampler_draws_classes_equally_and_repeats_with_the_seed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    samples = _samples({"a": 90, "b": 9, "c": 1})
    generator = torch.Generator()
    sampler = balance.create_sampler(samples=samples, labels=LABELS, generator=generator)
    draws = []
    for epoch in range(30):
        generator.manual_seed(epoch)
        draws += [samples[i].labels[0] for i in sampler]
    frequencies = {k: v / len(draws) for k, v in Counter(draws).items()}
    assert len(draws) == 30 * len(samples)
    assert all(abs(f - 1 / 3) < 0.05 for f in frequencies.values()), frequencies
    generator.manual_seed(7)
    first = list(sampler)
    generator.manual_seed(7)
    assert list(sampler) == first  # re-seeded per epoch: a resumed run draws the same order


def test_sampler_refuses_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="not supported with torchrun; use loss"):
        balance.create_sampler(samples=_samples({"a": 2}), labels=LABELS, generator=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.format": "csv", "data.manifest": "m.csv", "optim.class_balance": "sampler"},
            "single-label only",
        ),
        ({"model.tune_thresholds": "true"}, "multi-label models only"),
        ({"optim.epochs": "2", "optim.freeze_backbone_epochs": "3"}, "exceeds optim.epochs"),
        ({"optim.layer_decay": "0"}, "greater than 0"),
        ({"optim.layer_decay": "1.5"}, "less than or equal to 1"),
        ({"optim.class_balance": "oversample"}, "'none', 'loss' or 'sampler'"),
    ],
)
def test_real_data_settings_are_checked(overrides, message):
    with pytest.raises(ValidationError, match=message):
        load_config(overrides=overrides)


def test_tuner_finds_the_known_optimum_per_class():
    # Columns: a (global 0.5 misses a positive at 0.3), b (0.5 already separates), c (no
    # positive), d (only 0.9 separates; the candidates tie-break towards 0.5 is moot).
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.9],
            [0.3, 0.7, 0.2, 0.6],
            [0.2, 0.2, 0.3, 0.1],
            [0.1, 0.1, 0.4, 0.2],
        ]
    )
    targets = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    labels = LabelSet.from_names(["a", "b", "c", "d"])
    tuned = thresholds.tune_class_thresholds(scores, targets, labels, global_threshold=0.5)
    assert tuned == pytest.approx({"a": 0.3, "b": 0.5, "d": 0.9})
    assert "c" not in tuned  # no positive in validation: keeps the global threshold
    before = multi_label_metrics(scores, targets, labels, threshold=0.5)
    after = multi_label_metrics(scores, targets, labels, threshold=0.5, class_thresholds=tuned)
    assert after["micro_f1"] == 1.0 > before["micro_f1"]
    assert after["macro_f1"] >= before["macro_f1"]


def test_tuner_ties_go_to_the_threshold_closest_to_the_global_one():
    # Positives at 0.9 and 0.8, negatives at 0.2: every t in (0.2, 0.8] is perfect; both
    # observed candidates 0.8 and the global 0.5 score F1 1, and 0.5 is closest.
    scores = torch.tensor([0.9, 0.8, 0.2])
    positives = torch.tensor([True, True, False])
    assert thresholds.best_threshold(scores.numpy(), positives.numpy(), 0.5) == 0.5
    assert thresholds.best_threshold(scores.numpy(), positives.numpy(), 0.1) == pytest.approx(0.8)


def test_tuner_matches_brute_force_on_random_scores():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        scores = torch.rand(30, generator=generator).numpy()
        positives = (torch.rand(30, generator=generator) < 0.3).numpy()
        if not positives.any():
            continue

        def f1(t, scores=scores, positives=positives):
            predicted = scores >= t
            tp = (predicted & positives).sum()
            return 2 * tp / (predicted.sum() + positives.sum())

        chosen = thresholds.best_threshold(scores, positives, 0.5)
        best = max(f1(t) for t in [*scores, 0.5, *torch.linspace(0, 1, 101).tolist()])
        assert f1(chosen) == pytest.approx(best)


def test_stored_thresholds_replace_the_specs_and_are_validated(tmp_path):
    spec = ModelSpec(
        architecture="test_resnet",
        task=Task.MULTI_LABEL,
        labels=("a", "b", "c"),
        preprocessing=PreprocessConfig(input_size=(3, 32, 32)),
        threshold=0.4,
        class_thresholds={"c": 0.9},
    )
    save_artifact(tmp_path, create_classifier("test_resnet", 3), spec)
    thresholds.store_class_thresholds(tmp_path, {"a": 0.25, "b": 0.6})
    stored = read_spec(tmp_path)
    assert stored.class_thresholds == {"a": 0.25, "b": 0.6}
    assert stored.model_copy(update={"class_thresholds": {"c": 0.9}}) == spec  # nothing else
    with pytest.raises(ValidationError, match="unknown labels"):
        thresholds.store_class_thresholds(tmp_path, {"z": 0.5})
    assert read_spec(tmp_path) == stored
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("architecture", ["test_resnet", "efficientnet_b0", "vit_tiny_patch16_224"])
def test_layer_decay_groups_give_the_head_the_peak_lr(architecture):
    model = create_classifier(architecture, 3)
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5)
    optimizer = create_optimizer(model, cfg)
    groups = optimizer.param_groups
    assert groups[0]["lr"] == pytest.approx(1e-3)
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lrs) == sum(1 for _ in model.parameters())  # every parameter exactly once
    for module in finetune.head_modules(model):
        assert all(lrs[id(p)] == pytest.approx(1e-3) for p in module.parameters())
    distinct = sorted({g["lr"] for g in groups}, reverse=True)
    assert len(distinct) >= 3
    # Each layer group below has half the LR of the one above it.
    assert all(lo / hi == pytest.approx(0.5) for hi, lo in itertools.pairwise(distinct))
    # The schedule scales every group by the same factor, keeping the ratios.
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch=4)
    optimizer.step()  # no gradients yet: changes nothing, keeps the schedule's order check quiet
    scheduler.step()
    ratios = {round(g["lr"] / g["initial_lr"], 10) for g in optimizer.param_groups}
    assert len(ratios) == 1


def _norm_stats(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _backbone(model) -> dict[str, torch.Tensor]:
    head = set(finetune.head_parameter_names(model))
    return {k: v.detach().clone() for k, v in model.named_parameters() if k not in head}


def test_frozen_stage_trains_only_the_head_and_keeps_norm_statistics():
    torch.manual_seed(0)
    model = create_classifier("test_resnet", 3)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_epochs=0, epochs=2)
    optimizer = create_optimizer(model, cfg)
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch=2)
    precision = Precision.for_device(torch.device("cpu"), amp=False)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])) for _ in range(2)]

    def epoch(number: int, frozen: bool) -> None:
        finetune.set_backbone_frozen(model, frozen=frozen)
        train_one_epoch(
            model=model,
            loader=batches,
            loss_fn=torch.nn.CrossEntropyLoss(),
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=precision.grad_scaler(),
            precision=precision,
            epoch=number,
            freeze_backbone=frozen,
        )

    backbone, stats = _backbone(model), _norm_stats(model)
    head_before = {k: v.detach().clone() for k, v in model.fc.named_parameters()}
    epoch(1, frozen=True)
    assert finetune.head_parameter_names(model) == ["fc.weight", "fc.bias"]
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"fc.weight", "fc.bias"}
    assert all(torch.equal(v, _backbone(model)[k]) for k, v in backbone.items())
    assert all(torch.equal(v, _norm_stats(model)[k]) for k, v in stats.items())
    assert not all(torch.equal(v, model.fc.get_parameter(k)) for k, v in head_before.items())

    # As on resume: a fresh model and optimiser (built before any freezing) load the state
    # that stage 1 wrote, and carry on in stage 2.
    saved_model, saved_optimizer = model.state_dict(), optimizer.state_dict()
    model = create_classifier("test_resnet", 3)
    model.load_state_dict(saved_model)
    optimizer = create_optimizer(model, cfg)
    optimizer.load_state_dict(saved_optimizer)
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch=2)
    epoch(2, frozen=False)
    assert all(p.grad is not None for p in model.parameters())
    assert not all(torch.equal(v, _backbone(model)[k]) for k, v in backbone.items())
    assert not all(torch.equal(v, _norm_stats(model)[k]) for k, v in stats.items())


def test_two_stage_refuses_torchrun():
    with pytest.raises(ValueError, match="not supported with torchrun"):
        finetune.check_world_size(freeze_backbone_epochs=2, world_size=2)
    finetune.check_world_size(freeze_backbone_epochs=0, world_size=2)
    finetune.check_world_size(freeze_backbone_epochs=2, world_size=1)


def test_stage_follows_the_epoch_number():
    stages = [finetune.is_frozen_epoch(epoch=e, freeze_backbone_epochs=2) for e in (1, 2, 3, 4)]
    assert stages == [True, True, False, False]
    assert not finetune.is_frozen_epoch(epoch=1, freeze_backbone_epochs=0)
