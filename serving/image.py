"""The container image recipe for ``bentoml containerize`` (see README, "Ship it"; docs/image.md).

The GPU image, as BentoML documents it: python:3.11-slim plus PyPI torch, which bundles its CUDA
runtime (torch 2.14.1 = CUDA 13.0: the host needs an NVIDIA driver >= 580). Without a GPU the
same image serves on the CPU. BentoML runs it as the non-root user ``bentoml``.

What the image leaves out of PyPI's torch stack (each removal measured in docs/image.md):

- BentoML's default system packages (build-essential, git, gnupg2): every package in
  ``requirements-serve.lock`` is a wheel or pure Python, nothing is compiled at build time.
- ``triton`` (torch.compile's GPU code generator): the serving lock never lists it, and
  ``CLASSIFIER_COMPILE_MODE`` other than ``off`` is refused without it (models/compiling.py).
- Files of torch and the NVIDIA wheels that single-process inference neither links nor dlopens
  (``PRUNED_PATHS``). Every library ``libtorch_cuda.so`` links (cuDNN, cuBLAS, NCCL, cuSPARSELt,
  NVSHMEM's host library, ...) stays. One deliberate loss: cuSOLVER and torch's lazily loaded
  ``libtorch_cuda_linalg.so``, i.e. ``torch.linalg`` decompositions on CUDA (not on the CPU),
  which no classifier's forward uses.

Files can only be removed in the RUN step that installs them (a later layer would hide them but
not shrink the image), and BentoML's own install step cannot be extended. So torch, torchvision
and the CUDA wheels are installed, and pruned, by one command of ours into ``TORCH_DIR`` (a
layer that changes only when their pins do), which a ``.pth`` file puts on the venv's path;
BentoML's step installs the rest of the lock into its venv. Both install exactly the lock
(``--no-deps``): it is complete, generated from the project's resolved environment.

Layer order: everything up to BentoML's final ``COPY . ./`` (the Bento: code, configuration and
the model) depends only on this recipe and the lock, so a new model rebuilds the last layers only.
No environment variable may carry the model's tag: ENV lines come first in BentoML's Dockerfile.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import bentoml

from .model_store import REGISTRY_MODEL_NAME

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PYTHON_VERSION = "3.11"
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

# torch, torchvision and the CUDA wheels: their own directory and layer (see the module docstring).
TORCH_DIR = "/opt/torch-cuda"
TORCH_PACKAGE_PREFIXES = ("torch==", "torchvision==", "nvidia-", "cuda-")
# Under TORCH_DIR; none is linked by torch's libraries or preloaded by ``import torch``
# (``readelf -d torch/lib/*.so``, torch/__init__.py ``_preload_cuda_deps``).
PRUNED_PATHS = (
    "torch/include",  # C++ headers for building extensions (and inductor's CPU code)
    "nvidia/*/include",  # CUDA headers
    "nvidia/cu13/lib/*.a",  # static libraries
    # cuSOLVER (dense decompositions: torch.linalg on CUDA) and the library torch loads it from,
    # lazily, on the first such call; a classifier's forward never makes one.
    "torch/lib/libtorch_cuda_linalg.so",
    "nvidia/cu13/lib/libcusolver.so.*",
    "nvidia/cu13/lib/libcusolverMg.so.*",
    "nvidia/cu13/lib/libnvrtc.alt.so.*",  # the alternative NVRTC build; torch loads libnvrtc
    "nvidia/cu13/lib/libnvrtc-builtins.alt.so.*",
    "nvidia/cu13/lib/libnvperf_host.so",  # CUPTI's profiling add-ons (libcupti itself stays)
    "nvidia/cu13/lib/libnvperf_target.so",
    "nvidia/cu13/lib/libpcsamplingutil.so",
    "nvidia/cu13/lib/libcheckpoint.so",
    "nvidia/cu13/lib/libcufftw.so.*",  # FFTW and BLAS drop-in interfaces for C programs
    "nvidia/cu13/lib/libnvblas.so.*",
    "nvidia/nvshmem/lib/libnvshmem_device.*",  # device bitcode for kernels linked at build time
    "nvidia/nccl/lib/libnccl_device.bc",
)
# torch's own libraries and NCCL ship their full symbol tables (226 MB; the CUDA wheels' others
# are stripped already). `strip --strip-unneeded` keeps the dynamic symbols that linking and
# dlopen use, as Debian does for its packages; C++ backtraces show fewer function names.
STRIPPED_LIBRARIES = ("torch/lib/*.so", "nvidia/nccl/lib/libnccl.so.*")
# binutils (for strip) is installed and purged within the same RUN: no trace in the image.
_WITH_STRIP = "apt-get update -qq && apt-get install -qq -y --no-install-recommends binutils"
_WITHOUT_STRIP = (
    "apt-get purge -qq -y --auto-remove binutils && apt-get clean && rm -rf /var/lib/apt/lists/*"
)
# uv's system-wide configuration: BentoML's `uv pip install -r requirements.txt` installs exactly
# the lock; resolving torchvision's dependencies again would reinstall torch into the venv.
UV_NO_DEPS = "mkdir -p /etc/uv && printf '[pip]\\nno-deps = true\\n' > /etc/uv/uv.toml"
# BentoML's Debian default (apt-get install build-essential git gnupg2 ...): nothing needs it.
_BENTOML_DEFAULT_APT = "apt-get update && apt-get install"


class RuntimeImage(bentoml.images.Image):
    """BentoML's image without the build tools it adds to every Debian image.

    ``Image.__attrs_post_init__`` inserts them as the first command, and BentoML runs it again
    whenever it copies the image (``attrs.evolve``, when bentofile.yaml is merged in), so the
    removal lives here rather than after construction.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.commands[:] = [c for c in self.commands if not c.startswith(_BENTOML_DEFAULT_APT)]


