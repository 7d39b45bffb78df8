"""Real components: the sqlite MLflow registry, the BentoML store and `bentoml serve`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..conftest import PROJECT_ROOT
from ..support.ready import wait_until_ready

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(bentoml_cli),
                "serve",
                "service:ImageClassifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url,
            what="bentoml serve",
            timeout_s=READY_TIMEOUT_S,
            exit_status=proc.poll,
            logs=lambda: log_path.read_text()[-4000:],
        )
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
