"""`bentoml serve` with CLASSIFIER_MODEL_URI: the model comes from the (sqlite) MLflow registry at
start-up, with its lineage; a registry that cannot give it stops the server, saying what to fix.
(In a container, against the stack's MLflow server: tests/containers/test_model_swap.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import requests
from mlflow import MlflowClient
from PIL import Image

from .conftest import CHAMPION_URI, bentoml_server, free_port, start_bentoml

FAST_FAILURE = {"CLASSIFIER_MODEL_FETCH_TIMEOUT_S": "6"}


def test_the_server_imports_the_alias_it_is_given_and_serves_it(
    single_label_run, reference, tracking_uri, png_images, session_dir
):
    champion = MlflowClient(tracking_uri).get_model_version_by_alias("shapes-single", "champion")
    # No such store tag: the URI, not the tag, decides what is served.
    env = {"CLASSIFIER_MODEL_URI": CHAMPION_URI}
    with bentoml_server("not-in-the-store:latest", session_dir / "serve-uri.log", env) as url:
        metadata = requests.post(f"{url}/metadata", timeout=30).json()
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in png_images[:3]]
        served = requests.post(f"{url}/classify", files=files, timeout=60)
    assert served.status_code == 200, served.text
    model = metadata["model"]
    assert model["tag"].startswith("image-classifier-registry:")
    assert (model["mlflow_registered_name"], model["mlflow_version"]) == (
        "shapes-single",
        str(champion.version),
    )
    assert model["mlflow_run_id"] == champion.run_id
    expected = reference.predict([Image.open(p) for p in png_images[:3]])
    for want, got in zip(expected, served.json(), strict=True):
        assert [s.label for s in want] == [s["label"] for s in got["labels"]]
        assert got["model"] == model


def _fails_at_start_up(env: dict[str, str], log_path: Path, *messages: str) -> float:
    started = time.monotonic()
    server = start_bentoml(env, log_path)
    try:
        deadline = time.monotonic() + 180
        while server.exit_status() is None and time.monotonic() < deadline:
            assert not server.is_ready(), "a server without its model said ready"
            time.sleep(0.5)
        code = server.exit_status()
        assert code is not None, "server did not exit"
        assert code != 0
    finally:
        server.stop(grace_s=5)
    log = log_path.read_text(errors="replace")
    for message in messages:
        assert message in log, log[-3000:]
    return time.monotonic() - started


def test_a_missing_alias_is_retried_then_stops_the_server_saying_what_to_fix(
    single_label_run, session_dir
):
    uri = "models:/shapes-single@no-such-alias"
    _fails_at_start_up(
        {"CLASSIFIER_MODEL_URI": uri, **FAST_FAILURE},
        session_dir / "serve-missing-alias.log",
        f"cannot serve CLASSIFIER_MODEL_URI={uri}",
        "has no alias 'no-such-alias'",
        "attempts",
        "To fix: check MLFLOW_TRACKING_URI",
    )


def test_an_unreachable_registry_stops_the_server_within_the_timeout(session_dir):
    nowhere = f"http://127.0.0.1:{free_port()}"
    took = _fails_at_start_up(
        {"CLASSIFIER_MODEL_URI": CHAMPION_URI, "MLFLOW_TRACKING_URI": nowhere, **FAST_FAILURE},
        session_dir / "serve-no-registry.log",
        f"cannot reach the MLflow tracking server at {nowhere}",
    )
    assert took < 120  # bounded by the timeout, plus start-up and the last try's own retries
