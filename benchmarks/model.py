"""The model under test, put in place the way users do it: MLflow registry -> BentoML store.

Random weights (no model hub here), the real artifact format, a real sqlite MLflow registry and
``registry.bento_import``, all inside the benchmark's work directory. Architecture, input size and
preprocessing are timm's defaults; 67 labels, like the cat-breed example.

``--models`` takes timm names, ``name@SIZE`` for another input size (``test_resnet@32``), or a
preset: ``noop``, the framework ceiling. The server loads the model from its artifact (an
architecture name timm builds), so a true no-op model cannot be served; ``noop`` is the cheapest
real timm model on the smallest input, so that what a server adds (HTTP, parsing, JPEG decode,
queuing, batching) is nearly all of what it spends. Measured among the ``test_*`` models at
16x16, batch 1, channels_last, one thread: ``test_resnet`` ~0.5 ms in fp32 (``test_efficientnet``
~0.7, ``test_byobnet`` ~0.8), ~1.5 ms under bf16 autocast, which the service picks by default on
CPUs with native bf16 (the ``bentoml-fp32`` server runs fp32).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

NUM_LABELS = 67
MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class ModelChoice:
    """What one ``--models`` entry names: a timm architecture, at its input size or another."""

    name: str
    architecture: str
    image_size: int | None = None  # input height and width; None: timm's default
    framework_ceiling: bool = False  # a near-no-op model: measures the serving framework


PRESETS: dict[str, ModelChoice] = {
    "noop": ModelChoice("noop", "test_resnet", 16, framework_ceiling=True),
}


def resolve(name: str) -> ModelChoice:
    """A preset, ``architecture@SIZE`` or a plain timm architecture name."""
    if name in PRESETS:
        return PRESETS[name]
    architecture, sep, size = name.partition("@")
    if not sep:
        return ModelChoice(name, name)
    if not size.isdigit() or int(size) < MIN_IMAGE_SIZE:
        raise ValueError(f"{name!r}: the size after @ must be a whole number >= {MIN_IMAGE_SIZE}")
    return ModelChoice(name, architecture, int(size))


@dataclass(frozen=True)
class BenchModel:
    architecture: str
    bento_tag: str
    artifact_dir: Path
    image_size: int | None = None


def bento_model_name(architecture: str, image_size: int | None = None) -> str:
    suffix = f"-{image_size}px" if image_size else ""
    return f"bench-{architecture.replace('_', '-')}{suffix}"


def prepare_model(
    architecture: str, tracking_uri: str, seed: int = 0, image_size: int | None = None
) -> BenchModel:
    """Register a random-weight ``architecture`` classifier in MLflow and import it (cached);
    ``image_size`` overrides the input height and width (resize and crop follow)."""
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

    bento_name = bento_model_name(architecture, image_size)
    try:
        existing = bentoml.models.get(f"{bento_name}:latest")
        return BenchModel(architecture, str(existing.tag), artifact_dir(existing), image_size)
    except NotFound:
        pass

    logger.info("Creating %s (random weights) and registering it in MLflow", architecture)
    torch.manual_seed(seed)
    model = create_classifier(architecture, NUM_LABELS)
    spec = ModelSpec(
        architecture=architecture,
        task=Task.SINGLE_LABEL,
        labels=tuple(f"breed-{index:02d}" for index in range(NUM_LABELS)),
        preprocessing=PreprocessConfig.for_model(model, image_size=image_size),
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("benchmarks")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=bento_name):
        directory = save_artifact(Path(tmp) / "artifact", model, spec)
        info = log_classifier_model(directory, photo_like_jpeg(64, 48, seed=1), bento_name)
    version = info.registered_model_version
    imported, _ = import_from_mlflow(f"models:/{bento_name}/{version}", bento_name=bento_name)
    stored = bentoml.models.get(imported.tag)  # the store copy, not the import's staging dir
    return BenchModel(architecture, str(stored.tag), artifact_dir(stored), image_size)