def read_pins(requirements: Path) -> list[str]:
    """The ``name==version`` lines of a lock file (comments dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if "==" in line]


def is_torch_package(pin: str) -> bool:
    return pin.lower().startswith(TORCH_PACKAGE_PREFIXES)


def install_torch_command(*, pins: list[str]) -> str:
    """One RUN: install torch and its CUDA wheels into ``TORCH_DIR``, then drop the unused files."""
    packages = " ".join(shlex.quote(pin) for pin in pins)
    pruned = " ".join(f"{TORCH_DIR}/{path}" for path in PRUNED_PATHS)
    stripped = " ".join(f"{TORCH_DIR}/{path}" for path in STRIPPED_LIBRARIES)
    return (
        "pip install --no-cache-dir uv && "
        f"uv pip install --python python{PYTHON_VERSION} --target {TORCH_DIR} --no-deps "
        f"--compile-bytecode {packages} && "
        f"rm -rf {pruned} {TORCH_DIR}/bin && "
        f"{_WITH_STRIP} && strip --strip-unneeded {stripped} && {_WITHOUT_STRIP}"
    )


def torch_on_venv_path() -> str:
    site = f"/app/.venv/lib/python{PYTHON_VERSION}/site-packages"
    return f"echo {TORCH_DIR} > {site}/torch-cuda.pth"


def image_recipe(*, requirements: Path) -> bentoml.images.Image:
    """The image: Debian + Python 3.11, the pinned serving requirements, writable BentoML dirs.

    The requirements are passed as lines, as ``Image.requirements_file`` would add them: that
    method only takes paths relative to the working directory.
    """
    pins = read_pins(requirements)
    return (
        RuntimeImage(python_version=PYTHON_VERSION, distro="debian", lock_python_packages=False)
        .run(TRUST_BUILD_CA)
        .run(UV_NO_DEPS)
        .run(install_torch_command(pins=[pin for pin in pins if is_torch_package(pin)]))
        .python_packages(*[pin for pin in pins if not is_torch_package(pin)])
        .run(UNTRUST_BUILD_CA)
        .run(f"{torch_on_venv_path()} && {BENTOML_HOME_DIRS} && {MAKE_REGISTRY_STORE_DIR}")
    )


def image_envs() -> list[dict[str, str]]:
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
    ]
