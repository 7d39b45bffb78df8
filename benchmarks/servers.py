"""The servers under test: how to start each, where it is ready, and stopping it cleanly.

Each runs alone (one at a time; one worker unless its kind says otherwise, as ``bentoml-2w``) as
a subprocess in its own session on a free loopback port, so the harness can kill its whole
process tree (devtools/server_process.py, shared with the integration tests).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from devtools.server_process import LOOPBACK, bentoml_serve_command, free_port, running_server

from .model import BenchModel

READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class ServerKind:
    name: str
    description: str
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # processes that each load the model (per-worker figures divide by it)

    def command(self, model: BenchModel, port: int) -> list[str]:
        if self.name.startswith("bentoml"):
            return bentoml_serve_command(port=port)
        module = {
            "fastapi-naive": "naive_fastapi",
            "litserve": "litserve_app",
            "litserve-ours": "litserve_ours",
        }[self.name.split("+")[0]]
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
            "bentoml-2w",
            "this project's service with two workers sharing the device "
            "(BentoML workers: 2, each loads the model)",
            "/readyz",
            {"BENTOML_CONFIG_OPTIONS": "services.image_classifier.workers=2"},
            workers=2,
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
        ServerKind(
            "litserve-ours",
            "LitServe around this project's runtime (same Predictor, precision, reduced decode "
            "and largest batch as ours; batch_timeout=10 ms): the framework is the difference",
            "/health",
        ),
    )
}


def server_kind(spec: str) -> ServerKind:
    """A server by name, optionally with extra environment for an A/B run:
    ``bentoml+OMP_WAIT_POLICY=PASSIVE+CLASSIFIER_TORCH_THREADS=1`` is ``bentoml`` with those
    two variables set (the whole spec names it in the results)."""
    name, *assignments = spec.split("+")
    if name not in SERVERS:
        raise ValueError(f"unknown server {name!r}; choose from {sorted(SERVERS)}")
    extra = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{spec!r}: want NAME+VARIABLE=VALUE, not {assignment!r}")
        extra[key] = value
    kind = SERVERS[name]
    if not extra:
        return kind
    description = f"{kind.description}; with {', '.join(f'{k}={v}' for k, v in extra.items())}"
    return replace(kind, name=spec, description=description, env={**kind.env, **extra})


class RunningServer(NamedTuple):
    base_url: str
    ready_s: float  # seconds from process start until ready
    pid: int  # the server process (its workers are its descendants): for CPU accounting


@contextlib.contextmanager
def running(
    kind: ServerKind, model: BenchModel, log_path: Path, *, cpus: str | None = None
) -> Iterator[RunningServer]:
    """Start ``kind`` serving ``model``; yield ``(base_url, seconds_until_ready, pid)``.

    ``cpus`` (``taskset -c`` syntax, e.g. ``0`` or ``0,1``) pins the server and every process it
    starts to those cores: the core-scaling measurement.
    """
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    pin = ["taskset", "-c", cpus] if cpus else []
    with running_server(
        [*pin, *kind.command(model, port)],
        url=base,
        env={**os.environ, "CLASSIFIER_MODEL_TAG": model.bento_tag, **kind.env},
        log_path=log_path,
        what=kind.name,
        ready_path=kind.ready_path,
        timeout_s=READY_TIMEOUT_S,
    ) as (server, ready_s):
        yield RunningServer(base, ready_s, server.process.pid)
