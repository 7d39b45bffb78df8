"""The model artifact: weights plus everything needed to serve them, with no pickled code.

A directory holding ``model.safetensors`` (the state dict) and ``classifier.json`` (a
:class:`ModelSpec`). Training writes it, MLflow stores it inside a pyfunc model, the BentoML
store keeps a copy, and the service rebuilds the predictor from it alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .factory import create_classifier
from .labels import LabelSet, Task
from .preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "classifier.json"
# Key of the artifact directory inside the MLflow pyfunc model (see registry/mlflow_pyfunc.py).
MLFLOW_ARTIFACT_KEY = "classifier"
# Where an imported model keeps the MLflow model inside its BentoML store directory.
STORED_MLFLOW_MODEL_DIR = "mlflow_model"


class ArtifactError(RuntimeError):
    """A model artifact is missing, incomplete or inconsistent."""


class ModelSpec(BaseModel):
    """Every fact about a trained classifier that serving needs, besides its weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    architecture: str = Field(description="timm architecture name")
    task: Task
    labels: tuple[str, ...] = Field(min_length=1, description="class names in head order")
    preprocessing: PreprocessConfig
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="multi-label decision threshold")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-class overrides of `threshold` (multi-label)"
    )
    top_k: int = Field(5, ge=1, description="labels returned per image (single-label)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        LabelSet.from_names(self.labels)  # uniqueness / blank checks
        unknown = sorted(set(self.class_thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"class_thresholds name unknown labels: {unknown}")
        bad = {k: v for k, v in self.class_thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"class thresholds must be in [0, 1]: {bad}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"artifact format_version {self.format_version} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        return self

    @property
    def label_set(self) -> LabelSet:
        return LabelSet.from_names(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def save_artifact(directory: str | Path, model: torch.nn.Module, spec: ModelSpec) -> Path:
    """Write weights and spec into ``directory`` (created if needed) and return it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / SPEC_FILE).write_text(spec.model_dump_json(indent=2))
    return directory


def read_spec(directory: str | Path) -> ModelSpec:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: not a classifier artifact directory")
    try:
        return ModelSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ArtifactError(f"{path} is not a valid model spec: {exc}") from exc


def _weights_file(directory: str | Path) -> Path:
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing")
    return weights


def check_artifact(directory: str | Path) -> ModelSpec:
    """Cheap integrity check without building the model: the spec parses and the weights file
    is complete (its header and the sizes it declares match the file). Raises ``ArtifactError``.
    """
    from safetensors import SafetensorError, safe_open

    spec = read_spec(directory)
    weights = _weights_file(directory)
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            if not list(tensors.keys()):
                raise ArtifactError(f"{weights} holds no tensors")
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights} is damaged: {exc}") from exc
    return spec


def _state_dict_mismatches(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], spec: ModelSpec
) -> list[str]:
    """What keeps ``found`` from loading into a model that expects ``expected``, tensor by
    tensor (torch's own message is one long line that names the model class, not the spec)."""
    model = f"{spec.architecture} with {spec.num_classes} classes"
    problems = [
        f"tensor {name} has shape {tuple(found[name].shape)}, {model} expects {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in found and found[name].shape != tensor.shape
    ]
    problems += [f"tensor {name} is missing" for name in expected if name not in found]
    problems += [f"tensor {name} is not part of {model}" for name in found if name not in expected]
    return problems


def load_artifact(directory: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model (in eval mode, on CPU) and its spec from an artifact directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_spec(directory)
    weights = _weights_file(directory)
    try:
        model = create_classifier(spec.architecture, spec.num_classes)
    except ValueError as exc:  # an architecture this timm does not know
        raise ArtifactError(f"{Path(directory) / SPEC_FILE}: {exc}") from exc
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"cannot load weights from {weights}: {exc}") from exc
    problems = _state_dict_mismatches(model.state_dict(), state, spec)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ArtifactError(f"cannot load weights from {weights}: {'; '.join(problems[:5])}{more}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # what the shape check above does not foresee
        raise ArtifactError(f"cannot load weights from {weights}: {exc}") from exc
    return model.eval(), spec


def classifier_artifact_dir(mlflow_model_dir: str | Path) -> Path:
    """The classifier artifact directory inside a downloaded MLflow model (read from MLmodel)."""
    mlmodel = Path(mlflow_model_dir) / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{mlmodel} is missing: not an MLflow model directory")
    flavor = (
        (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    )
    entry = (flavor.get("artifacts") or {}).get(MLFLOW_ARTIFACT_KEY)
    if not entry or "path" not in entry:
        raise FileNotFoundError(
            f"{mlmodel} has no '{MLFLOW_ARTIFACT_KEY}' artifact: not a model of this project"
        )
    model_dir, relative = Path(mlflow_model_dir), str(entry["path"])
    for name in (SPEC_FILE, WEIGHTS_FILE):  # a symlinked file inside would lead out as well
        _confined(model_dir, str(Path(relative) / name), mlmodel)
    return _confined(model_dir, relative, mlmodel)


def _confined(model_dir: Path, relative: str, mlmodel: Path) -> Path:
    """``model_dir / relative``, resolved (symlinks too), if it stays inside ``model_dir``.

    MLmodel comes with the downloaded model: an absolute path or ``..`` in it would make us
    read a spec and weights from anywhere on the machine.
    """
    root = model_dir.resolve()
    target = (root / relative).resolve()
    if Path(relative).is_absolute() or not target.is_relative_to(root):
        raise ArtifactError(
            f"{mlmodel}: the '{MLFLOW_ARTIFACT_KEY}' artifact path {relative!r} leads outside "
            f"the model directory {root}; refusing to read it"
        )
    return target


def stored_artifact_dir(stored_model_path: str | Path) -> Path:
    """The classifier artifact inside a model imported into the BentoML store (its directory).

    Raises ``ArtifactError`` when the stored MLmodel points outside the stored model.
    """
    return classifier_artifact_dir(Path(stored_model_path) / STORED_MLFLOW_MODEL_DIR)
