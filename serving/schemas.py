"""What the service answers: response bodies, documented in its OpenAPI spec."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from models.labels import LabelScore


class ModelRef(BaseModel):
    """Which model produced a prediction: enough to find its MLflow training run."""

    tag: str = Field(description="BentoML model tag")
    mlflow_registered_name: str = ""
    mlflow_version: str = ""
    mlflow_run_id: str = ""


class Classification(BaseModel):
    """The result for one image."""

    labels: list[LabelScore] = Field(
        description="single-label: the top-k labels, best first; multi-label: every label whose "
        "score reaches its threshold, best first (may be empty)"
    )
    model: ModelRef


class ModelMetadata(BaseModel):
    """What is being served and how."""

    model: ModelRef
    architecture: str
    task: str
    labels: list[str]
    top_k: int
    threshold: float
    class_thresholds: dict[str, float]
    preprocessing: dict
    device: str
    metrics: dict[str, float] = Field(
        default_factory=dict, description="headline metrics of the training run"
    )
    max_batch_size: int
    max_latency_ms: int


def model_ref(tag: str, labels: Mapping[str, str]) -> ModelRef:
    """The lineage of a stored model, from the labels the importer gave it."""
    return ModelRef(
        tag=tag,
        mlflow_registered_name=labels.get("mlflow_registered_name", ""),
        mlflow_version=labels.get("mlflow_version", ""),
        mlflow_run_id=labels.get("mlflow_run_id", ""),
    )
