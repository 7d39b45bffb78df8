"""Batch scoring: a registered model over many images, on one host or on a Spark cluster.

``inputs`` lists the images (a folder, recursively, or a CSV of paths); ``outputs`` writes and
resumes CSV/JSONL results; ``model_source`` fetches a model (MLflow URI, Bento tag or a local
directory) with its lineage; ``batch`` scores through the same :class:`models.Predictor` and
image decoding the service uses; ``spark`` scores the MLflow model with
``mlflow.pyfunc.spark_udf``. ``python -m scoring predict|spark`` is the CLI (docs/batch-scoring.md).

Nothing is imported here: ``python -m scoring --help`` answers without loading torch or Spark.
"""
