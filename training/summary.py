"""What the run trains on, summarised before training: images per class and split, image sizes,
and identical files shared by two splits (a leak that makes validation and test figures
optimistic).

The summary is logged to MLflow as ``data/summary.json`` and ``data/summary.md`` and its headline
numbers as metrics, so a run's data can be compared with another's without opening the files.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .data import Sample

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
# Leaked groups listed in full in the JSON; beyond that only their count.
MAX_LISTED_DUPLICATES = 100


@dataclass(frozen=True)
class _FileFacts:
    digest: str
    width: int | None  # None: the header could not be read (decoding errors are data.py's job)
    height: int | None


@dataclass(frozen=True)
class SizeStats:
    min_side: int
    median_width: float
    median_height: float
    max_side: int
    unreadable: int


@dataclass(frozen=True)
class DuplicateGroup:
    """One file content found in more than one split."""

    sha256: str
    splits: tuple[str, ...]
    origins: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSummary:
    split_sizes: dict[str, int]
    per_class: dict[str, dict[str, int]]  # label -> split -> images carrying that label
    sizes: dict[str, SizeStats | None]  # split -> stats (None for an empty split)
    duplicates_across_splits: int  # files whose content appears in another split
    duplicate_groups: list[DuplicateGroup] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Headline numbers, as the run's ``data_*`` metrics."""
        numbers = {f"data_{split}_images": float(n) for split, n in self.split_sizes.items()}
        numbers["data_duplicates_across_splits"] = float(self.duplicates_across_splits)
        return numbers

    def table(self) -> str:
        """Images per class and split, as a Markdown table."""
        splits = list(self.split_sizes)
        lines = [
            "| label | " + " | ".join(splits) + " |",
            "|---|" + "---:|" * len(splits),
        ]
        for label, counts in self.per_class.items():
            lines.append(f"| {label} | " + " | ".join(str(counts[s]) for s in splits) + " |")
        lines.append("| **all images** | " + " | ".join(str(self.split_sizes[s]) for s in splits))
        lines[-1] += " |"
        return "\n".join(lines)


def _file_facts(path: Path) -> _FileFacts:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        width = height = None
    return _FileFacts(digest.hexdigest(), width, height)


def _size_stats(facts: Sequence[_FileFacts]) -> SizeStats | None:
    readable = [f for f in facts if f.width is not None and f.height is not None]
    if not readable:
        return None if not facts else SizeStats(0, 0.0, 0.0, 0, unreadable=len(facts))
    sides = [min(f.width, f.height) for f in readable] + [max(f.width, f.height) for f in readable]
    return SizeStats(
        min_side=min(sides),
        median_width=float(statistics.median(f.width for f in readable)),
        median_height=float(statistics.median(f.height for f in readable)),
        max_side=max(sides),
        unreadable=len(facts) - len(readable),
    )


def _duplicate_groups(
    facts_by_split: Mapping[str, Sequence[tuple[Sample, _FileFacts]]],
) -> tuple[int, list[DuplicateGroup]]:
    by_digest: dict[str, list[tuple[str, Sample]]] = {}
    for split, pairs in facts_by_split.items():
        for sample, facts in pairs:
            by_digest.setdefault(facts.digest, []).append((split, sample))
    groups = []
    leaked_files = 0
    for digest, members in by_digest.items():
        splits = sorted({split for split, _ in members})
        if len(splits) > 1:
            leaked_files += len(members)
            origins = tuple(f"{split}: {sample.origin}" for split, sample in members)
            groups.append(DuplicateGroup(digest, tuple(splits), origins))
    return leaked_files, groups


def summarize_dataset(
    *, splits: Mapping[str, Sequence[Sample]], labels: Sequence[str], max_workers: int = 4
) -> DatasetSummary:
    """Count, measure and hash every sample of every split (each file is read once)."""
    pairs = [(name, sample) for name, samples in splits.items() for sample in samples]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:  # hashing releases the GIL
        facts = list(
            tqdm(
                pool.map(lambda pair: _file_facts(pair[1].path), pairs),
                total=len(pairs),
                desc="summarising data",
                unit="img",
                leave=False,
                disable=None,
            )
        )
    facts_by_split: dict[str, list[tuple[Sample, _FileFacts]]] = {name: [] for name in splits}
    for (name, sample), file_facts in zip(pairs, facts, strict=True):
        facts_by_split[name].append((sample, file_facts))
    per_class = {label: dict.fromkeys(splits, 0) for label in labels}
    for name, samples in splits.items():
        for label, count in Counter(x for s in samples for x in s.labels).items():
            per_class.setdefault(label, dict.fromkeys(splits, 0))[name] = count
    leaked, groups = _duplicate_groups(facts_by_split)
    return DatasetSummary(
        split_sizes={name: len(samples) for name, samples in splits.items()},
        per_class=per_class,
        sizes={name: _size_stats([f for _, f in pairs]) for name, pairs in facts_by_split.items()},
        duplicates_across_splits=leaked,
        duplicate_groups=groups[:MAX_LISTED_DUPLICATES],
    )


def report_summary(summary: DatasetSummary) -> None:
    """The summary in the log; a leak across splits is a warning."""
    logger.info("Dataset:\n%s", summary.table())
    for split, stats in summary.sizes.items():
        if stats is not None:
            logger.info(
                "%s images: sides %d..%d px, median %.0fx%.0f",
                split,
                stats.min_side,
                stats.max_side,
                stats.median_width,
                stats.median_height,
            )
    if summary.duplicates_across_splits:
        shown = "\n  ".join(", ".join(group.origins) for group in summary.duplicate_groups[:5])
        logger.warning(
            "%d file(s) have identical content in more than one split (%d group(s)); "
            "validation/test figures will be optimistic. First groups:\n  %s",
            summary.duplicates_across_splits,
            len(summary.duplicate_groups),
            shown,
        )
