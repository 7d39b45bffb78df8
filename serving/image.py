"""The container image recipe for ``bentoml containerize`` (see README, "Ship it").

The GPU image, as BentoML documents it: python:3.11-slim plus PyPI torch, which bundles its CUDA
runtime (torch 2.14.1 = CUDA 13.0: the host needs an NVIDIA driver >= 580). Without a GPU the
same image serves on the CPU. BentoML runs it as the non-root user ``bentoml``.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from .model_store import REGISTRY_MODEL_NAME

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# For builds behind a TLS-intercepting proxy: trust the PEM certificates in the EXTRA_CA_CERTS
# build secret while packages download, then restore the stock bundle, so the final image trusts
# only Debian's CAs (the public certificate stays in an intermediate layer). Inline commands:
# BentoML 1.4 drops run_script() files when bentofile.yaml is merged into the image.
TRUST_BUILD_CA = (
    "sh -c 'if [ -s /run/secrets/EXTRA_CA_CERTS ]; then "
    'grep -q "BEGIN CERTIFICATE" /run/secrets/EXTRA_CA_CERTS '
    "|| { echo EXTRA_CA_CERTS holds no PEM certificate >&2; exit 1; }; "
    f"cp {CA_BUNDLE} {CA_BUNDLE}.image-default && "
    f"cat /run/secrets/EXTRA_CA_CERTS >> {CA_BUNDLE}; fi'"
)
UNTRUST_BUILD_CA = (
    f"sh -c 'if [ -f {CA_BUNDLE}.image-default ]; then "
    f"mv {CA_BUNDLE}.image-default {CA_BUNDLE}; fi'"
)
# BentoML creates these under BENTOML_HOME at start-up unless they exist: made at build time, the
# container can run with a read-only root filesystem (tmpfs on /tmp and /home/bentoml/tmp).
_HOME_DIRS = " ".join(f"/home/bentoml/{name}" for name in ("bentos", "models", "envs", "tmp"))
BENTOML_HOME_DIRS = f"mkdir -p {_HOME_DIRS} && chown bentoml:bentoml {_HOME_DIRS}"
# Where a CLASSIFIER_MODEL_URI import lands: inside a container BentoML's store is the Bento's
# own models/ directory. Mode 1777 because a read-only container mounts a tmpfs (compose) or an
# emptyDir (Kubernetes) here, and Docker's tmpfs is root's with the mode of the directory under
# it: with 0755 the server could import only until the first `docker restart`.
REGISTRY_STORE_DIR = f"/home/bentoml/bento/models/{REGISTRY_MODEL_NAME}"
MAKE_REGISTRY_STORE_DIR = f"mkdir -p {REGISTRY_STORE_DIR} && chmod 1777 {REGISTRY_STORE_DIR}"


def image_recipe(*, requirements: Path) -> bentoml.images.Image:
    """The image: Debian + Python 3.11, the pinned serving requirements, writable BentoML dirs.

    The requirements are passed as lines, as ``Image.requirements_file`` would add them: that
    method only takes paths relative to the working directory.
    """
    pinned = requirements.read_text().rstrip("\n").split("\n")
    return (
        bentoml.images.Image(python_version="3.11", distro="debian", lock_python_packages=False)
        .run(TRUST_BUILD_CA)
        .python_packages(*pinned)
        .run(UNTRUST_BUILD_CA)
        .run(BENTOML_HOME_DIRS)
        .run(MAKE_REGISTRY_STORE_DIR)
    )


def image_envs(*, model_tag: str) -> list[dict[str, str]]:
    """The image's environment (``stage: build`` entries exist only while it builds)."""
    return [
        # PEM text of extra CA certificates for the build (a BuildKit secret, not a build arg);
        # empty by default. `make containerize EXTRA_CA_BUNDLE=/path/ca.pem` sets it.
        {"name": "EXTRA_CA_CERTS", "value": "", "stage": "build"},
        # pip (bootstrapping uv) and uv use the system trust store, where the build CA is added.
        {"name": "SSL_CERT_FILE", "value": CA_BUNDLE},
        {"name": "PIP_CERT", "value": CA_BUNDLE},
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
        # uv installs through a throw-away cache on the layer's own filesystem (hard links)
        # instead of BentoML's BuildKit cache mount, where torch's ~6 GB is copied and then
        # kept: a build needs half the disk. CI machines have run out of disk there.
        {"name": "UV_NO_CACHE", "value": "1"},
        # The image serves the model packaged at build time, whatever its name (override: -e).
        {"name": "CLASSIFIER_MODEL_TAG", "value": model_tag},
    ]
