"""What to score: every image under a folder (recursively), or the paths listed in a CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# File extensions listed from a folder (compared lower-case): the formats models.image_io
# decodes. A CSV of paths is taken as it is: a listed file of another kind gets a per-row error.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"}
)
# Column of a CSV input holding the paths; without it, a one-column CSV's only column is used.
PATH_COLUMN = "path"


class InputError(ValueError):
    """The input folder or CSV cannot be read; the message says why."""


def list_inputs(source: str | Path, *, path_column: str = PATH_COLUMN) -> list[str]:
    """The image paths to score, in a stable order, each once.

    A folder gives its image files (by extension, any depth, sorted, as ``source/relative``); a
    ``.csv`` file gives its ``path_column`` as written, relative paths taken from the CSV's own
    folder. The strings returned are what the output's ``path`` column holds, and what a
    resumed run matches against.
    """
    source = Path(source)
    if source.is_dir():
        return _folder_images(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _unique(_csv_paths(source, path_column=path_column))
    if source.is_file():
        raise InputError(f"{source}: give a folder of images or a .csv file of paths")
    raise InputError(f"{source} does not exist")


def _folder_images(folder: Path) -> list[str]:
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return sorted(str(p) for p in found)


def _csv_paths(csv_file: Path, *, path_column: str) -> Iterator[str]:
    with csv_file.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            return
        column = _path_column_index(header, path_column=path_column, csv_file=csv_file)
        if column is None:  # a headerless one-column list: its first line is a path too
            rows = iter([header, *rows])
            column = 0
        for number, row in enumerate(rows, start=2):
            if len(row) <= column or not row[column].strip():
                logger.warning("%s line %d: no path; skipped", csv_file, number)
                continue
            yield _relative_to(csv_file.parent, row[column].strip())


def _path_column_index(header: list[str], *, path_column: str, csv_file: Path) -> int | None:
    """Index of the path column; None for a headerless one-column file."""
    names = [name.strip() for name in header]
    if path_column in names:
        return names.index(path_column)
    if len(names) == 1:
        return None
    raise InputError(f"{csv_file}: no {path_column!r} column among {names}")


def _relative_to(base: Path, path: str) -> str:
    return path if Path(path).is_absolute() else str(base / path)


def _unique(paths: Iterator[str]) -> list[str]:
    """Each path once, in first-seen order: the output is keyed by path."""
    seen: dict[str, None] = {}
    duplicates = 0
    for path in paths:
        duplicates += path in seen
        seen.setdefault(path, None)
    if duplicates:
        logger.warning("%d duplicate paths in the input are scored once", duplicates)
    return list(seen)
