"""The data settings (shared by ``train`` and ``evaluate``) and the evaluation settings.

Part of the training configuration (:mod:`training.config` re-exports both); every field's
``description`` doubles as its ``--help`` text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
