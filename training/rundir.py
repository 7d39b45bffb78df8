"""One folder per training run: ``output_dir/<MLflow run id>/`` holds its ``last.pt`` and ``best/``.

Two runs with the same ``output_dir`` never write to each other's files, and each registers its
own best model. A running process holds an exclusive ``flock`` on its folder's lock file; the
kernel drops it when the process ends, however it ends (SIGKILL included). That tells a later
start which runs are alive: ``--resume auto`` takes the newest unfinished run that no process
holds, and a run that MLflow still shows RUNNING while no process holds it (its process was
killed before it could say so) is marked FAILED.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import LAST_CHECKPOINT

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
RUN_FILE = "run.json"


class RunDirBusyError(RuntimeError):
    """Another live process is training in this run folder."""


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("pid", "?")
    except (OSError, ValueError):
        return "?"


@contextlib.contextmanager
def claim_run_dir(output_dir: Path, run_id: str) -> Iterator[Path]:
    """Create (or reopen) ``output_dir/run_id`` and hold its lock until the block ends."""
    run_dir = output_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise RunDirBusyError(
                f"{run_dir} is in use by process {_holder(run_dir)}: MLflow run {run_id} is "
                "still training there"
            )
        # Written only once the lock is held: a folder with run.json but no lock is a dead run.
        record = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}
        (run_dir / RUN_FILE).write_text(json.dumps(record))
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def run_dir_in_use(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir`` (see :func:`claim_run_dir`)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def _run_dirs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p.parent for p in output_dir.glob(f"*/{RUN_FILE}"))


def _status(client, run_id: str) -> str | None:
    """The run's MLflow status, or None when this tracking server does not know the run."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        return None


def fail_orphaned_runs(output_dir: Path, client, keep: str | None = None) -> list[str]:
    """Mark FAILED every run under ``output_dir`` that MLflow shows RUNNING but no live process
    holds (SIGKILL, OOM killer, power cut). ``keep`` (a run about to be resumed) is skipped."""
    failed = []
    for run_dir in _run_dirs(output_dir):
        run_id = run_dir.name
        if run_id == keep or run_dir_in_use(run_dir):
            continue
        if _status(client, run_id) == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
            logger.warning(
                "MLflow run %s was left RUNNING by process %s, which no longer holds %s "
                "(killed without a chance to record it); marked FAILED",
                run_id,
                _holder(run_dir),
                run_dir,
            )
            failed.append(run_id)
    return failed


def find_auto_resume(output_dir: Path, client) -> Path | None:
    """``--resume auto``: the ``last.pt`` of the newest run under ``output_dir`` that did not
    finish and that no live process holds; None when there is none."""
    candidates = []
    for run_dir in _run_dirs(output_dir):
        checkpoint = run_dir / LAST_CHECKPOINT
        if not checkpoint.is_file() or run_dir_in_use(run_dir):
            continue
        status = _status(client, run_dir.name)
        if status in (None, "FINISHED"):
            logger.debug("Not resuming %s: MLflow run status %s", run_dir, status)
            continue
        candidates.append(checkpoint)
    if not candidates:
        logger.info("Nothing to resume in %s: starting a new run", output_dir)
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def find_legacy_resume(output_dir: Path, client) -> Path | None:
    """``--resume auto`` in an ``output_dir`` of the earlier layout (one run, ``last.pt`` directly
    inside): that checkpoint, if its run did not finish; None otherwise."""
    import torch

    legacy = output_dir / LAST_CHECKPOINT
    if not legacy.is_file():
        return None
    state = torch.load(legacy, map_location="cpu", weights_only=True).get("state", {})
    run_id = state.get("mlflow_run_id")
    status = _status(client, run_id) if run_id else None
    if status in (None, "FINISHED"):
        logger.info("Not resuming %s: MLflow run status %s", legacy, status)
        return None
    logger.info("Resuming %s (run %s), written with one run per output_dir", legacy, run_id)
    return legacy


def run_id_of(checkpoint: Path) -> str | None:
    """The run a checkpoint belongs to, from the ``run.json`` beside it (None if absent)."""
    try:
        return json.loads((checkpoint.parent / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None
