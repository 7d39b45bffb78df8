"""The OCI image from `bentoml containerize`: starts, is ready, classifies like in-process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import bentoml
import numpy as np
import requests
from PIL import Image

from devtools.server_process import wait_until_ready

from .conftest import DOCKER_CLI, REPORT, build_classifier_image, inspect, run

READY_TIMEOUT_S = 240
# The plan's bound: from `docker run` to /readyz 200, model load and warm-up included.
START_UP_BOUND_S = 60
# docs/image.md: 4.56 GB measured before MLflow's client and pandas joined the image (for
# CLASSIFIER_MODEL_URI, about 0.1 GB); a margin for the model and packaging noise, not for a
# new 200 MB library.
UNCOMPRESSED_BUDGET_GB = 4.8
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PROBE = Path(__file__).with_name("image_probe.py")
BENTO_SRC = "/home/bentoml/bento/src"


class Running(NamedTuple):
    name: str
    url: str
    ready_s: float  # from `docker run` to /readyz answering 200


@contextlib.contextmanager
def running_container(env, image: str, network: str, *args: str):
    name = f"ic-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
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

        ready_s = wait_until_ready(
            url,
            what=f"container {name}",
            timeout_s=READY_TIMEOUT_S,
            exit_status=exit_status,
            logs=logs,
            poll_s=0.5,
            started_at=started,
        )
        yield Running(name, url, ready_s)
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
    with running_container(docker_env, classifier_image, docker_network) as (name, url, ready_s):
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
    REPORT.append(
        f"{classifier_image}: ready {ready_s:.1f} s after `docker run` "
        f"(packaged model; bound {START_UP_BOUND_S} s)"
    )
    assert ready_s < START_UP_BOUND_S


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
    with running_container(docker_env, classifier_image, docker_network, *hardening) as (_, url, _):
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


def test_image_carries_no_compilers_git_or_triton_and_torch_still_works(
    docker_env, classifier_image
):
    """What the diet removed is gone; what serving needs, on CPU and on CUDA, still loads."""
    tools = run(
        [DOCKER_CLI, "run", "--rm", "--network", "none", "--entrypoint", "sh", classifier_image,
         "-c", "for tool in gcc cc g++ make git; do command -v $tool; done; true"],
        docker_env,
    ).stdout  # fmt: skip
    assert tools.strip() == ""
    probe = run(
        [DOCKER_CLI, "run", "--rm", "-i", "--network", "none", "--workdir", BENTO_SRC,
         "--entrypoint", "python", classifier_image, "-"],
        docker_env,
        input=PROBE.read_text(),
    ).stdout  # fmt: skip
    report = json.loads(probe.strip().splitlines()[-1])
    assert report["torch_cuda"] and report["cudnn"], report  # the CUDA build, cuDNN loads
    assert not report["cuda_available"] and report["device"].startswith("cpu")
    assert report["forward_shape"] == [2, 3]
    # Every kept library loads: nothing torch links was pruned (libcuda: the host's driver).
    assert report["unloadable"] == {}, report["unloadable"]
    assert report["site"] == "/opt/torch-cuda"  # the pruned layer of serving/image.py
    assert not report["triton"]
    for refusal in (report["compile_refusal"], report["compile_reason"]):
        assert refusal and "needs triton" in refusal and "'off'" in refusal, refusal
    assert "CLASSIFIER_COMPILE_MODE" in report["compile_refusal"]


def test_image_size_is_reported_and_within_budget(classifier_image_sizes):
    assert classifier_image_sizes["uncompressed"] <= UNCOMPRESSED_BUDGET_GB
    assert classifier_image_sizes["compressed"] < classifier_image_sizes["uncompressed"]


def test_a_new_model_rebuilds_only_the_last_layers(
    docker_env, classifier_image, docker_network, extra_ca_bundle, single_label_bento
):
    """Change only the model: every layer up to the Bento's copy comes from the build cache
    (same layer digests), and the new image serves the new model with no CLASSIFIER_MODEL_TAG."""
    from registry.bento_import import import_from_mlflow

    # The same registered version imported under another name: a new tag, nothing else new.
    other, _ = import_from_mlflow("models:/shapes-single@champion", bento_name="shapes-relayer")
    image = f"{classifier_image}-relayer"
    started = time.monotonic()
    build_classifier_image(
        docker_env, model_tag=str(other.tag), image=image, extra_ca_bundle=extra_ca_bundle
    )
    rebuilt_s = time.monotonic() - started
    try:
        before = inspect(docker_env, "image", classifier_image)["RootFS"]["Layers"]
        after = inspect(docker_env, "image", image)["RootFS"]["Layers"]
        shared = next(
            (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
            min(len(before), len(after)),
        )
        REPORT.append(
            f"{image} (new model {other.tag}): rebuilt in {rebuilt_s:.0f} s, "
            f"{shared} of {len(after)} layers from the cache"
        )
        assert len(before) == len(after)
        # Only the Bento's copy (code, configuration, model) and the entrypoint's chmod differ.
        assert shared >= len(after) - 2, (shared, len(after))
        with (
            running_container(docker_env, image, docker_network) as (_, url, _),
            bentoml.SyncHTTPClient(url) as client,
        ):
            metadata = client.metadata()
        assert metadata["model"]["tag"] == str(other.tag)
    finally:
        run([DOCKER_CLI, "rmi", image], docker_env, check=False)
