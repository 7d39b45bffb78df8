"""Training configuration: one pydantic model, YAML defaults, dotted-flag overrides.

Every field's ``description`` doubles as its ``--help`` text, so each setting has one home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.labels import Task

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"


class _StrictConfig(BaseModel):
    # extra="forbid": a misspelt YAML key or flag fails the run instead of being ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_StrictConfig):
    format: Literal["folder", "csv"] = Field(
        "folder", description="folder: root/<label>/*.jpg (single-label); csv: a manifest"
    )
    root: Path = Field(
        Path("data/demo/single_label"),
        description="image folder root; base directory for relative CSV paths",
    )
    manifest: Path | None = Field(
        None,
        description="CSV manifest with columns path,labels and optionally split (train|val|test "
        "on every row: explicit splits, no random split)",
    )
    allow_outside_root: bool = Field(
        False,
        description="accept CSV manifest paths that are absolute or lead out of data.root "
        "with '..' (off: such rows stop the run, named by file and row)",
    )
    label_separator: str = Field(
        ";", description="separator between labels in the CSV labels column"
    )
    labels: list[str] | None = Field(
        None,
        description="fixed label list in head order; labels outside it are data errors "
        "(default: every label found, sorted)",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail",
        description="bad samples (missing, unreadable, unknown label): fail the run, or "
        "skip them and report the count",
    )
    verify_images: bool = Field(True, description="decode every image once before training")
    summarize: bool = Field(
        True,
        description="log a dataset summary before training: images per class and split, image "
        "sizes, files with identical content in two splits (reads every file once more)",
    )
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="held-out fraction for validation (ignored with k-fold)"
    )
    val_root: Path | None = Field(
        None,
        description="explicit validation folder (root/<label>/ layout, format=folder): no random "
        "split is made, val_fraction and num_folds are not used",
    )
    test_root: Path | None = Field(
        None,
        description="explicit test folder (root/<label>/ layout, format=folder), evaluated once "
        "with the best model and never used for model selection; without val_root, validation "
        "is still split off data.root",
    )
    num_folds: int = Field(0, ge=0, description="k for k-fold cross-validation splits; 0 = off")
    fold: int = Field(0, ge=0, description="which fold is the validation set when num_folds > 0")
    image_size: int | None = Field(
        None, ge=16, description="square input size; default: the architecture's timm data config"
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.format == "csv" and self.manifest is None:
            raise ValueError("data.format is csv but data.manifest is not set")
        if self.num_folds == 1:
            raise ValueError("data.num_folds must be 0 (off) or at least 2")
        if self.num_folds and self.fold >= self.num_folds:
            raise ValueError(f"data.fold must be < data.num_folds ({self.num_folds})")
        if self.format == "csv" and (self.val_root or self.test_root):
            raise ValueError(
                "data.val_root/data.test_root are for format=folder; a CSV manifest gives its "
                "splits in a 'split' column (train|val|test)"
            )
        if self.val_root and self.num_folds:
            raise ValueError("data.num_folds cannot be used with an explicit data.val_root")
        return self


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
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(1e-3, gt=0.0, description="peak AdamW learning rate")
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


class EvaluationConfig(_StrictConfig):
    """``python -m training evaluate``: a model on labelled data, as the service predicts."""

    data: DataConfig = Field(default_factory=DataConfig)
    split: Literal["all", "train", "val", "test"] = Field(
        "all",
        description="which data to evaluate on: all of data.root (or the whole manifest), or "
        "one split: train = data.root, val = data.val_root, test = data.test_root (a "
        "manifest: its rows with that split value)",
    )
    name: str | None = Field(
        None,
        description="dataset name in the model version's tags eval.<name>.<metric> (default: "
        "the folder's or manifest's name, and the split unless all)",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db as in training)",
    )
    experiment: str = Field("evaluation", description="MLflow experiment of evaluation runs")
    artifact_location: str | None = Field(
        None,
        description="artifact root if the evaluation experiment is created (default: MLflow's)",
    )
    log_to_mlflow: bool = Field(
        True, description="log an evaluation run and tag the registered model version with it"
    )
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    decode_threads: int = Field(2, ge=1, description="threads decoding images")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="float32 gives the scores of MLflow's pyfunc and of batch scoring; auto "
        "what the service picks on this hardware",
    )
    full_decode: bool = Field(
        False, description="decode large JPEGs at full size (the service decodes them reduced)"
    )

    @model_validator(mode="after")
    def _check_split(self) -> EvaluationConfig:
        # Checked before a model is downloaded: the folder a split names must be given.
        needs_root = self.data.format == "folder" and self.split in ("val", "test")
        if needs_root and getattr(self.data, f"{self.split}_root") is None:
            raise ValueError(f"split {self.split} needs data.{self.split}_root")
        return self
