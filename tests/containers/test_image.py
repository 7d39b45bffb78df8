"""The OCI image from `bentoml containerize`: starts, is ready, classifies like in-process."""

from __future__ import annotations

import contextlib
import subprocess
import uuid

import bentoml
import numpy as np
import requests
from PIL import Image

from devtools.server_process import wait_until_ready

from .conftest import DOCKER_CLI, inspect, run

READY_TIMEOUT_S = 240
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@contextlib.contextmanager
def running_container(env, image: str, network: str, *args: str):
    name = f"ic-test-{uuid.uuid4().hex[:8]}"
    run(
        [DOCKER_CLI, "run", "-d", "--name", name, "--network", network,
         "-p", "127.0.0.1::3000", *args, image],
        env,
    )  # fmt: skip
    try:
        published = run([DOCKER_CLI, "port", name, "3000/tcp"], env).stdout.split()[0]
        url = f"http://{published}"

        def exit_status() -> int | None:
            state = inspect(env, "container", name)["State"]
            return None if state["Running"] else state["ExitCode"]

        def logs() -> str:
            result = run([DOCKER_CLI, "logs", name], env, check=False)
            return result.stdout + result.stderr

        wait_until_ready(
            url,
            what=f"container {name}",
            timeout_s=READY_TIMEOUT_S,
            exit_status=exit_status,
            logs=logs,
            poll_s=1,
        )
        yield name, url
    finally:
        run([DOCKER_CLI, "rm", "-f", name], env, check=False)


def test_image_serves_the_packaged_model_like_in_process(
    docker_env, classifier_image, docker_network, single_label_bento, png_images
):
    from models.predictor import Predictor
    from registry.bento_import import artifact_dir

    images = png_images[::4]
    # The image's defaults (precision auto: bf16 on CPUs with native bf16) and one image per
    # batch, as the sequential requests below are served.
    predictor = Predictor.from_artifact(artifact_dir(single_label_bento), device="cpu")
    expected = [predictor.predict([Image.open(path)])[0] for path in images]
    # No CLASSIFIER_* settings: the image's defaults find the model packaged in its Bento.
    with running_container(docker_env, classifier_image, docker_network) as (name, url):
        with bentoml.SyncHTTPClient(url) as client:
            served = [client.classify(images=[Image.open(path)])[0] for path in images]
            metadata = client.metadata()
        uid = run([DOCKER_CLI, "exec", name, "id", "-u"], docker_env).stdout.strip()
    assert metadata["model"]["tag"] == str(single_label_bento.tag)
    assert metadata["device"].startswith("cpu")  # no GPU on this host: the same image, on CPU
    for want, got in zip(expected, served, strict=True):
        assert [s.label for s in want] == [s["label"] for s in got["labels"]]
        np.testing.assert_allclose(
            [s.score for s in want], [s["score"] for s in got["labels"]], atol=1e-4
        )
    assert uid != "0"


def test_image_is_gpu_capable_non_root_and_carries_no_build_secrets(
    docker_env, classifier_image, extra_ca_bundle
):
    config = inspect(docker_env, "image", classifier_image)["Config"]
    assert config["User"] not in ("", "root", "0")
    assert not any("PASSWORD" in item or "SECRET" in item for item in config["Env"])
    history = run(
        [DOCKER_CLI, "history", "--no-trunc", "--format", "{{.CreatedBy}}", classifier_image],
        docker_env,
    ).stdout
    # The build secret's content is in no layer command and no environment variable.
    secret_lines = extra_ca_bundle.read_text().splitlines()[1:3]
    for line in secret_lines:
        assert line not in history
        assert not any(line in item for item in config["Env"])
    probe = (
        f"CA = {CA_BUNDLE!r}; "
        "import torch, pathlib; print(torch.__version__, torch.version.cuda); "
        "print(pathlib.Path(CA).read_text())"
    )
    out = run(
        [DOCKER_CLI, "run", "--rm", "--network", "none", "--entrypoint", "python",
         classifier_image, "-c", probe],
        docker_env,
    ).stdout  # fmt: skip
    version_line, bundle = out.split("\n", 1)
    # PyPI's torch bundles its CUDA runtime: the image runs on a GPU host with `--gpus all`.
    assert version_line.split()[1] not in ("None", ""), version_line
    stock = run(
        [
            DOCKER_CLI,
            "run",
            "--rm",
            "python:3.11-slim",
            "cat",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        docker_env,
    ).stdout
    # The build-time CA was trusted for the downloads and removed again.
    assert bundle.strip() == stock.strip()
    for line in secret_lines:
        assert line not in bundle


def test_image_fails_fast_without_its_model(docker_env, classifier_image):
    result = subprocess.run(
        [DOCKER_CLI, "run", "--rm", "--network", "none",
         "-e", "CLASSIFIER_MODEL_TAG=no-such-model:latest", classifier_image],
        env=docker_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no-such-model" in result.stdout + result.stderr


def test_image_serves_with_a_read_only_root_filesystem_and_api_keys(
    docker_env, classifier_image, docker_network, png_images
):
    """The hardened way to run it: read-only root, writable tmpfs only where BentoML writes,
    no capabilities, no privilege escalation, API keys on."""
    hardening = [
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/bentoml/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", "CLASSIFIER_API_KEYS=deploy-key-0123456789",
    ]  # fmt: skip
    with running_container(docker_env, classifier_image, docker_network, *hardening) as (_, url):
        upload = {"images": ("a.png", png_images[0].read_bytes(), "image/png")}
        refused = requests.post(f"{url}/classify", files=upload, timeout=60)
        accepted = requests.post(
            f"{url}/classify",
            files=upload,
            headers={"Authorization": "Bearer deploy-key-0123456789"},
            timeout=60,
        )
        metrics = requests.get(f"{url}/metrics", timeout=10)
    assert refused.status_code == 401
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()[0]["labels"]
    assert metrics.status_code == 200 and "image_classifier" in metrics.text
