"""MLflow registry -> BentoML store, against a real sqlite registry and a temp BentoML home."""

import contextlib
import http.server
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import mlflow
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from models.artifact import ArtifactError, check_artifact, classifier_artifact_dir, read_spec
from registry.bento_import import ModelImportError, artifact_dir, import_from_mlflow
from registry.mlflow_pyfunc import log_classifier_model

from ..conftest import PROJECT_ROOT
from ..support.http_stub import local_http_server


def test_import_by_alias_carries_lineage_and_labels(single_label_run, single_label_bento):
    labels = single_label_bento.info.labels
    assert labels["mlflow_run_id"] == single_label_run.run_id
    assert labels["mlflow_registered_name"] == "shapes-single"
    assert labels["mlflow_version"] == single_label_run.registered_version
    metadata = single_label_bento.info.metadata
    assert metadata["task"] == "single_label"
    assert metadata["metrics"]["best_val_accuracy"] == pytest.approx(single_label_run.best_score)
    spec = read_spec(artifact_dir(single_label_bento))
    assert spec.labels == ("circle", "cross", "ring", "square", "triangle")


def test_same_version_is_not_imported_twice(single_label_run, single_label_bento):
    version = single_label_run.registered_version
    again, created = import_from_mlflow(
        "models:/shapes-single@champion", bento_name="shapes-single"
    )
    by_version, created_v = import_from_mlflow(
        f"models:/shapes-single/{version}", bento_name="shapes-single"
    )
    assert not created and not created_v
    assert again.tag == by_version.tag == single_label_bento.tag
    assert len(bentoml.models.list("shapes-single")) == 1


def test_import_from_a_run_uri(single_label_run):
    uri = f"runs:/{single_label_run.run_id}/model"
    model, created = import_from_mlflow(uri, bento_name="shapes-from-run")
    assert created
    assert model.info.labels["mlflow_run_id"] == single_label_run.run_id
    assert read_spec(artifact_dir(model)).task.value == "single_label"
    _, created_again = import_from_mlflow(uri, bento_name="shapes-from-run")
    assert not created_again


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/shapes-single@nope", "has no alias 'nope'.*aliases: \\['champion'\\]"),
        ("models:/shapes-single/999", "has no version 999"),
        ("models:/no-such-model@champion", "no registered model named 'no-such-model'"),
        ("s3://bucket/model", "unsupported model URI"),
    ],
)
def test_unknown_models_give_clear_errors(single_label_run, uri, message):
    with pytest.raises(ModelImportError, match=message):
        import_from_mlflow(uri, bento_name="never-created")
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("never-created:latest")


def test_unreachable_tracking_server_fails_fast():
    started = time.monotonic()
    with pytest.raises(ModelImportError, match="cannot reach the MLflow tracking server"):
        import_from_mlflow("models:/x@champion", tracking_uri="http://127.0.0.1:9")
    assert time.monotonic() - started < 15


def test_missing_sqlite_database(tmp_path):
    with pytest.raises(ModelImportError, match="does not exist"):
        import_from_mlflow("models:/x@champion", tracking_uri=f"sqlite:///{tmp_path}/none.db")


def test_foreign_model_is_refused_and_leaves_nothing_in_the_store(tmp_path):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.set_experiment("tests-foreign")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="foreign")
    with pytest.raises(ModelImportError, match="not a classifier model from this project"):
        import_from_mlflow("models:/foreign/1", bento_name="foreign")
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("foreign:latest")


@contextlib.contextmanager
def _failing_tracking_server(status: int):
    """A tracking server in trouble (overloaded, restarting): every request gets ``status``."""

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    with local_http_server(Failing) as url:
        yield url


def test_tracking_server_errors_are_retried_then_reported_and_nothing_is_imported():
    before = {str(m.tag) for m in bentoml.models.list()}
    with _failing_tracking_server(503) as uri:
        started = time.monotonic()
        with pytest.raises(ModelImportError, match="answered 503"):
            import_from_mlflow("models:/shapes-single@champion", tracking_uri=uri)
        assert 2 <= time.monotonic() - started < 30  # retried with back-off, then gave up
    assert {str(m.tag) for m in bentoml.models.list()} == before


@pytest.fixture(scope="module")
def downloaded_model(single_label_run, tmp_path_factory) -> Path:
    """The real registered model, as MLflow hands it out: to be copied and tampered with."""
    dst = tmp_path_factory.mktemp("downloaded")
    return Path(
        mlflow.artifacts.download_artifacts("models:/shapes-single@champion", dst_path=str(dst))
    )


def _log_as_run(model_dir: Path) -> str:
    """Log a (crafted) MLflow model directory as a run's artifacts; returns its runs:/ URI."""
    mlflow.set_experiment("tests-crafted")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    return f"runs:/{run.info.run_id}/model"


def _point_classifier_at(model_dir: Path, path: str) -> None:
    mlmodel = model_dir / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    spec["flavors"]["python_function"]["artifacts"]["classifier"]["path"] = path
    mlmodel.write_text(yaml.safe_dump(spec))


