"""The classifier as an MLflow pyfunc model, logged as "model from code" (no pickling).

MLflow stores the artifact directory under ``artifacts/classifier``, the model core (``models/``)
under ``code/`` and ``_mlflow_entry.py`` as the model's code; loading runs that file, which
defines and instantiates the pyfunc. So ``mlflow.pyfunc.load_model`` / ``mlflow models serve``
work without this project's registry or serving code, and our own loaders can read the artifact
directory directly.
"""

import logging
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

import models
from models.artifact import MLFLOW_ARTIFACT_KEY as ARTIFACT_KEY

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "image"  # the entry file's column, repeated there: it may import only `models`
ENTRY_FILE = Path(__file__).with_name("_mlflow_entry.py")
# The only code an MLflow model ships: the model core.
MODEL_CODE_DIR = Path(models.__file__).parent


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        # `error` is the reason a row could not be scored ("" when it was): one bad image
        # must not fail a whole batch, least of all a Spark task.
        outputs=Schema(
            [
                ColSpec(Array("string"), "labels"),
                ColSpec(Array("double"), "scores"),
                ColSpec("string", "error"),
            ]
        ),
    )


def log_classifier_model(
    artifact_dir: str | Path, example_image: bytes, registered_model_name: str | None = None
):
    """Log an artifact directory as this project's pyfunc model in the active MLflow run.

    Registers it as ``registered_model_name`` when given; returns MLflow's ``ModelInfo``.
    """
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(ENTRY_FILE),
        artifacts={ARTIFACT_KEY: str(artifact_dir)},
        code_paths=[str(MODEL_CODE_DIR)],
        signature=model_signature(),
        input_example=pd.DataFrame({IMAGE_COLUMN: [example_image]}),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of the pyfunc, taken from the running environment."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name)}"
        for name in ("torch", "torchvision", "timm", "safetensors", "pillow", "pydantic", "pandas")
    ]
