"""The training pipeline: data, loop, metrics, MLflow tracking and registration."""
