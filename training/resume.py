"""Starting or resuming a run: the checkpoint to continue from, the state it restores, and the
MLflow run with its own locked folder."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow

from . import checkpoint, rundir, tracking
from .build import TrainingSetup
from .config import TrainConfig
from .data import DataError

logger = logging.getLogger(__name__)


def prepare_output_dir(*, cfg: TrainConfig) -> Path | None:
    """Mark FAILED the runs in ``output_dir`` that were killed without notice, and pick the
    checkpoint to resume from (``--resume``), if any."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    resume_from = None
    if cfg.resume == "auto":
        resume_from = rundir.find_auto_resume(cfg.output_dir, client) or rundir.find_legacy_resume(
            cfg.output_dir, client
        )
    elif cfg.resume is not None:
        resume_from = checkpoint.checkpoint_file(cfg.resume)
    keep = rundir.run_id_of(resume_from) if resume_from else None
    rundir.fail_orphaned_runs(cfg.output_dir, client, keep=keep)
    return resume_from


def restore_state(*, resume_from: Path | None, setup: TrainingSetup) -> checkpoint.TrainingState:
    """A fresh state, or the one in ``resume_from`` with its weights, optimiser, schedule and
    loss scale loaded into ``setup``. A checkpoint trained on other labels is refused."""
    labels = list(setup.labels.names)
    if not resume_from:
        return checkpoint.TrainingState(labels=labels)
    state = checkpoint.load_checkpoint(
        resume_from,
        model=setup.model,
        optimizer=setup.optimizer,
        scheduler=setup.scheduler,
        scaler=setup.scaler,
    )
    if state.labels != labels:
        raise DataError(
            f"{resume_from} was trained on labels {state.labels}, the data now has {labels}"
        )
    logger.info("Resuming from %s after epoch %d", resume_from, state.epoch)
    return state


@contextlib.contextmanager
def open_run_and_dir(
    *, cfg: TrainConfig, run_id: str | None
) -> Iterator[tuple[mlflow.ActiveRun, Path]]:
    """The MLflow run (new, or ``run_id`` resumed) and its own folder, locked while it trains."""
    with contextlib.ExitStack() as stack:
        if run_id:
            # Claimed first: a run another live process still trains is refused before MLflow
            # is told anything (its failure handling would otherwise mark that run FAILED).
            run_dir = stack.enter_context(rundir.claim_run_dir(cfg.output_dir, run_id))
            run = stack.enter_context(tracking.mlflow_run(cfg, run_id=run_id))
        else:
            run = stack.enter_context(tracking.mlflow_run(cfg))
            run_dir = stack.enter_context(rundir.claim_run_dir(cfg.output_dir, run.info.run_id))
        logger.info("MLflow run %s: checkpoints and best model in %s", run.info.run_id, run_dir)
        yield run, run_dir


def prepare_resumed_dir(*, resume_from: Path, run_dir: Path) -> None:
    """Undo a crash inside the best-model replacement; resuming from a checkpoint kept
    elsewhere (``--resume PATH``) brings the ``best/`` beside it along."""
    checkpoint.recover_best_artifact(run_dir)
    checkpoint.recover_best_artifact(resume_from.parent)  # the best/ about to be brought along
    source = resume_from.parent / checkpoint.BEST_ARTIFACT
    target = run_dir / checkpoint.BEST_ARTIFACT
    if source.resolve() != target.resolve() and source.is_dir() and not target.exists():
        shutil.copytree(source, target)
        logger.info("Copied %s to %s", source, target)
