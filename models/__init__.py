"""What training and serving share: model factory, labels, preprocessing, artifact format.

Heavy modules (MLflow, BentoML) are imported from their own submodules, not from here, so that
importing ``models`` stays cheap.
"""

from .artifact import ArtifactError, ModelSpec, load_artifact, read_spec, save_artifact
from .factory import create_classifier
from .labels import LabelScore, LabelSet, Task
from .predictor import DevicePlan, Predictor, choose_device
from .preprocessing import (
    ImageDecodeError,
    PreprocessConfig,
    create_eval_transform,
    create_train_transform,
    load_image,
)

__all__ = [
    "ArtifactError",
    "DevicePlan",
    "ImageDecodeError",
    "LabelScore",
    "LabelSet",
    "ModelSpec",
    "Predictor",
    "PreprocessConfig",
    "Task",
    "choose_device",
    "create_classifier",
    "create_eval_transform",
    "create_train_transform",
    "load_artifact",
    "load_image",
    "read_spec",
    "save_artifact",
]
