"""Crash recovery of the best-model artifact (training/checkpoint.py) and run directories
(training/rundir.py)."""

import os
import time

import pytest

from training.checkpoint import TrainingState, recover_best_artifact
from training.loop import EarlyStopping
from training.rundir import (
    RunDirBusyError,
    claim_run_dir,
    fail_orphaned_runs,
    find_auto_resume,
    run_dir_in_use,
)


def _artifact(path, content: bytes):
    path.mkdir()
    (path / "model.safetensors").write_bytes(content)


def test_a_crash_between_the_renames_restores_the_previous_best(tmp_path):
    _artifact(tmp_path / "best.old", b"previous best")
    _artifact(tmp_path / "best.tmp", b"torn")
    recover_best_artifact(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"previous best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_completed_replacement_keeps_the_new_best(tmp_path):
    _artifact(tmp_path / "best", b"new best")
    _artifact(tmp_path / "best.old", b"previous best")  # crash before the old one was removed
    recover_best_artifact(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"new best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_nothing_to_recover(tmp_path):
    recover_best_artifact(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_early_stopping_counts_epochs_without_improvement_in_the_checkpointed_state():
    stopping = EarlyStopping(patience=2, min_delta=0.05)
    state = TrainingState()
    assert stopping.update(state, epoch=1, score=0.5)
    assert not stopping.update(state, epoch=2, score=0.54)  # not by more than min_delta
    assert not stopping.should_stop(state)
    assert stopping.update(state, epoch=3, score=0.6)
    assert (state.best_epoch, state.best_score, state.bad_epochs) == (3, 0.6, 0)
    assert not stopping.update(state, epoch=4, score=0.1)
    assert not stopping.update(state, epoch=5, score=0.1)
    assert stopping.should_stop(state)


# Run directories: each training run keeps its files in output_dir/<MLflow run id>/, holds a lock
# on it while it lives, and a run left RUNNING by a dead process is marked FAILED at the next start.


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


@pytest.fixture
def experiment(client, request) -> str:
    return client.create_experiment(request.node.name)


def _run(client, experiment: str, status: str) -> str:
    run_id = client.create_run(experiment).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def _finished_process_dir(output_dir, run_id: str, age_s: float = 0.0):
    """A run directory as a training process leaves it when it exits (or dies): lock released."""
    with claim_run_dir(output_dir, run_id) as run_dir:
        (run_dir / "last.pt").write_bytes(b"checkpoint")
    stamp = time.time() - age_s
    os.utime(run_dir / "last.pt", (stamp, stamp))
    return run_dir


def test_each_run_gets_its_own_directory_and_a_busy_one_is_refused(tmp_path):
    with claim_run_dir(tmp_path, "aaa") as first, claim_run_dir(tmp_path, "bbb") as second:
        assert first == tmp_path / "aaa" and second == tmp_path / "bbb"
        assert run_dir_in_use(first)
        with (
            pytest.raises(RunDirBusyError, match="in use by process"),
            claim_run_dir(tmp_path, "aaa"),
        ):
            pass
    assert not run_dir_in_use(first)


def test_a_run_left_running_by_a_dead_process_is_marked_failed(tmp_path, client, experiment):
    orphan = _run(client, experiment, "RUNNING")
    _finished_process_dir(tmp_path, orphan)
    assert fail_orphaned_runs(tmp_path, client) == [orphan]
    assert client.get_run(orphan).info.status == "FAILED"


def test_live_finished_and_kept_runs_are_left_alone(tmp_path, client, experiment):
    live, finished, kept = (_run(client, experiment, s) for s in ("RUNNING", "FINISHED", "RUNNING"))
    _finished_process_dir(tmp_path, finished)
    _finished_process_dir(tmp_path, kept)
    with claim_run_dir(tmp_path, live):
        assert fail_orphaned_runs(tmp_path, client, keep=kept) == []
    statuses = [client.get_run(r).info.status for r in (live, finished, kept)]
    assert statuses == ["RUNNING", "FINISHED", "RUNNING"]


def test_auto_resume_takes_the_newest_unfinished_run_not_held_by_a_process(
    tmp_path, client, experiment
):
    older = _run(client, experiment, "FAILED")
    newer = _run(client, experiment, "KILLED")
    finished = _run(client, experiment, "FINISHED")
    live = _run(client, experiment, "RUNNING")
    _finished_process_dir(tmp_path, older, age_s=300)
    _finished_process_dir(tmp_path, newer, age_s=200)
    _finished_process_dir(tmp_path, finished, age_s=100)
    with claim_run_dir(tmp_path, live) as live_dir:
        (live_dir / "last.pt").write_bytes(b"checkpoint")
        assert find_auto_resume(tmp_path, client) == tmp_path / newer / "last.pt"


def test_auto_resume_with_nothing_to_resume(tmp_path, client, experiment):
    assert find_auto_resume(tmp_path / "absent", client) is None
    _finished_process_dir(tmp_path, _run(client, experiment, "FINISHED"))
    assert find_auto_resume(tmp_path, client) is None


def test_auto_resume_adopts_an_unfinished_run_of_the_earlier_layout(tmp_path, client, experiment):
    import torch

    from training.rundir import find_legacy_resume

    legacy = tmp_path / "last.pt"
    for status, expected in (("KILLED", legacy), ("FINISHED", None)):
        run_id = _run(client, experiment, status)
        torch.save({"state": {"mlflow_run_id": run_id}}, legacy)
        assert find_legacy_resume(tmp_path, client) == expected, status
    legacy.unlink()
    assert find_legacy_resume(tmp_path, client) is None
