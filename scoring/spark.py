"""Scoring on Spark: the registered MLflow model as a ``mlflow.pyfunc.spark_udf`` over a table
of image bytes (Spark's ``binaryFile`` source over a folder, or Parquet).

Each row gets the same columns as the local ``predict`` output (``path``, ``labels``,
``scores``, ``error`` and the model's lineage). The pyfunc (registry/_mlflow_entry.py) reports
an image it cannot decode in that row's ``error``, so a bad image never fails a task.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .inputs import IMAGE_EXTENSIONS
from .model_source import MLFLOW_SCHEMES, ModelLineage, ModelSourceError, resolve_mlflow

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

# The pyfunc's outputs (registry/mlflow_pyfunc.py's signature), as the UDF's struct type.
RESULT_TYPE = "labels array<string>, scores array<double>, error string"
# The pyfunc's input column (registry/_mlflow_entry.py).
MODEL_INPUT_COLUMN = "image"
# Rows per Arrow batch handed to the model: Spark's default (10,000) holds that many encoded
# images in a Python worker at once; the pyfunc decodes and scores them in chunks of 64.
ARROW_BATCH_ROWS = 512
LOOPBACK = "127.0.0.1"


def create_spark_session(*, master: str = "local[2]", app_name: str = "image-scoring"):
    """A Spark session for scoring. With a ``local[...]`` master it binds to the loopback
    interface and starts no web UI: nothing is exposed, and nothing needs the network."""
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    )
    if master.startswith("local"):
        # Local Python workers run this interpreter, where MLflow and the model core are
        # installed (a local master starts them with $PYSPARK_PYTHON, not spark.pyspark.python).
        # On a cluster this path may not exist on the executors: PYSPARK_PYTHON or the
        # cluster's configuration decides there.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)  # read by the JVM Spark launches
        builder = (
            builder.config("spark.pyspark.python", sys.executable)
            .config("spark.pyspark.driver.python", sys.executable)
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", LOOPBACK)
            .config("spark.driver.bindAddress", LOOPBACK)
        )
    return builder.getOrCreate()


def read_images(spark: SparkSession, source: str, *, image_column: str = "content") -> DataFrame:
    """``path`` and ``content`` (the encoded bytes) for every image under a folder (any depth,
    by extension), or for every row of a Parquet file/folder (its ``path`` and ``image_column``).
    """
    from pyspark.sql import functions as F  # noqa: N812 (PySpark's own convention)

    if source.rstrip("/").endswith(".parquet"):
        table = spark.read.parquet(source)
        return table.select(F.col("path"), F.col(image_column).alias("content"))
    extensions = ",".join(f"*{ext}" for ext in sorted(IMAGE_EXTENSIONS))
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        # Hadoop globs are case-sensitive: list upper-case extensions too.
        .option("pathGlobFilter", "{" + extensions + "," + extensions.upper() + "}")
        .load(source)
    )
    return files.select("path", "content")


def resolve_lineage(model_uri: str, *, tracking_uri: str | None = None) -> ModelLineage:
    """A registered model pinned to its current version, or a local MLflow model directory."""
    if model_uri.startswith(MLFLOW_SCHEMES):
        return resolve_mlflow(model_uri, tracking_uri=tracking_uri)
    if Path(model_uri).is_dir():
        return ModelLineage(model=str(Path(model_uri).resolve()))
    raise ModelSourceError(
        f"{model_uri!r}: Spark scores an MLflow model: models:/Name@alias, models:/Name/<version>,"
        " runs:/<run_id>/<path> or a local MLflow model directory"
    )


def score_images(spark: SparkSession, images: DataFrame, *, lineage: ModelLineage) -> DataFrame:
    """``images`` (``path``, ``content``) scored by the MLflow model ``lineage.model``: the
    local ``predict`` output's columns, one row per image."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F  # noqa: N812

    predict = mlflow.pyfunc.spark_udf(
        spark, lineage.model, result_type=RESULT_TYPE, env_manager="local"
    )
    prediction = predict(F.struct(F.col("content").alias(MODEL_INPUT_COLUMN)))
    return images.select(
        "path",
        prediction.alias("prediction"),
    ).select(
        "path",
        "prediction.labels",
        "prediction.scores",
        # The pyfunc's "" for a scored row, null here as in the local JSONL output.
        F.nullif(F.col("prediction.error"), F.lit("")).alias("error"),
        F.lit(lineage.model).alias("model"),
        F.lit(lineage.model_version).alias("model_version"),
        F.lit(lineage.run_id).alias("run_id"),
    )


def run_spark_job(
    model_uri: str,
    source: str,
    *,
    out: str,
    tracking_uri: str | None = None,
    master: str = "local[2]",
    image_column: str = "content",
) -> dict[str, int]:
    """Score ``source`` with ``model_uri`` and write Parquet to ``out`` (replaced); returns the
    row counts (``rows``, ``failed``)."""
    from pyspark.sql import functions as F  # noqa: N812

    lineage = resolve_lineage(model_uri, tracking_uri=tracking_uri)
    spark = create_spark_session(master=master)
    try:
        scored = score_images(
            spark, read_images(spark, source, image_column=image_column), lineage=lineage
        )
        scored.write.mode("overwrite").parquet(out)
        written = spark.read.parquet(out)
        counts = written.agg(F.count("*").alias("rows"), F.count("error").alias("failed")).first()
        return {"rows": int(counts["rows"]), "failed": int(counts["failed"])}
    finally:
        spark.stop()
