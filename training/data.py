"""Datasets: an image folder (single-label) or a CSV manifest (multi-label), validated up front.

Every bad sample (missing file, unreadable image, unknown or empty label) becomes a
:class:`DataIssue` naming the file and manifest row; the run either fails listing them or skips
them and reports the count. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from models.image_io import ImageDecodeError, load_image
from models.labels import LabelSet, Task

from .config import DataConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # the values of a manifest's split column
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    """The dataset cannot be used as configured; the message lists the problems."""


@dataclass(frozen=True)
class Sample:
    path: Path
    labels: tuple[str, ...]
    origin: str  # where it came from, for error messages: a path or "manifest.csv:row 12"
    split: str = ""  # a manifest's split column (train|val|test); "" when it has none


@dataclass(frozen=True)
class DataIssue:
    origin: str
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


@dataclass
class LoadedData:
    samples: list[Sample]
    labels: LabelSet
    issues: list[DataIssue]


def scan_image_folder(root: Path) -> tuple[list[Sample], list[DataIssue]]:
    """``root/<label>/<image>`` -> samples; non-image files are reported, not ignored."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    samples, issues = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, (class_dir.name,), str(path)))
            else:
                issues.append(DataIssue(str(path), f"not an image file (suffix {path.suffix!r})"))
    if not samples:
        raise DataError(f"no images found under {root}/<label>/")
    return samples, issues


def _outside_root(path: Path, root: Path) -> bool:
    """Lexically (``..`` collapsed, symlinks not followed): whether ``path`` leaves ``root``."""
    base = Path(os.path.normpath(root.absolute()))
    return not Path(os.path.normpath(path.absolute())).is_relative_to(base)


def _refuse_outside_root(outside: list[DataIssue], root: Path) -> None:
    if outside:
        shown = "\n  ".join(str(i) for i in outside[:20])
        extra = f"\n  ... and {len(outside) - 20} more" if len(outside) > 20 else ""
        raise DataError(
            f"{len(outside)} manifest path(s) outside data.root {root} (absolute, or leading "
            "out with '..'); fix the manifest, or set data.allow_outside_root=true if these "
            f"files are meant to be read:\n  {shown}{extra}"
        )


def _refuse_bad_splits(bad: list[DataIssue], manifest: Path) -> None:
    # Not a per-sample problem that on_error could skip: a row without a valid split would
    # silently move data between training and evaluation.
    if bad:
        shown = "\n  ".join(str(i) for i in bad[:20])
        extra = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{manifest} has a split column, so every row needs one of {'|'.join(SPLITS)}; "
            f"{len(bad)} row(s) do not:\n  {shown}{extra}"
        )


def read_manifest(
    manifest: Path, root: Path, separator: str, *, allow_outside_root: bool = False
) -> tuple[list[Sample], list[DataIssue]]:
    """``path,labels`` rows; relative paths are resolved against ``root``.

    A path that leads outside ``root`` is refused (a ``DataError`` naming every such row,
    whatever ``on_error`` says) unless ``allow_outside_root``: a manifest must not make the
    run read, and log to MLflow, files such as ``../../etc/passwd``.
    """
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist")
    samples, issues, outside, bad_splits = [], [], [], []
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        missing_columns = {"path", "labels"} - set(reader.fieldnames or [])
        if missing_columns:
            raise DataError(
                f"{manifest} lacks column(s) {sorted(missing_columns)}; found {reader.fieldnames}"
            )
        has_split = "split" in (reader.fieldnames or [])
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            origin = f"{manifest}:row {row_number}"
            split = (row.get("split") or "").strip().lower() if has_split else ""
            if has_split and split not in SPLITS:
                bad_splits.append(DataIssue(origin, f"split {row.get('split')!r}"))
            raw_path = (row.get("path") or "").strip()
            labels = tuple(
                sorted({x.strip() for x in (row.get("labels") or "").split(separator) if x.strip()})
            )
            if not raw_path:
                issues.append(DataIssue(origin, "empty path"))
                continue
            if not labels:
                issues.append(DataIssue(origin, f"no labels for {raw_path}"))
                continue
            path = Path(raw_path) if Path(raw_path).is_absolute() else root / raw_path
            if not allow_outside_root and _outside_root(path, root):
                outside.append(DataIssue(origin, raw_path))
                continue
            samples.append(Sample(path, labels, f"{origin} ({path})", split))
    _refuse_outside_root(outside, root)
    _refuse_bad_splits(bad_splits, manifest)
    if not samples and not issues:
        raise DataError(f"{manifest} has no rows")
    return samples, issues


def _check_sample(sample: Sample, verify: bool) -> DataIssue | None:
    if not sample.path.is_file():
        return DataIssue(sample.origin, "file not found")
    if verify:
        try:
            load_image(sample.path)
        except ImageDecodeError as exc:
            return DataIssue(sample.origin, str(exc))
    return None


def validate_samples(
    samples: Sequence[Sample], labels: LabelSet | None, verify: bool
) -> tuple[list[Sample], list[DataIssue]]:
    """Drop samples with missing/unreadable files or labels outside ``labels``; list why."""
    known = set(labels.names) if labels else None
    good, issues = [], []
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decoding releases the GIL
        checks = pool.map(lambda s: _check_sample(s, verify), samples)
        for sample, issue in tqdm(
            zip(samples, checks, strict=False),
            total=len(samples),
            desc="checking images",
            unit="img",
            leave=False,
            disable=None,
        ):
            if issue is None and known is not None:
                unknown = sorted(set(sample.labels) - known)
                if unknown:
                    issue = DataIssue(sample.origin, f"unknown label(s) {unknown}")
            if issue is None:
                good.append(sample)
            else:
                issues.append(issue)
    return good, issues


def load_dataset(config: DataConfig) -> LoadedData:
    """Scan, validate and apply the ``on_error`` policy."""
    if config.format == "folder":
        samples, issues = scan_image_folder(config.root)
    else:
        samples, issues = read_manifest(
            config.manifest,
            config.root,
            config.label_separator,
            allow_outside_root=config.allow_outside_root,
        )
    fixed = LabelSet.from_names(config.labels) if config.labels else None
    samples, more = validate_samples(samples, fixed, config.verify_images)
    issues += more
    if issues:
        shown = "\n  ".join(str(i) for i in issues[:20])
        extra = f"\n  ... and {len(issues) - 20} more" if len(issues) > 20 else ""
        if config.on_error == "fail":
            raise DataError(
                f"{len(issues)} bad sample(s) (set data.on_error=skip to skip them):"
                f"\n  {shown}{extra}"
            )
        logger.warning("Skipping %d bad sample(s):\n  %s%s", len(issues), shown, extra)
    if not samples:
        raise DataError("no usable samples left after validation")
    labels = fixed or LabelSet.from_names(sorted({n for s in samples for n in s.labels}))
    return LoadedData(samples, labels, issues)


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


class ImageDataset(Dataset):
    """Decodes with the shared :func:`load_image`, then applies ``transform``."""

    def __init__(
        self, samples: Sequence[Sample], labels: LabelSet, task: Task, transform: Callable
    ) -> None:
        self.samples = list(samples)
        self.labels = labels
        self.task = task
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, sample: Sample) -> torch.Tensor | int:
        if self.task is Task.SINGLE_LABEL:
            return self.labels.index(sample.labels[0])
        return self.labels.encode_multi_hot(sample.labels)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        return self.transform(load_image(sample.path)), self.target(sample)
