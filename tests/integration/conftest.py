"""Real components: the sqlite MLflow registry, the BentoML store and `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import pytest

from devtools.server_process import (
    LOOPBACK,
    ServerProcess,
    bentoml_serve_command,
    free_port,
    running_server,
    start_server,
)

READY_TIMEOUT_S = 180
CHAMPION_URI = "models:/shapes-single@champion"

__all__ = ["bentoml_server", "bentoml_server_process", "free_port", "start_bentoml"]


def start_bentoml(env_overrides: Mapping[str, str], log_path: Path) -> ServerProcess:
    """Start `bentoml serve` on a free loopback port, on the CPU, and return without waiting:
    for the tests of start-up itself (a broken model must fail, never say ready)."""
    port = free_port()
    return start_server(
        bentoml_serve_command(port=port),
        url=f"http://{LOOPBACK}:{port}",
        env={**os.environ, "CLASSIFIER_DEVICE": "cpu", **env_overrides},
        log_path=log_path,
        what="bentoml serve",
    )


@contextlib.contextmanager
def bentoml_server_process(
    model_tag: str, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Start `bentoml serve` on a free loopback port; yield the process once /readyz says ready,
    and stop its process group afterwards (for tests that signal the server themselves)."""
    port = free_port()
    # CPU fp32 on any runner: exact parity with in-process predictions is asserted, and
    # reduced precision differs slightly between batch sizes (which batching varies).
    env = {
        **os.environ,
        "CLASSIFIER_MODEL_TAG": model_tag,
        "CLASSIFIER_DEVICE": "cpu",
        "CLASSIFIER_PRECISION": "float32",
        **(extra_env or {}),
    }
    with running_server(
        bentoml_serve_command(port=port),
        url=f"http://{LOOPBACK}:{port}",
        env=env,
        log_path=log_path,
        what="bentoml serve",
        timeout_s=READY_TIMEOUT_S,
    ) as (server, _):
        yield server


@contextlib.contextmanager
def bentoml_server(
    model_tag: str, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start `bentoml serve` on a free loopback port; yield its URL once /readyz says ready."""
    with bentoml_server_process(model_tag, log_path, extra_env) as server:
        yield server.url


@pytest.fixture(scope="session")
def reference(single_label_run, tmp_path_factory):
    """The single-label champion's predictor, in-process, fp32 on the CPU: what every other way
    of scoring that model must agree with."""
    from models import Predictor
    from models.artifact import classifier_artifact_dir

    local = mlflow.artifacts.download_artifacts(
        CHAMPION_URI, dst_path=str(tmp_path_factory.mktemp("reference"))
    )
    return Predictor.from_artifact(
        classifier_artifact_dir(local), device="cpu", precision="float32"
    )
