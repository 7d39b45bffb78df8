"""The model under test, put in place the way users do it: MLflow registry -> BentoML store.

Random weights (no model hub here), the real artifact format, a real sqlite MLflow registry and
``registry.bento_import``, all inside the benchmark's work directory. Architecture, input size and
preprocessing are timm's defaults; 67 labels, like the cat-breed example.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

NUM_LABELS = 67


@dataclass(frozen=True)
class BenchModel:
    architecture: str
    bento_tag: str
    artifact_dir: Path


def prepare_model(architecture: str, tracking_uri: str, seed: int = 0) -> BenchModel:
    """Register a random-weight ``architecture`` classifier in MLflow and import it (cached)."""
    import bentoml
    import mlflow
    import torch
    from bentoml.exceptions import NotFound

    from models.artifact import ModelSpec, save_artifact
    from models.factory import create_classifier
    from models.labels import Task
    from models.preprocessing import PreprocessConfig
    from registry.bento_import import artifact_dir, import_from_mlflow
    from registry.mlflow_pyfunc import log_classifier_model

    from .workload import photo_like_jpeg

    bento_name = f"bench-{architecture.replace('_', '-')}"
    try:
        existing = bentoml.models.get(f"{bento_name}:latest")
        return BenchModel(architecture, str(existing.tag), artifact_dir(existing))
    except NotFound:
        pass

    logger.info("Creating %s (random weights) and registering it in MLflow", architecture)
    torch.manual_seed(seed)
    model = create_classifier(architecture, NUM_LABELS)
    spec = ModelSpec(
        architecture=architecture,
        task=Task.SINGLE_LABEL,
        labels=tuple(f"breed-{index:02d}" for index in range(NUM_LABELS)),
        preprocessing=PreprocessConfig.for_model(model),
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("benchmarks")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=bento_name):
        directory = save_artifact(Path(tmp) / "artifact", model, spec)
        info = log_classifier_model(directory, photo_like_jpeg(64, 48, seed=1), bento_name)
    version = info.registered_model_version
    imported, _ = import_from_mlflow(f"models:/{bento_name}/{version}", bento_name=bento_name)
    stored = bentoml.models.get(imported.tag)  # the store copy, not the import's staging dir
    return BenchModel(architecture, str(stored.tag), artifact_dir(stored))
