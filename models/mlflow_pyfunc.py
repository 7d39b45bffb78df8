"""The classifier as an MLflow pyfunc model, logged as "model from code" (no pickling).

MLflow stores the artifact directory under ``artifacts/classifier`` and this package under
``code/``; loading runs ``_mlflow_entry.py``, which only instantiates :class:`ImageClassifierModel`.
So ``mlflow.pyfunc.load_model`` / ``mlflow models serve`` work, and our own loaders can read the
artifact directory directly.
"""

import logging
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from .artifact import MLFLOW_ARTIFACT_KEY as ARTIFACT_KEY

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
ENTRY_FILE = Path(__file__).with_name("_mlflow_entry.py")
PACKAGE_DIR = Path(__file__).parent


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Rows of encoded image bytes in, labels and scores per row out."""

    def load_context(self, context) -> None:
        from .predictor import Predictor

        # fp32: batch scoring through MLflow gives the exact scores evaluation gave.
        self.predictor = Predictor.from_artifact(
            context.artifacts[ARTIFACT_KEY], precision="float32"
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from .preprocessing import load_image

        images = [load_image(bytes(value)) for value in model_input[IMAGE_COLUMN]]
        predictions = self.predictor.predict(images)
        return pd.DataFrame(
            {
                "labels": [[p.label for p in row] for row in predictions],
                "scores": [[p.score for p in row] for row in predictions],
            }
        )


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(Array("string"), "labels"), ColSpec(Array("double"), "scores")]),
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
        code_paths=[str(PACKAGE_DIR)],
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
