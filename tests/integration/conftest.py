"""Real components: the sqlite MLflow registry, the BentoML store and `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from benchmarks.servers import free_port, server_process

READY_TIMEOUT_S = 180

__all__ = ["bentoml_server", "free_port"]


@contextlib.contextmanager
def bentoml_server(model_tag: str, log_path: Path, extra_env: dict[str, str] | None = None):
    """Start `bentoml serve` on a free loopback port; yield its URL once /readyz says ready."""
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
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml_cli), "serve", "service:ImageClassifier",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server_process(
        command,
        env=env,
        log_path=log_path,
        ready_url=f"{url}/readyz",
        what="bentoml serve",
        timeout_s=READY_TIMEOUT_S,
    ):
        yield url
