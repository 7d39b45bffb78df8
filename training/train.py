"""Compose the pipeline: data -> model -> epochs -> best artifact -> MLflow registry."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader

from models.artifact import ModelSpec
from models.device import choose_device
from models.factory import create_classifier
from models.labels import LabelSet, Task, scores_from_logits
from models.preprocessing import PreprocessConfig, create_eval_transform, create_train_transform
from registry.tracking_server import check_tracking_reachable

from . import checkpoint, plots, rundir, tracking
from .config import TrainConfig
from .data import DataError, ImageDataset, LoadedData, load_dataset, split_samples
from .engine import (
    Precision,
    create_loss,
    create_optimizer,
    create_scheduler,
    evaluate,
    train_one_epoch,
)
from .metrics import MONITORED, compute_metrics, scalar_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    best_epoch: int
    best_score: float
    monitored: str
    artifact_dir: Path
    registered_name: str | None
    registered_version: str | None
    val_metrics: dict[str, float]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _check_task(data: LoadedData, task: Task) -> None:
    if task is Task.SINGLE_LABEL:
        multi = [s.origin for s in data.samples if len(s.labels) > 1]
        if multi:
            raise DataError(
                f"single_label task but {len(multi)} sample(s) have several labels, "
                f"e.g. {multi[:3]}; use model.task=multi_label"
            )


def _loader(dataset, cfg: TrainConfig, shuffle: bool, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=generator,
        # Fresh workers each epoch: they are seeded from the per-epoch generator, so a resumed run
        # sees the same order and augmentation as an uninterrupted one.
        persistent_workers=False,
    )


def _model_spec(cfg: TrainConfig, labels: LabelSet, preprocess: PreprocessConfig) -> ModelSpec:
    return ModelSpec(
        architecture=cfg.model.architecture,
        task=cfg.task,
        labels=labels.names,
        preprocessing=preprocess,
        threshold=cfg.model.threshold,
        top_k=cfg.model.top_k,
    )


def _log_final_plots(
    cfg: TrainConfig,
    state: checkpoint.TrainingState,
    metrics: dict,
    logits: torch.Tensor,
    targets: torch.Tensor,
    labels: LabelSet,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plots.plot_training_curves(state.history, out / "training_curves.png")
        if cfg.task is Task.SINGLE_LABEL:
            plots.plot_confusion_matrix(
                metrics["confusion_matrix"], labels.names, out / "confusion_matrix.png"
            )
        else:
            plots.plot_pr_curves(
                targets.numpy(),
                scores_from_logits(logits, cfg.task).numpy(),
                labels.names,
                out / "pr_curves.png",
            )
        mlflow.log_artifacts(str(out), "plots")


def _prepare_output_dir(cfg: TrainConfig) -> Path | None:
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


@contextlib.contextmanager
def _run_and_dir(cfg: TrainConfig, run_id: str | None) -> Iterator[tuple[mlflow.ActiveRun, Path]]:
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


def _prepare_resumed_dir(resume_from: Path, run_dir: Path) -> None:
    """Undo a crash inside the best-model replacement; resuming from a checkpoint kept
    elsewhere (``--resume PATH``) brings the ``best/`` beside it along."""
    checkpoint.recover_best_artifact(run_dir)
    checkpoint.recover_best_artifact(resume_from.parent)  # the best/ about to be brought along
    source = resume_from.parent / checkpoint.BEST_ARTIFACT
    target = run_dir / checkpoint.BEST_ARTIFACT
    if source.resolve() != target.resolve() and source.is_dir() and not target.exists():
        shutil.copytree(source, target)
        logger.info("Copied %s to %s", source, target)


def train(cfg: TrainConfig) -> TrainResult:
    """Run a whole training job as configured; returns where the best model went."""
    # Before any work: an unreachable server would otherwise surface after MLflow's retries.
    check_tracking_reachable(cfg.mlflow.tracking_uri)
    resume_from = _prepare_output_dir(cfg)
    seed_everything(cfg.seed, cfg.deterministic)
    task = cfg.task
    data = load_dataset(cfg.data)
    _check_task(data, task)
    train_samples, val_samples = split_samples(data.samples, cfg.data, cfg.seed)
    labels = data.labels
    logger.info(
        "%d labels, %d training / %d validation samples (%d skipped)",
        len(labels),
        len(train_samples),
        len(val_samples),
        len(data.issues),
    )

    device = choose_device(cfg.device).device
    precision = Precision.for_device(device, cfg.amp)
    model = create_classifier(
        cfg.model.architecture, len(labels), cfg.model.pretrained, drop_rate=cfg.model.drop_rate
    )
    preprocess = PreprocessConfig.for_model(model, cfg.data.image_size)
    spec = _model_spec(cfg, labels, preprocess)
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    generator = torch.Generator()
    train_transform = create_train_transform(
        preprocess,
        scale=(cfg.augment.scale_min, 1.0),
        hflip=cfg.augment.hflip,
        color_jitter=cfg.augment.color_jitter,
    )
    train_loader = _loader(
        ImageDataset(train_samples, labels, task, train_transform),
        cfg,
        shuffle=True,
        generator=generator,
    )
    val_loader = _loader(
        ImageDataset(val_samples, labels, task, create_eval_transform(preprocess)),
        cfg,
        shuffle=False,
    )

    loss_fn = create_loss(task, cfg.optim.label_smoothing)
    optimizer = create_optimizer(model, cfg.optim)
    scheduler = create_scheduler(optimizer, cfg.optim, len(train_loader))
    scaler = precision.grad_scaler()

    state = checkpoint.TrainingState(labels=list(labels.names))
    if resume_from:
        state = checkpoint.load_checkpoint(resume_from, model, optimizer, scheduler, scaler)
        if state.labels != list(labels.names):
            raise DataError(
                f"{resume_from} was trained on labels {state.labels}, "
                f"the data now has {list(labels.names)}"
            )
        logger.info("Resuming from %s after epoch %d", resume_from, state.epoch)

    monitored = MONITORED[task]
    with _run_and_dir(cfg, state.mlflow_run_id) as (run, run_dir):
        state.mlflow_run_id = run.info.run_id
        if resume_from:
            _prepare_resumed_dir(resume_from, run_dir)
        if state.epoch == 0:
            tracking.log_config(
                cfg,
                {
                    "resolved.task": task.value,
                    "resolved.num_classes": len(labels),
                    "resolved.train_samples": len(train_samples),
                    "resolved.val_samples": len(val_samples),
                    "resolved.skipped_samples": len(data.issues),
                    "resolved.device": str(device),
                    "resolved.input_size": str(preprocess.input_size),
                },
            )
            tracking.log_labels(labels.names)
            tracking.log_data_issues(data.issues)
            mlflow.log_metric("data_skipped", len(data.issues))

        for epoch in range(state.epoch + 1, cfg.optim.epochs + 1):
            # Re-seeding per epoch makes a resumed run see the same data order and augmentation.
            torch.manual_seed(cfg.seed + epoch)
            generator.manual_seed(cfg.seed + epoch)
            train_loss = train_one_epoch(
                model, train_loader, loss_fn, optimizer, scheduler, scaler, precision, epoch
            )
            logits, targets, val_loss = evaluate(model, val_loader, loss_fn, precision)
            metrics = compute_metrics(logits, targets, labels, task, cfg.model.threshold)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": scheduler.get_last_lr()[0],
                **scalar_metrics(metrics),
            }
            state.history.append({k: float(v) for k, v in row.items()})
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            score = metrics[monitored]
            logger.info(
                "epoch %d: train_loss %.4f val_loss %.4f val_%s %.4f",
                epoch,
                train_loss,
                val_loss,
                monitored,
                score,
            )

            state.epoch = epoch
            if score > state.best_score + cfg.optim.min_delta:
                state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
                checkpoint.save_best_artifact(run_dir, model, spec)
            else:
                state.bad_epochs += 1
            checkpoint.save_checkpoint(
                run_dir / checkpoint.LAST_CHECKPOINT,
                state,
                model,
                optimizer,
                scheduler,
                scaler,
            )
            if state.bad_epochs >= cfg.optim.patience:
                logger.info(
                    "Early stopping after epoch %d (best: epoch %d)", epoch, state.best_epoch
                )
                break

        return _finish(cfg, state, labels, val_loader, loss_fn, precision, run_dir)


def _finish(
    cfg: TrainConfig,
    state: checkpoint.TrainingState,
    labels: LabelSet,
    val_loader,
    loss_fn,
    precision: Precision,
    run_dir: Path,
) -> TrainResult:
    """Evaluate the best checkpoint, log its plots and metrics, log and register the model."""
    from models.artifact import load_artifact

    run_id = run_dir.name
    best_dir = run_dir / checkpoint.BEST_ARTIFACT
    best_model, spec = load_artifact(best_dir)
    best_model = best_model.to(precision.device)
    logits, targets, _ = evaluate(best_model, val_loader, loss_fn, precision, desc="best model")
    metrics = compute_metrics(logits, targets, labels, spec.task, spec.threshold)
    final = scalar_metrics(metrics, prefix="best_val_")
    mlflow.log_metrics({**final, "best_score": state.best_score, "best_epoch": state.best_epoch})
    _log_final_plots(cfg, state, metrics, logits, targets, labels)

    example = val_loader.dataset.samples[0].path.read_bytes()
    version = tracking.log_and_register_model(
        cfg,
        best_dir,
        example,
        {
            "task": spec.task.value,
            "architecture": spec.architecture,
            f"val_{MONITORED[spec.task]}": f"{state.best_score:.4f}",
        },
    )
    return TrainResult(
        run_id=run_id,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        monitored=MONITORED[spec.task],
        artifact_dir=best_dir,
        registered_name=cfg.mlflow.registered_model,
        registered_version=version,
        val_metrics=final,
    )
