"""Training configuration: one pydantic model, YAML defaults, dotted-flag overrides.

Every field's ``description`` doubles as its ``--help`` text, so each setting has one home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator

from models.labels import Task

from .data_config import DataConfig, EvaluationConfig, _StrictConfig

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "EvaluationConfig",
    "MlflowConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_override",
    "flatten",
    "leaf_fields",
    "load_config",
]

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"


class ModelConfig(_StrictConfig):
    architecture: str = Field("resnet18", description="any timm architecture name")
    pretrained: str | None = Field(
        None,
        description="'hub' for the architecture's hub weights, a local weights file, or "
        "null for random init",
    )
    task: Task | None = Field(
        None, description="single_label or multi_label (default: single for folder, multi for csv)"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="multi-label decision threshold")
    top_k: int = Field(5, ge=1, description="labels returned per image for single-label models")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")
    tune_thresholds: bool = Field(
        False,
        description="multi-label: after training, choose per class the threshold that maximises "
        "its F1 on the validation set and store it in the model (class_thresholds)",
    )


class OptimConfig(_StrictConfig):
    epochs: int = Field(10, ge=1, description="maximum number of epochs")
    batch_size: int = Field(
        32, ge=1, description="training batch size per process (under torchrun: per rank)"
    )
    lr: float = Field(
        1e-3,
        gt=0.0,
        description="peak AdamW learning rate, used as given whatever the global batch size",
    )
    weight_decay: float = Field(
        0.05, ge=0.0, description="AdamW weight decay (not on norms/biases)"
    )
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warm-up length, in epochs")
    min_lr_ratio: float = Field(
        0.01, ge=0.0, le=1.0, description="cosine floor as a fraction of lr"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="single-label only")
    patience: int = Field(5, ge=1, description="early stopping: epochs without improvement")
    min_delta: float = Field(0.0, ge=0.0, description="early stopping: smallest improvement")
    class_balance: Literal["none", "loss", "sampler"] = Field(
        "none",
        description="class imbalance: loss = class-weighted loss (single-label: inverse class "
        "frequency, mean 1; multi-label: pos_weight = negatives/positives per class); sampler = "
        "draw classes equally often (single-label only, not with torchrun)",
    )
    max_pos_weight: float = Field(
        100.0, ge=1.0, description="multi-label class_balance=loss: pos_weight clipped to this"
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description="two-stage fine-tuning: train only the classifier head for this many epochs "
        "(backbone frozen, its norm statistics kept), then everything",
    )
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise LR decay: each layer group below the head gets this factor "
        "times the LR of the group above it (null: one LR for all)",
    )

    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="micro-batches whose gradients are averaged into each optimizer step (as "
        "one batch that many times larger); "
        "global batch = optim.batch_size x processes (torchrun) x grad_accum_steps, and the "
        "schedule counts optimizer steps",
    )

    @model_validator(mode="after")
    def _check_stages(self) -> OptimConfig:
        if self.freeze_backbone_epochs > self.epochs:
            raise ValueError(
                f"optim.freeze_backbone_epochs ({self.freeze_backbone_epochs}) exceeds "
                f"optim.epochs ({self.epochs})"
            )
        return self


class AugmentConfig(_StrictConfig):
    scale_min: float = Field(0.5, gt=0.0, le=1.0, description="random-resized-crop minimum area")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    color_jitter: float = Field(0.2, ge=0.0, description="colour jitter strength")


class DistributedConfig(_StrictConfig):
    """Data-parallel training under torchrun (ignored by a plain single-process run).

    ``optim.batch_size`` is per process and ``optim.lr`` is used as given: with N processes
    each optimizer step sees N x batch_size x grad_accum_steps samples, and the learning rate
    is not scaled for it (scale it yourself if you want the linear-scaling rule).
    """

    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="process-group backend; auto: nccl on CUDA, gloo on CPU"
    )
    sync_batchnorm: bool = Field(
        False,
        description="convert BatchNorm layers to SyncBatchNorm (statistics over the global "
        "batch; CUDA only)",
    )
    timeout_s: float = Field(
        300.0,
        gt=0.0,
        description="longest wait in any collective before the job fails (a hung peer)",
    )


class MlflowConfig(_StrictConfig):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking and registry URI")
    experiment: str = Field("image-classifier", description="MLflow experiment name")
    artifact_location: str | None = Field(
        None,
        description="artifact root for a newly created experiment (default: MLflow's, "
        "./mlruns for a sqlite tracking URI)",
    )
    run_name: str | None = Field(None, description="MLflow run name (default: generated)")
    registered_model: str | None = Field(
        "image-classifier", description="register the best model under this name (null: don't)"
    )
    alias: str = Field("champion", description="alias given to the newly registered version")


class TrainConfig(_StrictConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    seed: int = Field(42, description="seed for splits, initialisation and data order")
    deterministic: bool = Field(True, description="deterministic algorithms (slower on GPU)")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="training device")
    amp: bool = Field(True, description="mixed precision on CUDA (no effect on CPU)")
    output_dir: Path = Field(
        Path("outputs/train"),
        description="each run writes its checkpoint (last.pt) and best artifact (best/) to its "
        "own folder, output_dir/<MLflow run id>/",
    )
    resume: str | None = Field(
        None,
        description="'auto' to continue the newest unfinished run in output_dir that no live "
        "process holds (none: start a new run), or a checkpoint path",
    )

    @model_validator(mode="after")
    def _check_task_options(self) -> TrainConfig:
        multi = self.task is Task.MULTI_LABEL
        if multi and self.optim.class_balance == "sampler":
            raise ValueError(
                "optim.class_balance=sampler is single-label only (a multi-label image belongs to "
                "several classes); use optim.class_balance=loss (pos_weight)"
            )
        if not multi and self.model.tune_thresholds:
            raise ValueError(
                "model.tune_thresholds applies to multi-label models only (single-label "
                "predictions are top-k, without a threshold)"
            )
        return self

    @property
    def task(self) -> Task:
        if self.model.task is not None:
            return self.model.task
        return Task.SINGLE_LABEL if self.data.format == "folder" else Task.MULTI_LABEL


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def leaf_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted name -> pydantic FieldInfo for every leaf setting."""
    leaves: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(leaf_fields(annotation, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = info
    return leaves


def apply_override(
    values: dict[str, Any], dotted: str, raw: str, *, config: type[BaseModel] = TrainConfig
) -> None:
    """Set ``values[a][b] = yaml(raw)`` for ``dotted == "a.b"`` (YAML-typed)."""
    if dotted not in leaf_fields(config):
        raise ValueError(f"unknown setting {dotted!r}")
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw) if raw != "" else None


def load_config(path: Path | None = None, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Read YAML (default: the packaged default config) and apply dotted overrides."""
    path = path or DEFAULT_CONFIG
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must contain a YAML mapping")
    for dotted, raw in (overrides or {}).items():
        apply_override(values, dotted, raw)
    return TrainConfig.model_validate(values)
