"""MLflow registry -> BentoML store, against a real sqlite registry and a temp BentoML home."""

import contextlib
import http.server
import threading
import time

import bentoml
import mlflow
import pytest

from models.artifact import read_spec
from models.bento_import import ModelImportError, artifact_dir, import_from_mlflow


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

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_tracking_server_errors_are_retried_then_reported_and_nothing_is_imported():
    before = {str(m.tag) for m in bentoml.models.list()}
    with _failing_tracking_server(503) as uri:
        started = time.monotonic()
        with pytest.raises(ModelImportError, match="answered 503"):
            import_from_mlflow("models:/shapes-single@champion", tracking_uri=uri)
        assert 2 <= time.monotonic() - started < 30  # retried with back-off, then gave up
    assert {str(m.tag) for m in bentoml.models.list()} == before
