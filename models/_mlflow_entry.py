"""MLflow "model from code" entry point: executed by mlflow.pyfunc.load_model."""

import mlflow.models

from models.mlflow_pyfunc import ImageClassifierModel

mlflow.models.set_model(ImageClassifierModel())
