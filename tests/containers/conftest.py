"""Real Docker: the classifier image built by `bentoml containerize`, and the compose stack.

Needs a Docker engine (DOCKER_HOST; `.ci/docker-engine install && .ci/docker-engine start`) and
Debian's Docker CLI, whose built-in BuildKit BentoML's docker backend uses. The base images the
project names upstream (python:3.11-slim, postgres, prometheus, nginx) are built locally by
`standins/build.sh`, because no registry is reachable from CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ..conftest import PROJECT_ROOT
from ..support.tools import require_tool, skip_or_fail

DOCKER_CLI = "/usr/bin/docker"  # Debian's CLI: BuildKit built in (the one in /usr/local lacks it)
ENGINE_SCRIPT = PROJECT_ROOT / ".ci" / "docker-engine"
STANDINS = Path(__file__).parent / "standins" / "build.sh"
# CLASSIFIER_TEST_IMAGE: another tag, when several checkouts share one engine.
IMAGE = os.environ.get("CLASSIFIER_TEST_IMAGE", "image-classifier:test")
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("container builds")
        for line in REPORT:
            terminalreporter.write_line(line)


def run(cmd, env, timeout=600, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def _engine_answers(env) -> bool:
    return run([DOCKER_CLI, "info"], env, check=False, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def docker_env(session_dir):
    """Environment for docker/compose/bentoml commands that reach a running engine: DOCKER_HOST
    if set, else the default socket, else (as root, with Debian's dockerd installed) a private
    engine from `.ci/docker-engine`, stopped again after the session."""
    if not Path(DOCKER_CLI).exists():
        require_tool("dockerd", "run `.ci/docker-engine install`")
    # BentoML runs whichever `docker` comes first in PATH: make that Debian's.
    shim = session_dir / "docker-cli"
    shim.mkdir(exist_ok=True)
    if not (shim / "docker").exists():
        (shim / "docker").symlink_to(DOCKER_CLI)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "DOCKER_BUILDKIT": "1"}
    started_engine = False
    can_start = "DOCKER_HOST" not in env and os.geteuid() == 0
    can_start = can_start and Path("/usr/sbin/dockerd").exists()
    if can_start and not _engine_answers(env):
        started = run([str(ENGINE_SCRIPT), "start"], env, timeout=120)
        env["DOCKER_HOST"] = started.stdout.strip().split("=", 1)[1]
        started_engine = True
    if not _engine_answers(env):
        skip_or_fail("no Docker engine: run `.ci/docker-engine install && .ci/docker-engine start`")
    yield env
    if started_engine:
        run([str(ENGINE_SCRIPT), "stop"], env, check=False, timeout=120)


@pytest.fixture(scope="session")
def standin_images(docker_env) -> None:
    require_tool("debootstrap", "run `.ci/docker-engine install`")
    run(["bash", str(STANDINS)], docker_env, timeout=900)


def _pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


@pytest.fixture(scope="session")
def extra_ca_bundle(docker_env, standin_images, session_dir) -> Path:
    """The CA certificates this host trusts beyond Debian's stock bundle (a TLS-intercepting
    proxy's, on the CI machines): exactly what a user behind such a proxy passes to the build."""
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    stock = run(
        [DOCKER_CLI, "run", "--rm", "python:3.11-slim", "cat", str(host)], docker_env
    ).stdout
    trusted = host.read_text() if host.exists() else ""
    extra = [pem for pem in _pem_blocks(trusted) if pem not in set(_pem_blocks(stock))]
    path = session_dir / "extra-ca.pem"
    if extra:
        path.write_text("\n".join(extra) + "\n")
    else:
        # No proxy here: a throw-away CA still exercises the option (trusted, then removed).
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=image-classifier test build CA", "-keyout", os.devnull,
             "-out", str(path)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return path


def image_size_gb(env, image: str) -> float:
    size = run([DOCKER_CLI, "image", "inspect", "-f", "{{.Size}}", image], env).stdout
    return int(size) / 1e9


def build_classifier_image(env, *, model_tag: str, image: str, extra_ca_bundle: Path) -> str:
    """`make bento` + `make containerize` for ``model_tag`` into ``image`` (the README's
    commands); returns the Bento's tag."""
    env = {**env, "CLASSIFIER_MODEL_TAG": model_tag}
    built = run(["make", "--no-print-directory", "bento"], env, timeout=600)
    bento_tag = re.search(r'Successfully built Bento\(tag="([^"]+)"\)', built.stdout + built.stderr)
    assert bento_tag, built.stdout + built.stderr
    make_args = [
        f"BENTO={bento_tag.group(1)}",
        f"IMAGE={image}",
        "CONTAINERIZE_OPTS=--opt network=host",
        f"EXTRA_CA_BUNDLE={extra_ca_bundle}",
    ]
    previous = run([DOCKER_CLI, "images", "-q", image], env).stdout.strip()
    run(["make", "--no-print-directory", "containerize", *make_args], env, timeout=1800)
    if previous and previous != run([DOCKER_CLI, "images", "-q", image], env).stdout.strip():
        # The last run's test image (~5 GB), now untagged: don't let repeated runs fill the disk.
        run([DOCKER_CLI, "rmi", previous], env, check=False)
    return bento_tag.group(1)


@pytest.fixture(scope="session")
def classifier_image(docker_env, standin_images, extra_ca_bundle, single_label_bento) -> str:
    started = time.monotonic()
    bento_tag = build_classifier_image(
        docker_env,
        model_tag=str(single_label_bento.tag),
        image=IMAGE,
        extra_ca_bundle=extra_ca_bundle,
    )
    REPORT.append(
        f"{IMAGE} (bento {bento_tag}): built in {time.monotonic() - started:.0f} s "
        f"(bentoml build + containerize), {image_size_gb(docker_env, IMAGE):.2f} GB"
    )
    return IMAGE


def compressed_size(env, image: str) -> int:
    """Bytes of ``docker save`` through ``gzip -1``: about what pulling the image transfers
    (registries store each layer gzip-compressed; their default level packs a little tighter)."""
    result = run(
        ["bash", "-o", "pipefail", "-c", f"{DOCKER_CLI} save {image} | gzip -1 | wc -c"],
        env,
        timeout=900,
    )
    return int(result.stdout.strip())


@pytest.fixture(scope="session")
def classifier_image_sizes(docker_env, classifier_image) -> dict[str, float]:
    """The image's size in GB: ``uncompressed`` (`docker image inspect` .Size, what it takes on
    the host) and ``compressed`` (what a user pulls), reported in the session summary."""
    sizes = {
        "uncompressed": image_size_gb(docker_env, classifier_image),
        "compressed": compressed_size(docker_env, classifier_image) / 1e9,
    }
    REPORT.append(
        f"{classifier_image} size: {sizes['uncompressed']:.2f} GB uncompressed, "
        f"{sizes['compressed']:.2f} GB compressed (docker save | gzip -1)"
    )
    return sizes


@pytest.fixture(scope="session")
def mlflow_image(docker_env, standin_images, extra_ca_bundle) -> str:
    started = time.monotonic()
    args = [f"EXTRA_CA_BUNDLE={extra_ca_bundle}"]
    make = ["make", "--no-print-directory", "mlflow-image", f"DOCKER={DOCKER_CLI}"]
    run([*make, "DOCKER_BUILD_OPTS=--network host", *args], docker_env)
    image = "image-classifier-mlflow:3.17.2"
    REPORT.append(
        f"{image}: built in {time.monotonic() - started:.0f} s, "
        f"{image_size_gb(docker_env, image):.2f} GB"
    )
    return image


@pytest.fixture
def docker_network(docker_env):
    """A user-defined network: these engines run without the default bridge."""
    name = f"ic-test-{uuid.uuid4().hex[:8]}"
    run([DOCKER_CLI, "network", "create", name], docker_env)
    yield name
    run([DOCKER_CLI, "network", "rm", name], docker_env, check=False)


def inspect(env, kind: str, name: str) -> dict:
    return json.loads(run([DOCKER_CLI, kind, "inspect", name], env).stdout)[0]