@pytest.mark.parametrize("where", ["../../somewhere", "absolute"])
def test_artifact_path_outside_the_model_is_refused_at_import(downloaded_model, tmp_path, where):
    """MLmodel's artifacts.classifier.path may not lead outside the downloaded model."""
    crafted = tmp_path / "crafted"
    shutil.copytree(downloaded_model, crafted)
    outside = tmp_path / "somewhere"  # a complete, valid artifact: only its location is wrong
    shutil.move(classifier_artifact_dir(crafted), outside)
    _point_classifier_at(crafted, str(outside) if where == "absolute" else where)
    with pytest.raises(ModelImportError, match="outside the model directory"):
        import_from_mlflow(_log_as_run(crafted), bento_name="crafted-path")
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("crafted-path:latest")


def test_artifact_path_outside_the_stored_model_is_refused_at_serve_time(
    single_label_run, tmp_path
):
    """A stored model whose MLmodel was changed after import: artifact_dir (which service.py
    calls at start-up) refuses to look outside the stored model."""
    imported, _ = import_from_mlflow(
        f"runs:/{single_label_run.run_id}/model", bento_name="shapes-tampered"
    )
    # The store's copy (the object import returns points at BentoML's temporary one).
    model = bentoml.models.get(imported.tag)
    try:
        stored = Path(model.path_of("mlflow_model"))
        outside = tmp_path / "somewhere"
        shutil.copytree(artifact_dir(model), outside)
        for where in ("../../somewhere", str(outside)):
            _point_classifier_at(stored, where)
            with pytest.raises(ArtifactError, match="outside the model directory"):
                artifact_dir(bentoml.models.get(model.tag))
    finally:
        bentoml.models.delete(model.tag)


def test_a_damaged_copy_is_replaced_when_the_same_version_is_imported_again(
    single_label_run, caplog
):
    uri = f"runs:/{single_label_run.run_id}/model"
    imported, created = import_from_mlflow(uri, bento_name="shapes-damaged")
    assert created
    # The store's copy (the object import returns points at BentoML's temporary one).
    first = bentoml.models.get(imported.tag)
    weights = artifact_dir(first) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ArtifactError):
        check_artifact(artifact_dir(first))

    with caplog.at_level(logging.WARNING, logger="registry.bento_import"):
        again, created_again = import_from_mlflow(uri, bento_name="shapes-damaged")
    assert created_again
    assert again.tag != first.tag
    check_artifact(artifact_dir(bentoml.models.get(again.tag)))
    assert [str(m.tag) for m in bentoml.models.list("shapes-damaged")] == [str(again.tag)]
    assert f"{first.tag} is damaged" in caplog.text and "importing it again" in caplog.text


def test_weights_of_the_wrong_shapes_are_refused_at_import(downloaded_model, tmp_path):
    """The header is fine, so only loading the model shows it: that happens at import, on the
    CPU, not in a server worker that BentoML restarts over and over."""
    crafted = tmp_path / "crafted"
    shutil.copytree(downloaded_model, crafted)
    weights = classifier_artifact_dir(crafted) / "model.safetensors"
    state = load_file(str(weights))
    state["fc.weight"], state["fc.bias"] = (
        state["fc.weight"][:3].clone(),
        state["fc.bias"][:3].clone(),
    )
    save_file(state, str(weights), metadata={"format": "pt"})
    check_artifact(weights.parent)  # the cheap check cannot see it

    with pytest.raises(ModelImportError, match=r"fc\.weight has shape \(3, 512\)"):
        import_from_mlflow(_log_as_run(crafted), bento_name="crafted-shapes")
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("crafted-shapes:latest")


def test_importing_an_older_version_again_is_a_rollback(single_label_bento, tmp_path):
    """Two MLflow versions imported in order, then the older one again: it becomes :latest (what
    `bentoml serve` and the image serve), and `python -m registry list` says so, with the
    aliases each version carries in MLflow."""
    example = io.BytesIO()
    Image.new("RGB", (8, 8)).save(example, format="PNG")
    mlflow.set_experiment("tests-rollback")
    for _ in range(2):
        with mlflow.start_run():
            log_classifier_model(
                artifact_dir(single_label_bento), example.getvalue(), registered_model_name="rb"
            )
    mlflow.MlflowClient().set_registered_model_alias("rb", "champion", "1")
    v1, _ = import_from_mlflow("models:/rb/1", bento_name="rb")
    v2, _ = import_from_mlflow("models:/rb/2", bento_name="rb")
    assert bentoml.models.get("rb:latest").tag == v2.tag

    again, created = import_from_mlflow("models:/rb@champion", bento_name="rb")
    assert not created and again.tag == v1.tag
    assert bentoml.models.get("rb:latest").tag == v1.tag

    listed = subprocess.run(
        [sys.executable, "-m", "registry", "list", "--name", "rb", "--json"],
        cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    rows = {row["mlflow_version"]: row for row in json.loads(listed.stdout)}
    assert rows["1"]["is_latest"] and not rows["2"]["is_latest"]
    assert rows["1"]["tag"] == str(v1.tag) and rows["2"]["tag"] == str(v2.tag)
    assert rows["1"]["mlflow_aliases"] == ["champion"] and rows["2"]["mlflow_aliases"] == []
    table = subprocess.run(
        [sys.executable, "-m", "registry", "list", "--name", "rb"],
        cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert table[0].split()[:2] == ["TAG", "CREATED"]
    assert [line.split()[1] for line in table[1:] if line.startswith("*")] == [str(v1.tag)]
