"""Starting a server as a subprocess, waiting until it is ready, and stopping it cleanly.

The one place that does this for the integration tests and the benchmarks. Each server runs in
its own session (so its own process group) from the project root, with its output in a log
file: stopping it signals the whole group, so that the workers `bentoml serve` forks never
outlive a test or a benchmark run, and every failure message carries the end of the log, which
is where the reason a server did not come up is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
READY_PATH = "/readyz"
READY_TIMEOUT_S = 300.0
# SIGTERM first: the server drains in-flight requests and its workers exit; SIGKILL only when it
# has not finished by then.
STOP_GRACE_S = 30.0
LOG_TAIL_CHARS = 4000


class ServerExitedError(RuntimeError):
    """The server exited before it said it was ready."""


class ServerNotReadyError(TimeoutError):
    """The server was still not ready when the time ran out."""


def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it), so that servers started
    side by side (parallel test sessions, a benchmark beside the tests) never collide."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def bentoml_serve_command(*, port: int, host: str = LOOPBACK) -> list[str]:
    """`bentoml serve` for this project's service, run with the `bentoml` of the running Python's
    environment (not whichever is first on PATH)."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    return [str(bentoml_cli), "serve", "service:ImageClassifier",
            "--host", host, "--port", str(port)]  # fmt: skip


def answers_200(url: str, *, timeout_s: float = 5.0) -> bool:
    """Whether a GET of ``url`` answers 200 now; a refused or dropped connection, a timeout or
    an error status is simply "not (yet)"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(
    url: str,
    *,
    what: str,
    timeout_s: float,
    exit_status: Callable[[], int | None],
    logs: Callable[[], str],
    ready_path: str = READY_PATH,
    poll_s: float = 0.5,
    probe_timeout_s: float = 5.0,
    started_at: float | None = None,
) -> float:
    """Poll ``url`` + ``ready_path`` until it answers 200; return the seconds since
    ``started_at`` (a time.monotonic() value; default: now).

    Works for anything that serves HTTP (a process here, a container): ``exit_status`` returns
    its exit code, or None while it runs, and ``logs`` its output. Raises ServerExitedError if it
    exits first and ServerNotReadyError once ``timeout_s`` have passed since ``started_at``, each
    with ``logs()``, so the reason is in the failure message rather than in a file nobody opens.
    """
    started = time.monotonic() if started_at is None else started_at
    while True:
        code = exit_status()
        if code is not None:
            raise ServerExitedError(f"{what} exited with {code}:\n{logs()}")
        if answers_200(url + ready_path, timeout_s=probe_timeout_s):
            waited = time.monotonic() - started
            logger.info("%s ready at %s after %.1f s", what, url, waited)
            return waited
        if time.monotonic() - started > timeout_s:
            raise ServerNotReadyError(f"{what} not ready after {timeout_s}s:\n{logs()}")
        time.sleep(poll_s)


@dataclass(frozen=True)
class ServerProcess:
    """A started server: the leader of its own process group, its base URL and its log."""

    what: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float  # time.monotonic() just before the process started

    def exit_status(self) -> int | None:
        return self.process.poll()

    def log_tail(self, *, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log, headed by its path (the whole log stays there to read)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"(log {self.log_path})\n{text[-chars:]}"

    def is_ready(self, *, ready_path: str = READY_PATH, timeout_s: float = 2.0) -> bool:
        return answers_200(self.url + ready_path, timeout_s=timeout_s)

    def wait_until_ready(
        self,
        *,
        timeout_s: float = READY_TIMEOUT_S,
        ready_path: str = READY_PATH,
        poll_s: float = 0.5,
    ) -> float:
        """Wait for ``ready_path`` to answer 200; return the seconds since the process started
        (start-up time is something the benchmark reports). Raises as wait_until_ready does."""
        return wait_until_ready(
            self.url,
            what=self.what,
            timeout_s=timeout_s,
            exit_status=self.exit_status,
            logs=self.log_tail,
            ready_path=ready_path,
            poll_s=poll_s,
            started_at=self.started_at,
        )

    def signal_group(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the whole process group (the server and the workers it forked);
        nothing if the group is already gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM the group, wait up to ``grace_s`` for the server to exit, then SIGKILL what is
        left of the group (workers orphaned by a server that exited too). Returns the server's
        exit code."""
        self.signal_group(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s still running %.0f s after SIGTERM: SIGKILL", self.what, grace_s)
            code = None
        self.signal_group(signal.SIGKILL)
        return self.process.wait() if code is None else code


def start_server(
    command: Sequence[str],
    *,
    url: str,
    env: Mapping[str, str],
    log_path: Path,
    what: str,
    cwd: Path = PROJECT_ROOT,
) -> ServerProcess:
    """Start ``command`` in a new session from ``cwd``, stdout and stderr to ``log_path``, and
    return at once (without waiting for it to be ready: some tests want it to fail). ``env`` is
    the whole environment: pass ``{**os.environ, ...}`` to extend the current one."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("starting %s at %s (log %s)", what, url, log_path)
    started_at = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(what, url, process, log_path, started_at)


class ReadyServer(NamedTuple):
    server: ServerProcess
    ready_s: float  # seconds from start until the readiness URL answered 200


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    *,
    url: str,
    env: Mapping[str, str],
    log_path: Path,
    what: str,
    ready_path: str = READY_PATH,
    timeout_s: float = READY_TIMEOUT_S,
    grace_s: float = STOP_GRACE_S,
    cwd: Path = PROJECT_ROOT,
) -> Iterator[ReadyServer]:
    """Start the server, yield it once ``url`` + ``ready_path`` answers 200, and stop its whole
    process group on the way out, whatever happened (a failed start-up included)."""
    server = start_server(command, url=url, env=env, log_path=log_path, what=what, cwd=cwd)
    try:
        ready_s = server.wait_until_ready(timeout_s=timeout_s, ready_path=ready_path)
        yield ReadyServer(server, ready_s)
    finally:
        server.stop(grace_s=grace_s)
