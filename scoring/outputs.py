"""Results files: one row per image (CSV or JSONL, by extension), appended batch by batch and
resumable.

Opening an existing file reads back the rows already written, so a re-run skips those paths.
Every row ends with a newline and each batch is flushed, so a crash leaves at most one partial
last row: it is cut off (with any unreadable last row) before new rows are appended. Anything
else unreadable, or rows from another model, stops the run rather than mixing results.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("path", "labels", "scores", "error", "model", "model_version", "run_id")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class OutputError(ValueError):
    """The results file cannot be written or resumed; the message says why."""


class ResultRow(BaseModel):
    """One image's result. ``error`` is None when it was scored (then ``labels``/``scores``
    hold its predictions, best first) and the reason otherwise (then they are empty)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    labels: list[str] = []
    scores: list[float] = []
    error: str | None = None
    model: str = ""
    model_version: str = ""
    run_id: str = ""

    @field_validator("labels", "scores", mode="before")
    @classmethod
    def _json_cells(cls, value: Any) -> Any:
        # A CSV cell holds the list as JSON text.
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("error", mode="before")
    @classmethod
    def _empty_cell(cls, value: Any) -> Any:
        return value or None

    def csv_cells(self) -> list[str]:
        return [
            self.path,
            json.dumps(self.labels),
            json.dumps(self.scores),
            self.error or "",
            self.model,
            self.model_version,
            self.run_id,
        ]


def output_format(path: str | Path) -> str:
    """``csv`` or ``jsonl``, from the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: the output must end in one of {sorted(FORMATS)}")
    return FORMATS[suffix]


class ResultsFile:
    """An output file open for appending; ``done`` holds the paths already in it."""

    def __init__(self, handle: IO[str], *, kind: str, done: frozenset[str]) -> None:
        self._handle = handle
        self.kind = kind
        self.done = done
        self._csv = csv.writer(handle, lineterminator="\n") if kind == "csv" else None

    def write(self, rows: Sequence[ResultRow]) -> None:
        """Append ``rows`` and flush them to the OS, so a crash loses at most this batch."""
        for row in rows:
            if self._csv is not None:
                self._csv.writerow(row.csv_cells())
            else:
                self._handle.write(row.model_dump_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_results(path: str | Path, *, model: str) -> ResultsFile:
    """Open ``path`` to append results of ``model`` (its pinned URI or tag), resuming it if it
    exists: the returned file's ``done`` lists the paths already scored."""
    path, kind = Path(path), output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[ResultRow] = []
    if path.exists():
        rows, keep = read_results(path.read_bytes(), kind=kind, name=str(path))
        _truncate(path, size=keep)
    _check_same_model(rows, model=model, path=path)
    handle = path.open("a", newline="", encoding="utf-8")
    if kind == "csv" and handle.tell() == 0:
        csv.writer(handle, lineterminator="\n").writerow(OUTPUT_COLUMNS)
    if rows:
        logger.info("%s already holds %d rows: resuming", path, len(rows))
    return ResultsFile(handle, kind=kind, done=frozenset(row.path for row in rows))


def read_results(data: bytes, *, kind: str, name: str = "results") -> tuple[list[ResultRow], int]:
    """The rows in a results file's bytes and how many bytes of it to keep: everything up to the
    end of its last readable row (a partial or unreadable last row is dropped)."""
    complete = data[: data.rfind(b"\n") + 1]  # every row we write ends with a newline
    records = list(_csv_records(complete) if kind == "csv" else _jsonl_records(complete))
    keep = 0
    if kind == "csv" and records:
        header, keep = records.pop(0)
        if tuple(header) != OUTPUT_COLUMNS:
            raise OutputError(f"{name}: its header is {header}, not {list(OUTPUT_COLUMNS)}")
    rows: list[ResultRow] = []
    for index, (record, end) in enumerate(records):
        row = _parse(record)
        if row is None:
            if index == len(records) - 1:
                logger.warning("%s: its last row is unreadable (cut short by a crash?): "
                               "dropping it", name)  # fmt: skip
                break
            raise OutputError(f"{name}: row {index + 1} is not a result row; not resuming it")
        rows.append(row)
        keep = end
    return rows, keep


def _parse(record: Any) -> ResultRow | None:
    try:
        if isinstance(record, list):
            if len(record) != len(OUTPUT_COLUMNS):
                return None
            return ResultRow.model_validate(dict(zip(OUTPUT_COLUMNS, record, strict=True)))
        return ResultRow.model_validate_json(record)
    except (ValidationError, ValueError):
        return None


def _jsonl_records(data: bytes) -> Iterator[tuple[bytes, int]]:
    end = 0
    for line in data.splitlines(keepends=True):
        end += len(line)
        if line.strip():
            yield line, end


def _csv_records(data: bytes) -> Iterator[tuple[list[str], int]]:
    """CSV records with the byte offset where each ends (a quoted field may span lines)."""
    consumed = [0]

    def lines() -> Iterator[str]:
        for line in data.splitlines(keepends=True):
            consumed[0] += len(line)
            yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    try:
        for record in reader:
            yield record, consumed[0]
    except csv.Error:  # an unterminated quote: the rest is one broken last record
        yield ["unreadable"], consumed[0]


def _truncate(path: Path, *, size: int) -> None:
    if path.stat().st_size != size:
        logger.warning("%s: cutting off a partial last row (%d bytes)",
                       path, path.stat().st_size - size)  # fmt: skip
        os.truncate(path, size)


def _check_same_model(rows: list[ResultRow], *, model: str, path: Path) -> None:
    others = sorted({row.model for row in rows} - {model})
    if others:
        raise OutputError(
            f"{path} holds results of {others}, not of {model}: write to another file (or "
            "delete it) rather than mixing models"
        )


def dump_rows(rows: Sequence[ResultRow], *, kind: str) -> str:
    """Rows as a file's text (tests and tools): a CSV with its header, or JSONL."""
    buffer = io.StringIO()
    if kind == "csv":
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(OUTPUT_COLUMNS)
        writer.writerows(row.csv_cells() for row in rows)
    else:
        buffer.writelines(row.model_dump_json() + "\n" for row in rows)
    return buffer.getvalue()
