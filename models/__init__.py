"""The model core that training, the registry and serving share: model factory, labels, image
decoding, preprocessing, the device policy, the artifact format and the predictor.

Nothing here imports MLflow, BentoML or an HTTP framework: this package is what an MLflow model
ships as its code, and what a newcomer reads to know what a model is.
"""

from .artifact import ArtifactError, ModelSpec, load_artifact, read_spec, save_artifact
from .device import DevicePlan, WorkerSlot, choose_device, gpu_for_worker
from .factory import create_classifier
from .image_io import ImageDecodeError, load_image
from .labels import LabelScore, LabelSet, Task
from .predictor import Predictor
from .preprocessing import PreprocessConfig, create_eval_transform, create_train_transform

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
    "WorkerSlot",
    "choose_device",
    "create_classifier",
    "create_eval_transform",
    "create_train_transform",
    "gpu_for_worker",
    "load_artifact",
    "load_image",
    "read_spec",
    "save_artifact",
]
