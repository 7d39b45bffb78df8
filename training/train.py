"""Compose the pipeline: build -> resume -> epochs -> best artifact -> MLflow registry.

Each step lives in its own module: :mod:`.build` (data, model, optimiser, schedule, precision),
:mod:`.resume` (checkpoint, run and run folder), :mod:`.loop` (epochs, best model, early
stopping) and :mod:`.finish` (evaluation of the best model, registration).
"""

from __future__ import annotations

import mlflow

from registry.tracking_server import check_tracking_reachable

from . import balance, distributed, finetune, tracking
from .build import TrainingSetup, build_training, seed_everything
from .config import TrainConfig
from .distributed import SINGLE_PROCESS, DistributedContext
from .finish import TrainResult, finish
from .loop import train_loop
from .resume import open_run_and_dir, prepare_output_dir, prepare_resumed_dir, restore_state
from .summary import report_summary, summarize_dataset

__all__ = ["TrainResult", "train"]


def log_run_inputs(*, cfg: TrainConfig, setup: TrainingSetup) -> None:
    """What a new run trains with: the resolved config, labels and skipped samples."""
    split = setup.split
    tracking.log_config(
        cfg,
        {
            "resolved.task": setup.task.value,
            "resolved.num_classes": len(split.labels),
            "resolved.train_samples": len(split.train_samples),
            "resolved.val_samples": len(split.val_samples),
            "resolved.test_samples": len(split.test_samples),
            "resolved.skipped_samples": len(split.issues),
            "resolved.device": str(setup.precision.device),
            "resolved.world_size": setup.ctx.world_size,
            "resolved.global_batch_size": distributed.global_batch_size(
                batch_size=cfg.optim.batch_size,
                world_size=setup.ctx.world_size,
                grad_accum_steps=cfg.optim.grad_accum_steps,
            ),
            "resolved.input_size": str(setup.spec.preprocessing.input_size),
        },
    )
    tracking.log_labels(split.labels.names)
    tracking.log_data_issues(split.issues)
    mlflow.log_metric("data_skipped", len(split.issues))
    if cfg.data.summarize:
        summary = summarize_dataset(
            splits={
                "train": split.train_samples,
                "val": split.val_samples,
                **({"test": split.test_samples} if split.test_samples else {}),
            },
            labels=split.labels.names,
        )
        report_summary(summary)
        tracking.log_dataset_summary(summary)
    log_real_data_choices(cfg=cfg, setup=setup)


def log_real_data_choices(*, cfg: TrainConfig, setup: TrainingSetup) -> None:
    """The derived imbalance and fine-tuning choices: ``resolved.*`` params, and the class
    counts and weights as ``data/class_balance.json``."""
    split = setup.split
    report = balance.balance_report(
        samples=split.train_samples, labels=split.labels, task=setup.task, cfg=cfg.optim
    )
    mlflow.log_dict(report, "data/class_balance.json")
    params = {"resolved.class_balance": report["class_balance"]}
    if cfg.optim.freeze_backbone_epochs:
        params["resolved.head_parameters"] = ",".join(finetune.head_parameter_names(setup.model))
    if cfg.optim.layer_decay is not None:
        params["resolved.layer_groups"] = len(setup.optimizer.param_groups)
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def train(cfg: TrainConfig, ctx: DistributedContext = SINGLE_PROCESS) -> TrainResult | None:
    """Run a whole training job as configured; returns where the best model went.

    Under torchrun (``ctx``, inside its process group) every rank calls this; rank 0 alone talks
    to MLflow and writes the run's folder, and only it returns a result (the others None)."""
    if ctx.is_main:
        # Before any work: an unreachable server would otherwise surface after MLflow's retries.
        check_tracking_reachable(cfg.mlflow.tracking_uri)
    # Rank 0 picks the checkpoint; every rank loads it (output_dir must be shared by the nodes).
    resume_from = distributed.broadcast_object(
        prepare_output_dir(cfg=cfg) if ctx.is_main else None, ctx=ctx
    )
    seed_everything(seed=cfg.seed, deterministic=cfg.deterministic)
    setup = build_training(cfg=cfg, ctx=ctx)
    # Restored before the MLflow run starts: a checkpoint for other labels fails without a run.
    state = restore_state(resume_from=resume_from, setup=setup)
    if not ctx.is_main:
        train_loop(cfg=cfg, setup=setup, state=state, run_dir=None)
        return None
    with open_run_and_dir(cfg=cfg, run_id=state.mlflow_run_id) as (run, run_dir):
        state.mlflow_run_id = run.info.run_id
        if resume_from:
            prepare_resumed_dir(resume_from=resume_from, run_dir=run_dir)
        if state.epoch == 0:  # a resumed run logged these when it started
            log_run_inputs(cfg=cfg, setup=setup)
        train_loop(cfg=cfg, setup=setup, state=state, run_dir=run_dir)
        return finish(cfg=cfg, setup=setup, state=state, run_dir=run_dir)
