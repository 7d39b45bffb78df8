"""Data-parallel training for real: ``torchrun --nproc_per_node=2`` with gloo on the CPU, on the
synthetic shapes. One MLflow run and one registered version however many ranks train; the held-out
bar of the single-process run; a rank killed mid-epoch fails the job quickly and leaves the run
FAILED, and ``--resume auto`` under torchrun finishes that same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from models import Predictor, load_image
from training.synthetic import SHAPES

from .test_training import SINGLE_LABEL_MIN_ACCURACY

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
# A rank's death must end the whole job within this long (the bound).
FAILURE_BOUND_S = 60


def _settings(tmp_path: Path, data_root: Path, tracking_uri: str, **overrides) -> dict[str, str]:
    """A quick run: timm's tiny test_resnet at 32 px learns the shapes in about ten epochs."""
    base = {
        "data.root": str(data_root),
        "data.image_size": "32",
        "data.num_workers": "0",
        "model.architecture": "test_resnet",
        "optim.lr": "0.005",
        "optim.batch_size": "32",
        "mlflow.tracking_uri": tracking_uri,
        "mlflow.artifact_location": str(tmp_path / "artifacts"),
        "output_dir": str(tmp_path / "out"),
        "distributed.timeout_s": "60",
    }
    return {**base, **overrides}


def _torchrun(settings: dict[str, str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD_SIZE}", "-m", "training", "train"]
    return command + [arg for k, v in settings.items() for arg in (f"--{k}", v)] + list(extra)


def _env() -> dict[str, str]:
    # The ranks must import this checkout's packages, whatever is installed.
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def _run(command: list[str], log: Path, timeout: float) -> int:
    with open(log, "wb") as sink:
        return subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env=_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        ).returncode


def _only_run(experiment: str):
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_two_processes_train_one_run_that_passes_the_held_out_bar(
    tmp_path, demo_data, holdout_data, tracking_uri
):
    settings = _settings(
        tmp_path,
        demo_data["single_label"],
        tracking_uri,
        **{
            "optim.epochs": "20",
            "optim.patience": "20",
            "mlflow.experiment": "tests-ddp",
            "mlflow.registered_model": "tests-ddp",
        },
    )
    log = tmp_path / "torchrun.log"
    assert _run(_torchrun(settings), log, timeout=900) == 0, log.read_text()[-4000:]

    run = _only_run("tests-ddp")
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.params["resolved.world_size"] == str(WORLD_SIZE)
    assert run.data.params["resolved.global_batch_size"] == str(32 * WORLD_SIZE)
    versions = client.search_model_versions("name='tests-ddp'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    # Every validation sample counted exactly once: the gathered shards hold the whole split.
    val_samples = int(run.data.params["resolved.val_samples"])
    counts = client.get_metric_history(run.info.run_id, "val_samples")
    assert counts and {int(m.value) for m in counts} == {val_samples}
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == list(range(1, len(steps) + 1))
    # Rank 1 wrote nothing of its own: one run folder, rank 0's.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [run.info.run_id]

    predictor = Predictor.from_artifact(tmp_path / "out" / run.info.run_id / "best")
    samples = [
        (p, shape)
        for shape in SHAPES
        for p in sorted((holdout_data["single_label"] / shape).glob("*.jpg"))
    ]
    predictions = predictor.predict([load_image(p) for p, _ in samples], top_k=1)
    correct = sum(
        pred[0].label == truth for pred, (_, truth) in zip(predictions, samples, strict=True)
    )
    accuracy = correct / len(samples)
    assert accuracy >= SINGLE_LABEL_MIN_ACCURACY, f"held-out accuracy {accuracy:.3f}"


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields[1] is the parent pid
            children.append(int(stat.parent.name))
    return children


def _rank_pid(agent: int, rank: int) -> int | None:
    """The worker process of ``rank`` among the torchrun agent's children (from its RANK)."""
    for pid in _children(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_killed_rank_fails_the_job_and_resume_finishes_the_run(tmp_path, demo_data, tracking_uri):
    out = tmp_path / "out"
    settings = _settings(
        tmp_path,
        demo_data["single_label"],
        tracking_uri,
        # Small batches: an epoch is long enough to be killed in the middle of.
        **{
            "optim.epochs": "4",
            "optim.batch_size": "4",
            "optim.grad_accum_steps": "2",  # DDP's no_sync() on every other micro-batch
            "mlflow.experiment": "tests-ddp-kill",
            "mlflow.registered_model": "null",
        },
    )
    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        agent = subprocess.Popen(
            _torchrun(settings), cwd=PROJECT_ROOT, env=_env(), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*/last.pt")):  # epoch 1 is done; epoch 2 is running
            assert agent.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.1)
        time.sleep(0.3)
        victim = _rank_pid(agent.pid, rank=1)
        assert victim is not None, f"no rank 1 among {_children(agent.pid)}"
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        exit_code = agent.wait(timeout=FAILURE_BOUND_S + 30)
        elapsed = time.monotonic() - killed_at
    finally:
        if agent.poll() is None:
            agent.kill()
    assert exit_code != 0, log.read_text()[-4000:]
    assert elapsed < FAILURE_BOUND_S, f"the job took {elapsed:.0f} s to end"
    failed = _only_run("tests-ddp-kill")
    assert failed.info.status == "FAILED", log.read_text()[-4000:]
    checkpoint = out / failed.info.run_id / "last.pt"
    interrupted_at = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    assert 1 <= interrupted_at < 4

    resumed_log = tmp_path / "resumed.log"
    exit_code = _run(_torchrun(settings, "--resume", "auto"), resumed_log, timeout=600)
    assert exit_code == 0, resumed_log.read_text()[-4000:]
    run = _only_run("tests-ddp-kill")
    assert run.info.run_id == failed.info.run_id
    assert run.info.status == "FINISHED"
    client = MlflowClient()
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4]
    assert run.data.params["resolved.global_batch_size"] == str(4 * WORLD_SIZE * 2)

    # The resumed job ends with exactly the weights of an uninterrupted one: the sampler's and
    # the augmentation's per-epoch seeds, and the checkpoint, carry everything over.
    straight = {
        **settings,
        "output_dir": str(tmp_path / "straight"),
        "mlflow.experiment": "tests-ddp-straight",
    }
    straight_log = tmp_path / "straight.log"
    assert _run(_torchrun(straight), straight_log, timeout=600) == 0, straight_log.read_text()[
        -4000:
    ]
    [straight_dir] = (tmp_path / "straight").iterdir()
    resumed_final = torch.load(checkpoint, weights_only=True)["model"]
    straight_final = torch.load(straight_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed_final[k], straight_final[k]) for k in straight_final)
