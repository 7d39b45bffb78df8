"""Train / validation / test: a random split (stratified, or k-fold) of one dataset, or the
splits the data itself gives (``data.val_root`` / ``data.test_root`` folders, or a manifest's
``split`` column), checked against the training split's labels."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.labels import LabelSet

from .config import DataConfig
from .data import SPLITS, DataError, DataIssue, LoadedData, Sample, load_dataset

logger = logging.getLogger(__name__)


def split_samples(
    samples: Sequence[Sample], config: DataConfig, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Train/validation split: stratified by first label, or fold ``fold`` of ``num_folds``."""
    rng = random.Random(seed)
    if config.num_folds:
        order = list(range(len(samples)))
        rng.shuffle(order)
        val_idx = {i for pos, i in enumerate(order) if pos % config.num_folds == config.fold}
        train = [s for i, s in enumerate(samples) if i not in val_idx]
        val = [s for i, s in enumerate(samples) if i in val_idx]
    else:
        by_label: dict[str, list[Sample]] = {}
        for sample in samples:
            by_label.setdefault(sample.labels[0], []).append(sample)
        train, val = [], []
        for group in by_label.values():
            group = group[:]
            rng.shuffle(group)
            # At least one validation and one training sample per class when it has two.
            n_val = min(max(1, round(len(group) * config.val_fraction)), len(group) - 1)
            val += group[:n_val]
            train += group[n_val:]
    if not train or not val:
        raise DataError(
            f"split left {len(train)} training and {len(val)} validation samples; "
            "add data or change data.val_fraction / data.num_folds"
        )
    return train, val


@dataclass(frozen=True)
class ExplicitSplit:
    """Train, validation and test samples as the data says (folders or a split column)."""

    labels: LabelSet  # from the training split (or data.labels when fixed)
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]  # empty when the data has no test split
    issues: list[DataIssue]  # val/test samples skipped (data.on_error=skip)


def has_explicit_splits(config: DataConfig, samples: Sequence[Sample]) -> bool:
    """Folders given by ``val_root``/``test_root``, or a manifest with a split column (which
    every row then has: :func:`read_manifest` refuses a row without one)."""
    return bool(config.val_root or config.test_root or any(s.split for s in samples))


def _apply_on_error(issues: list[DataIssue], on_error: str, what: str) -> None:
    if not issues:
        return
    shown = "\n  ".join(str(i) for i in issues[:20])
    extra = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
    if on_error == "fail":
        raise DataError(
            f"{len(issues)} bad {what} sample(s) (set data.on_error=skip to skip them):"
            f"\n  {shown}{extra}"
        )
    logger.warning("Skipping %d bad %s sample(s):\n  %s%s", len(issues), what, shown, extra)


def _known_labels_only(
    samples: Sequence[Sample], labels: LabelSet, *, on_error: str, what: str
) -> tuple[list[Sample], list[DataIssue]]:
    """A val/test sample with a label the training split lacks is a data issue."""
    known = set(labels.names)
    good, issues = [], []
    for sample in samples:
        unknown = sorted(set(sample.labels) - known)
        if unknown:
            issues.append(DataIssue(sample.origin, f"label(s) {unknown} not in the training split"))
        else:
            good.append(sample)
    _apply_on_error(issues, on_error, what)
    return good, issues


def _load_folder_split(config: DataConfig, root: Path, labels: LabelSet, what: str) -> LoadedData:
    """``root/<label>/`` checked like data.root, against the training split's labels."""
    try:
        return load_dataset(config.model_copy(update={"root": root, "labels": list(labels.names)}))
    except DataError as exc:
        raise DataError(f"{what} split ({root}): {exc}") from None


def _folder_splits(
    train_data: LoadedData, config: DataConfig
) -> tuple[list[Sample], list[Sample] | None, list[Sample], list[DataIssue]]:
    labels, issues = train_data.labels, list(train_data.issues)
    val = test = None
    if config.val_root:
        loaded = _load_folder_split(config, config.val_root, labels, "validation")
        val, issues = loaded.samples, issues + loaded.issues
    if config.test_root:
        loaded = _load_folder_split(config, config.test_root, labels, "test")
        test, issues = loaded.samples, issues + loaded.issues
    return train_data.samples, val, test or [], issues


def _manifest_splits(
    data: LoadedData, config: DataConfig
) -> tuple[LabelSet, list[Sample], list[Sample] | None, list[Sample], list[DataIssue]]:
    by_split = {name: [s for s in data.samples if s.split == name] for name in SPLITS}
    if not by_split["train"]:
        raise DataError(f"{config.manifest} has a split column but no usable 'train' rows")
    fixed = LabelSet.from_names(config.labels) if config.labels else None
    labels = fixed or LabelSet.from_names(sorted({n for s in by_split["train"] for n in s.labels}))
    issues = list(data.issues)
    val, more = _known_labels_only(
        by_split["val"], labels, on_error=config.on_error, what="validation"
    )
    test, even_more = _known_labels_only(
        by_split["test"], labels, on_error=config.on_error, what="test"
    )
    issues += more + even_more
    if by_split["val"] and not val:
        raise DataError(f"no usable 'val' rows left in {config.manifest}")
    return labels, by_split["train"], val or None, test, issues


def explicit_split(data: LoadedData, config: DataConfig, seed: int) -> ExplicitSplit:
    """The splits the data gives; no random split, except that without a validation split
    (only a test split) validation is still split off the training data as usual.

    ``data`` is ``load_dataset(config)``: data.root's samples, or the whole manifest.
    """
    if config.format == "folder":
        labels = data.labels
        train, val, test, issues = _folder_splits(data, config)
    else:
        labels, train, val, test, issues = _manifest_splits(data, config)
        if val is not None and config.num_folds:
            raise DataError(
                f"{config.manifest} has 'val' rows: data.num_folds cannot be used with an "
                "explicit validation split"
            )
    if val is None:
        train, val = split_samples(train, config, seed)
    return ExplicitSplit(labels, train, val, test, issues)
