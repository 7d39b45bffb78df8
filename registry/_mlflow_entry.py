"""MLflow "model from code" entry point: executed by ``mlflow.pyfunc.load_model``.

MLflow copies this file into the logged model and ships ``models/`` (the model core) beside it
as code, so the model loads wherever MLflow does, without this project's registry or serving
code. It imports nothing from this project but ``models``.

Each row is scored on its own merits: a row whose bytes are missing or do not decode gets its
reason in ``error`` (and empty ``labels``/``scores``) while the other rows are still scored, so
one bad image in a Spark partition (``mlflow.pyfunc.spark_udf``) never fails the whole task.
A scored row's ``error`` is the empty string, not None: ``spark_udf`` turns the None of a
column that also holds messages into the string "None".
"""

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from models.artifact import MLFLOW_ARTIFACT_KEY
from models.image_io import ImageDecodeError, load_image
from models.predictor import Predictor

IMAGE_COLUMN = "image"
NO_ERROR = ""
# Images decoded and scored together: Spark hands over whole Arrow batches (10,000 rows by
# default), and decoding them all before the forward pass would hold 10,000 full images.
CHUNK_SIZE = 64


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Rows of encoded image bytes in; labels, scores and a per-row error ("" if none) out."""

    def load_context(self, context) -> None:
        # fp32: batch scoring through MLflow gives the exact scores evaluation gave.
        self.predictor = Predictor.from_artifact(
            context.artifacts[MLFLOW_ARTIFACT_KEY], precision="float32"
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        values = list(model_input[IMAGE_COLUMN])
        rows: list[tuple[list[str], list[float], str]] = []
        for start in range(0, len(values), CHUNK_SIZE):
            rows.extend(self._score_chunk(values[start : start + CHUNK_SIZE]))
        return pd.DataFrame(rows, columns=["labels", "scores", "error"])

    def _score_chunk(self, values: list) -> list[tuple[list[str], list[float], str]]:
        decoded = [_decode(value) for value in values]
        good = [image for image, _ in decoded if image is not None]
        predictions = iter(self.predictor.predict(good))
        rows = []
        for image, error in decoded:
            if image is None:
                rows.append(([], [], error))
                continue
            row = next(predictions)
            rows.append(([p.label for p in row], [p.score for p in row], NO_ERROR))
        return rows


def _decode(value) -> tuple[object | None, str | None]:
    """The decoded image, or None and the reason it cannot be scored."""
    if value is None:
        return None, "no image bytes (null)"
    try:
        return load_image(bytes(value)), None
    except ImageDecodeError as exc:
        return None, str(exc)
    except (TypeError, ValueError) as exc:  # not bytes at all (a string column, a number)
        return None, f"not image bytes: {type(value).__name__} ({exc})"


mlflow.models.set_model(ImageClassifierModel())
