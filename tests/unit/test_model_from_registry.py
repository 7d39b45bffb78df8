"""CLASSIFIER_MODEL_URI: the settings, the start-up import's retry policy and its messages.

The import itself runs for real against a sqlite registry in
tests/integration/test_model_from_registry.py, and in a container against the stack's MLflow in
tests/containers/test_model_swap.py.
"""

from __future__ import annotations

import os

import pytest

import serving.model_store
from registry.bento_import import ModelImportError, resolve_source
from registry.startup import (
    WHAT_TO_FIX,
    StartupModelError,
    fetch_model,
    forget_password,
    load_password_file,
)
from registry.tracking_server import PASSWORD_VAR, TrackingServerError, check_tracking_reachable
from serving.image import MAKE_REGISTRY_STORE_DIR, REGISTRY_STORE_DIR
from serving.model_store import REGISTRY_MODEL_NAME, ServedModel, served_model
from serving.settings import ServingSettings

URI = "models:/image-classifier@champion"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Registry:
    """Answers each import with the next outcome: an exception to raise, or a model."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, model_uri: str, *, bento_name: str):
        self.calls.append((model_uri, bento_name))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, True


class StoredModel:
    tag = f"{REGISTRY_MODEL_NAME}:abc"


def fetch(registry: Registry, clock: FakeClock, timeout_s: float = 60.0):
    return fetch_model(
        URI,
        bento_name=REGISTRY_MODEL_NAME,
        timeout_s=timeout_s,
        importer=registry,
        sleep=clock.sleep,
        clock=clock,
    )


def test_the_uri_replaces_the_packaged_model_under_its_own_store_name():
    packaged = ServingSettings.from_env({"CLASSIFIER_MODEL_TAG": "shapes:v1"})
    assert packaged.model_uri is None
    assert str(served_model(packaged).tag) == "shapes:v1"
    assert served_model(packaged).source is None

    env = {"CLASSIFIER_MODEL_TAG": "shapes:v1", "CLASSIFIER_MODEL_URI": URI}
    settings = ServingSettings.from_env(
        {**env, "CLASSIFIER_MLFLOW_PASSWORD_FILE": "/run/secrets/p"}
    )
    model = served_model(settings)
    assert str(model.tag) == f"{REGISTRY_MODEL_NAME}:latest"
    assert model.source.uri == URI
    assert str(model.source.password_file) == "/run/secrets/p"
    assert model.source.timeout_s == settings.model_fetch_timeout_s


def test_empty_values_are_unset_and_a_non_mlflow_uri_is_refused_by_name():
    # compose passes "" for what .env leaves unset
    settings = ServingSettings.from_env(
        {"CLASSIFIER_MODEL_URI": " ", "CLASSIFIER_MLFLOW_PASSWORD_FILE": ""}
    )
    assert settings.model_uri is None and settings.mlflow_password_file is None
    for bad in ("image-classifier:latest", "s3://bucket/model", "file:///models/x"):
        with pytest.raises(ValueError, match="CLASSIFIER_MODEL_URI: .*models:/Name@alias"):
            ServingSettings.from_env({"CLASSIFIER_MODEL_URI": bad})
    with pytest.raises(ValueError, match="CLASSIFIER_MODEL_FETCH_TIMEOUT_S"):
        ServingSettings.from_env({"CLASSIFIER_MODEL_FETCH_TIMEOUT_S": "0"})


def test_an_unreachable_registry_or_missing_alias_is_retried_until_it_answers():
    clock = FakeClock()
    registry = Registry(
        ModelImportError("cannot reach the MLflow tracking server", retryable=True),
        ModelImportError("registered model 'x' has no alias 'champion'", retryable=True),
        StoredModel(),
    )
    assert isinstance(fetch(registry, clock), StoredModel)
    assert registry.calls == [(URI, REGISTRY_MODEL_NAME)] * 3
    assert clock.sleeps == [2.0, 4.0]  # backing off


def test_retrying_stops_at_the_deadline_with_a_message_that_says_what_to_fix(monkeypatch):
    secret = "not-a-real-password"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:" + secret + "@mlflow:5000")
    clock = FakeClock()
    unreachable = ModelImportError("cannot reach the MLflow tracking server", retryable=True)
    registry = Registry(*[unreachable] * 50)
    with pytest.raises(StartupModelError) as raised:
        fetch(registry, clock, timeout_s=60)
    message = str(raised.value)
    assert clock.now <= 60
    assert max(clock.sleeps) <= 15  # capped back-off: a registry that comes back is seen soon
    assert f"CLASSIFIER_MODEL_URI={URI}" in message
    assert "http://mlflow:5000" in message and secret not in message  # credentials redacted
    assert f"after {len(registry.calls)} attempts" in message
    assert "cannot reach the MLflow tracking server" in message
    assert WHAT_TO_FIX in message


def test_the_deadline_counts_from_the_first_failure_not_from_a_slow_first_attempt():
    clock = FakeClock()

    class SlowFirstAttempt(Registry):
        def __call__(self, model_uri, *, bento_name):
            clock.now += 30 if not self.calls else 0  # importing MLflow on a busy machine
            return super().__call__(model_uri, bento_name=bento_name)

    registry = SlowFirstAttempt(
        ModelImportError("registered model 'x' has no alias 'champion'", retryable=True),
        StoredModel(),
    )
    assert isinstance(fetch(registry, clock, timeout_s=6), StoredModel)
    assert len(registry.calls) == 2


def test_what_retrying_cannot_fix_fails_at_once():
    clock = FakeClock()
    registry = Registry(ModelImportError("models:/x/1 is not a classifier model from this project"))
    with pytest.raises(StartupModelError, match="not a classifier model"):
        fetch(registry, clock)
    assert len(registry.calls) == 1 and clock.sleeps == []


def test_which_registry_failures_are_worth_retrying():
    with pytest.raises(ModelImportError) as unsupported:
        resolve_source("s3://bucket/model", client=None)
    assert not unsupported.value.retryable
    # Nothing listens on port 9 of loopback: unreachable, worth retrying.
    with pytest.raises(TrackingServerError) as unreachable:
        check_tracking_reachable("http://127.0.0.1:9", timeout_s=1, attempts=1)
    assert unreachable.value.retryable


def test_the_password_file_feeds_mlflows_variable_unless_it_is_set(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-the-secret\n")
    env: dict[str, str] = {}
    assert load_password_file(secret, environ=env)
    assert env == {PASSWORD_VAR: "from-the-secret"}
    forget_password(environ=env)
    assert env == {}
    env = {PASSWORD_VAR: "from-the-environment"}
    assert not load_password_file(secret, environ=env)
    assert env == {PASSWORD_VAR: "from-the-environment"}
    empty = tmp_path / "empty"  # compose's default: /dev/null
    empty.write_text("")
    env = {}
    load_password_file(empty, environ=env)
    assert env == {}
    with pytest.raises(StartupModelError, match="CLASSIFIER_MLFLOW_PASSWORD_FILE=.*absent"):
        load_password_file(tmp_path / "absent", environ={})


def test_the_image_makes_the_import_directory_writable_under_a_tmpfs():
    # Docker gives a tmpfs root's ownership and the mode of the directory under it.
    assert f"/home/bentoml/bento/models/{REGISTRY_MODEL_NAME}" == REGISTRY_STORE_DIR
    assert MAKE_REGISTRY_STORE_DIR.endswith(f"chmod 1777 {REGISTRY_STORE_DIR}")


def test_the_model_is_fetched_once_per_process_and_the_password_not_left_behind(
    tmp_path, monkeypatch
):
    """Plain `bentoml serve` prepares the model twice (resolve, then the on_deployment hook);
    workers, started afterwards, must not inherit the password read from the file."""
    secret = tmp_path / "password"
    secret.write_text("from-the-secret")
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    seen: list[str | None] = []

    def fetch_model(uri, *, bento_name, timeout_s):
        import os

        seen.append(os.environ.get(PASSWORD_VAR))

    monkeypatch.setattr(serving.model_store, "fetch_model", fetch_model)
    monkeypatch.setattr(ServedModel, "check", lambda self: "checked")
    settings = ServingSettings.from_env(
        {"CLASSIFIER_MODEL_URI": URI, "CLASSIFIER_MLFLOW_PASSWORD_FILE": str(secret)}
    )
    model = served_model(settings)
    assert model.prepare() == "checked" and model.prepare() == "checked"
    assert seen == ["from-the-secret"]

    assert PASSWORD_VAR not in os.environ
