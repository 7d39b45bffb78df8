"""MLflow "model from code" entry point: executed by ``mlflow.pyfunc.load_model``.

MLflow copies this file into the logged model and ships ``models/`` (the model core) beside it
as code, so the model loads wherever MLflow does, without this project's registry or serving
code. It imports nothing from this project but ``models``.
"""

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from models.artifact import MLFLOW_ARTIFACT_KEY
from models.image_io import load_image
from models.predictor import Predictor

IMAGE_COLUMN = "image"


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Rows of encoded image bytes in, labels and scores per row out."""

    def load_context(self, context) -> None:
        # fp32: batch scoring through MLflow gives the exact scores evaluation gave.
        self.predictor = Predictor.from_artifact(
            context.artifacts[MLFLOW_ARTIFACT_KEY], precision="float32"
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        images = [load_image(bytes(value)) for value in model_input[IMAGE_COLUMN]]
        predictions = self.predictor.predict(images)
        return pd.DataFrame(
            {
                "labels": [[p.label for p in row] for row in predictions],
                "scores": [[p.score for p in row] for row in predictions],
            }
        )


mlflow.models.set_model(ImageClassifierModel())
