"""Run INSIDE the classifier image (`python - < image_probe.py`, workdir the Bento's src/): what
the slimmed image still does. Prints one JSON object; the container tests assert on it.

- every shared library of torch and the CUDA wheels loads, except for libraries only a host
  provides (the NVIDIA driver's libcuda) or optional multi-node plugins (InfiniBand, MPI, UCX):
  no library that was kept needs one that was pruned;
- ``import torch``, a CUDA-less forward of a timm model, and the CUDA code paths' modules;
- no triton, and the compile modes refused with a message that says why.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
from pathlib import Path

import timm
import torch
import torch.backends.cudnn

from models import compiling, device
from serving.settings import ServingSettings

# Sonames the image cannot carry: the driver's (mounted by the NVIDIA Container Toolkit) and the
# optional NVSHMEM/cuFile network plugins' system libraries.
HOST_PROVIDED = {
    "libcuda.so.1",
    "libmlx5.so.1",
    "librdmacm.so.1",
    "libibverbs.so.1",
    "libmpi.so.40",
    "libpmix.so.2",
    "liboshmem.so.40",
    "libfabric.so.1",
    "libucs.so.0",
    "libucp.so.0",
}


def unloadable_libraries(site: Path) -> dict[str, str]:
    failures = {}
    for path in sorted([*site.glob("torch/lib/*.so*"), *site.glob("nvidia/*/lib/*.so*")]):
        try:
            ctypes.CDLL(str(path))
        except OSError as exc:
            missing = re.match(r"([^:]+): cannot open shared object file", str(exc))
            if not (missing and missing.group(1) in HOST_PROVIDED):
                failures[str(path.relative_to(site))] = str(exc)
    return failures


def main() -> None:
    site = Path(torch.__file__).resolve().parents[1]
    plan = device.choose_device("auto", "auto")  # no GPU here: the CPU
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, 64, 64, device=plan.device))
    try:
        ServingSettings.from_env({"CLASSIFIER_COMPILE_MODE": "reduce-overhead"})
        refusal = None
    except ValueError as exc:
        refusal = str(exc)
    report = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "site": str(site),
        "unloadable": unloadable_libraries(site),
        "forward_shape": list(logits.shape),
        "device": plan.describe(),
        "triton": importlib.util.find_spec("triton") is not None,
        "compile_refusal": refusal,
        "compile_reason": compiling.compile_unavailable_reason("max-autotune"),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
