"""The registered MLflow model on Spark (local mode, one session): `mlflow.pyfunc.spark_udf`
over Spark's binaryFile source and over Parquet gives the in-process Predictor's results, and a
bad image is an error in its row, not a failed job. Needs Java (`.ci/docker-engine install`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import Predictor, load_image

from ..conftest import PROJECT_ROOT
from ..support.tools import require_tool

MODEL_URI = "models:/shapes-single@champion"
JAVA_HINT = (
    "Spark needs Java 17: run `.ci/docker-engine install` (Debian's openjdk-17-jre-headless)"
)


@pytest.fixture(scope="module")
def spark():
    require_tool("java", JAVA_HINT)
    from scoring.spark import create_spark_session

    session = create_spark_session(master="local[2]", app_name="tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def image_folder(png_images, tmp_path_factory) -> Path:
    """Six held-out PNGs, one as JPEG, one corrupt PNG and an empty file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("spark-input")
    for source in png_images[::7][:6]:
        (folder / "nested").mkdir(exist_ok=True)
        (folder / "nested" / source.name).write_bytes(source.read_bytes())
    Image.open(png_images[1]).convert("RGB").save(folder / "photo.jpg", quality=90)
    (folder / "corrupt.png").write_bytes(png_images[2].read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    return folder


def _check(
    rows: list[dict], *, reference: Predictor, folder: Path, version: str, listed: bool = False
) -> None:
    """``listed``: the rows come from Spark's binaryFile source, which lists no empty file."""
    by_name = {Path(row["path"].removeprefix("file:")).name: row for row in rows}
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    assert sorted(by_name) == sorted(f for f in files if not (listed and f == "empty.png"))
    for name, row in by_name.items():
        assert (row["model"], row["model_version"]) == (f"models:/shapes-single/{version}", version)
        if name in ("corrupt.png", "empty.png"):
            assert row["error"] and len(row["labels"]) == len(row["scores"]) == 0
            continue
        [path] = folder.rglob(name)
        [expected] = reference.predict([load_image(path)])
        assert row["error"] is None
        assert list(row["labels"]) == [p.label for p in expected]
        assert list(row["scores"]) == pytest.approx([p.score for p in expected], abs=1e-5)
    assert by_name["corrupt.png"]["error"].startswith("corrupt or truncated image")
    if not listed:
        assert by_name["empty.png"]["error"] == "empty upload: 0 bytes"


def test_binary_files_scored_on_spark_equal_the_predictor(
    spark, single_label_run, reference, image_folder
):
    from scoring.spark import read_images, resolve_lineage, score_images

    lineage = resolve_lineage(MODEL_URI)
    scored = score_images(spark, read_images(spark, str(image_folder)), lineage=lineage)
    assert scored.columns == [
        "path", "labels", "scores", "error", "model", "model_version", "run_id",
    ]  # fmt: skip
    rows = [row.asDict() for row in scored.collect()]
    _check(rows, reference=reference, folder=image_folder, listed=True,
           version=single_label_run.registered_version)  # fmt: skip


def test_a_parquet_table_of_image_bytes_scored_on_spark(
    spark, single_label_run, reference, image_folder, tmp_path
):
    import pandas as pd

    from scoring.spark import read_images, resolve_lineage, score_images

    files = sorted(p for p in image_folder.rglob("*") if p.is_file())
    table = tmp_path / "images.parquet"
    pd.DataFrame({"path": [str(p) for p in files], "image": [p.read_bytes() for p in files]}
                 ).to_parquet(table)  # fmt: skip
    images = read_images(spark, str(table), image_column="image")
    scored = score_images(spark, images, lineage=resolve_lineage(MODEL_URI))
    _check([row.asDict() for row in scored.collect()], reference=reference, folder=image_folder,
           version=single_label_run.registered_version)  # fmt: skip


def test_the_documented_spark_command_writes_parquet(
    single_label_run, reference, image_folder, tmp_path
):
    """docs/batch-scoring.md's example, as a user runs it (its own Spark session)."""
    import pandas as pd

    require_tool("java", JAVA_HINT)
    out = tmp_path / "scores.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "scoring", "spark", MODEL_URI, str(image_folder), "--out", str(out)],
        cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{out}: 8 rows, 1 with an error" in result.stdout
    rows = pd.read_parquet(out).to_dict("records")
    for row in rows:
        row["error"] = None if pd.isna(row["error"]) else row["error"]
    _check(rows, reference=reference, folder=image_folder, listed=True,
           version=single_label_run.registered_version)  # fmt: skip
