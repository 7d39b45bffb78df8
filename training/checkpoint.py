"""Crash-safe checkpoints: the resumable training state and the best model artifact."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.artifact import ModelSpec, save_artifact

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_ARTIFACT = "best"


@dataclass
class TrainingState:
    """Everything beyond the weights that a resumed run needs to carry on exactly."""

    epoch: int = 0  # last completed epoch (0: none yet)
    best_score: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    labels: list[str] = field(default_factory=list)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data to disk (a rename alone can land before the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(directory)


def save_checkpoint(
    path: Path, *, state: TrainingState, model, optimizer, scheduler, scaler
) -> None:
    """Write to a temporary file, flush it to disk and rename, so that neither a crash nor a
    power cut leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "state": state.__dict__,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        },
        tmp,
    )
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler) -> TrainingState:
    # weights_only: a checkpoint is data, never code.
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if payload["scaler"]:  # a disabled scaler saves {}, which an enabled one refuses
        scaler.load_state_dict(payload["scaler"])
    return TrainingState(**payload["state"])


def checkpoint_file(resume: str) -> Path:
    """``--resume PATH``: that checkpoint file, which must exist (``auto``: see rundir)."""
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return path


def recover_best_artifact(output_dir: Path) -> None:
    """Undo a crash inside :func:`save_best_artifact`: drop a half-written ``best.tmp``, and
    if the crash fell between its two renames (no ``best``, only ``best.old``), restore it."""
    final = output_dir / BEST_ARTIFACT
    staging = output_dir / f"{BEST_ARTIFACT}.tmp"
    previous = output_dir / f"{BEST_ARTIFACT}.old"
    shutil.rmtree(staging, ignore_errors=True)
    if not final.exists() and previous.exists():
        os.replace(previous, final)
        logger.warning("Restored %s from %s (a crash interrupted its replacement)", final, previous)
    shutil.rmtree(previous, ignore_errors=True)


def save_best_artifact(output_dir: Path, model, spec: ModelSpec) -> Path:
    """Replace ``output_dir/best`` atomically enough that a crash leaves the old or the new one."""
    final = output_dir / BEST_ARTIFACT
    staging = output_dir / f"{BEST_ARTIFACT}.tmp"
    previous = output_dir / f"{BEST_ARTIFACT}.old"
    shutil.rmtree(staging, ignore_errors=True)
    save_artifact(staging, model, spec)
    _fsync_tree(staging)
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(staging, final)
    _fsync(output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return final
