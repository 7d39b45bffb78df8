"""The servers under test: how to start each, where it is ready, and stopping it cleanly.

Each runs alone (one at a time, one worker) as a subprocess in its own session on a free loopback
port, so the harness can kill its whole process tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .model import BenchModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class ServerKind:
    name: str
    description: str
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)

    def command(self, model: BenchModel, port: int) -> list[str]:
        if self.name.startswith("bentoml"):
            bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
            return [bentoml_cli, "serve", "service:ImageClassifier",
                    "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        module = {"fastapi-naive": "naive_fastapi", "litserve": "litserve_app"}[self.name]
        return [sys.executable, "-m", f"benchmarks.peers.{module}",
                "--artifact", str(model.artifact_dir), "--port", str(port)]  # fmt: skip


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        ServerKind(
            "bentoml",
            "this project's service, default configuration (adaptive batching)",
            "/readyz",
        ),
        ServerKind(
            "bentoml-fp32",
            "this project's service in fp32 (CLASSIFIER_PRECISION=float32): the same "
            "precision as the peers",
            "/readyz",
            {"CLASSIFIER_PRECISION": "float32"},
        ),
        ServerKind(
            "bentoml-nobatch",
            "this project's service with adaptive batching off (CLASSIFIER_BATCHING=false)",
            "/readyz",
            {"CLASSIFIER_BATCHING": "false"},
        ),
        ServerKind(
            "fastapi-naive",
            "hand-rolled FastAPI/uvicorn, PIL + timm transform, fp32, one forward per request",
            "/healthz",
        ),
        ServerKind(
            "litserve",
            "LitServe batching (max_batch_size=8, batch_timeout=10 ms), PIL + timm transform, fp32",
            "/health",
        ),
    )
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def server_process(
    command: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    ready_url: str,
    what: str,
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[float]:
    """Run ``command`` (a server) in its own session from the project root, output to
    ``log_path``; yield the seconds it took until ``ready_url`` answered 200. On exit the whole
    process group gets SIGTERM (SIGKILL after 30 s). Raises, with the log's tail, if the server
    exits or is not ready within ``timeout_s``. Used by the benchmark and the integration tests.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not _ready(ready_url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {proc.returncode}; log {log_path}:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(
                    f"{what} not ready after {timeout_s}s; log {log_path}:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.5)
        yield time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def running(kind: ServerKind, model: BenchModel, log_path: Path) -> Iterator[tuple[str, float]]:
    """Start ``kind`` serving ``model``; yield ``(base_url, seconds_until_ready)``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with server_process(
        kind.command(model, port),
        env={**os.environ, "CLASSIFIER_MODEL_TAG": model.bento_tag, **kind.env},
        log_path=log_path,
        ready_url=base + kind.ready_path,
        what=kind.name,
    ) as ready_s:
        yield base, ready_s
