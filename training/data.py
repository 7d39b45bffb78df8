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

import numpy as np
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


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: Python's and NumPy's generators seeded from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


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
