"""A prepared GPU check, one command, at most 8 minutes on a bare GPU machine:

    python -m benchmarks gpu --out benchmarks/results/gpu
    python -m benchmarks gpu --device cpu --quick --models test_resnet --out /tmp/gpu-smoke

1. Ceiling by batch size, per model and dtype (fp32, bf16 and fp16 autocast), channels_last:
   the bare forward (inputs already on the device) and end to end (PIL decode + timm eval
   transform on CPU threads, pinned host-to-device copy, forward); from the sweep, the
   recommended CLASSIFIER_MAX_BATCH_SIZE (the smallest batch within 95% of the best forward).
   Compiled: torch.compile(mode="reduce-overhead") (CUDA graphs) against eager at the batch
   sizes the service warms, with each shape's compile time.
2. Decode images/s: batched nvjpeg (torchvision.io.decode_jpeg on CUDA), bare and with the eval
   resize on the GPU, against PIL (decode, convert, resize, crop) on one and on all threads.
3. Agreement: each model fine-tuned in-process on synthetic shapes, then top-1 agreement of
   bf16/fp16 and of nvjpeg inputs with fp32 on PIL inputs, and accuracy, on held-out images.

Needs only torch, torchvision, timm, Pillow and numpy: no BentoML, MLflow or pydantic, no
network (random weights). Every section has a seconds budget inside --budget. Writes
gpu-<UTC timestamp>.json and .md to --out and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import time
from pathlib import Path

from . import report
from .gpu_report import markdown, recommended_batch_sizes

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("benchmarks.gpu")
SECTIONS = ("ceiling", "compiled", "decode", "agreement")
# Seconds and sizes. Full: the section budgets sum to 420 s (7 minutes) on a GPU, plus start-up;
# quick: a smoke run. compile_batch_sizes: the service's warm-up sizes at batch 1 (latency, where
# CUDA graphs pay most) and at CUDA_MAX_BATCH_SIZE (32).
FULL = {
    "warmup_s": 0.5, "measure_s": 1.0, "ceiling_s": 180.0, "compiled_s": 90.0, "decode_s": 30.0,
    "agreement_s": 120.0, "images_per_size": 16, "decode_batch": 64, "train_images": 2000,
    "test_images": 500, "shape_size": 288, "train_seconds": 30.0, "max_steps": 800,
    "train_batch": 64, "compile_batch_sizes": [1, 32],
}  # fmt: skip
QUICK = {
    "warmup_s": 0.0, "measure_s": 0.05, "ceiling_s": 20.0, "compiled_s": 5.0, "decode_s": 5.0,
    "agreement_s": 20.0, "images_per_size": 2, "decode_batch": 4, "train_images": 20,
    "test_images": 10, "shape_size": 64, "train_seconds": 1.0, "max_steps": 3, "train_batch": 8,
    "compile_batch_sizes": [1],
}  # fmt: skip


def _csv(kind):
    return lambda text: [kind(item) for item in text.split(",") if item]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    parser.add_argument(
        "--models",
        type=_csv(str),
        default=["resnet50", "efficientnet_b0"],
        help="timm architectures, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_csv(int),
        default=None,
        help="comma-separated (default: 1,8,32,64,128,256; with --quick 1,4)",
    )
    parser.add_argument(
        "--dtypes",
        type=_csv(str),
        default=["fp32", "bf16", "fp16"],
        help="fp32 and autocast dtypes, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--sections",
        type=_csv(str),
        default=list(SECTIONS),
        help="comma-separated (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets and sizes (smoke run)")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for all sections together, start-up excluded (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="CPU threads for PIL decode (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "gpu",
        help="where the JSON and Markdown go (default: benchmarks/results/gpu)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    import torch

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    unknown = sorted(set(args.sections) - set(SECTIONS)) + sorted(
        set(args.dtypes) - {"fp32", "bf16", "fp16"}
    )
    if unknown:
        raise SystemExit(f"unknown sections or dtypes {unknown}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda but torch sees no GPU; use --device cpu for a smoke run")
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # The CPU only decodes and transforms, one image per pool thread: one OpenMP team per
        # thread would oversubscribe the cores (docs/performance.md, two OpenMP teams).
        torch.set_num_threads(1)
    plan = dict(QUICK if args.quick else FULL)
    batch_sizes = args.batch_sizes or ([1, 4] if args.quick else [1, 8, 32, 64, 128, 256])
    results: dict = {
        "started_at": report.now(),
        "command": shlex.join(["python", "-m", "benchmarks", "gpu", *(argv or [])]),
        "device": "cpu"
        if device.type == "cpu"
        else f"{device.type} ({torch.cuda.get_device_name(device)})",
        "machine": report.machine(),
        "settings": {
            **plan,
            "models": args.models,
            "batch_sizes": batch_sizes,
            "dtypes": args.dtypes,
            "sections": args.sections,
            "threads": args.threads,
            "budget_s": args.budget,
            "quick": args.quick,
            "torch_threads": torch.get_num_threads(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        },
        "errors": [],
    }
    started = time.perf_counter()
    _measure(args, device, plan, batch_sizes, results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = "gpu-" + results["started_at"].replace(":", "").replace("-", "")
    json_path, md_path = args.out / f"{stamp}.json", args.out / f"{stamp}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    md_path.write_text(text)
    print(text)
    print(f"Written: {json_path} and {md_path}")
    return 1 if results["errors"] else 0


def _measure(args, device, plan: dict, batch_sizes: list[int], results: dict) -> None:
    """Each section in turn, inside its own budget and the whole run's; one section's failure
    is recorded and the next still runs."""
    from concurrent.futures import ThreadPoolExecutor

    from . import gpu_agreement as agree
    from . import gpu_compile
    from . import gpu_measure as measure
    from .workload import DEFAULT_SIZES, photo_like_jpeg

    total = measure.Budget.of(args.budget)
    timing = measure.Timing(plan["warmup_s"], plan["measure_s"])
    count = plan["images_per_size"]
    by_size = {
        f"{w}x{h}": [photo_like_jpeg(w, h, seed=1000 * i + w) for i in range(count)]
        for w, h in DEFAULT_SIZES
    }
    photos = [jpeg for pair in zip(*by_size.values(), strict=True) for jpeg in pair]
    pool = ThreadPoolExecutor(args.threads)
    for section in (s for s in SECTIONS if s in args.sections):
        budget = measure.Budget.of(plan[f"{section}_s"], total)
        logger.info("Section %s: %.0f s budget", section, budget.left())
        try:
            if section == "ceiling":
                results["ceiling"] = []
                for index, architecture in enumerate(args.models):
                    share = measure.Budget.of(budget.left() / (len(args.models) - index), budget)
                    model = measure.ceiling(
                        architecture, photos, device=device, batch_sizes=batch_sizes,
                        dtypes=args.dtypes, timing=timing, budget=share, pool=pool,
                    )  # fmt: skip
                    model["recommended_max_batch_size"] = recommended_batch_sizes(model)
                    results["ceiling"].append(model)
            elif section == "compiled":
                results["compiled"] = gpu_compile.compiled_section(
                    args.models, device=device, dtypes=args.dtypes, timing=timing,
                    batch_sizes=plan["compile_batch_sizes"], budget=budget,
                )  # fmt: skip
            elif section == "decode":
                results["decode"] = measure.decode(
                    by_size, device=device, config=measure.data_config(args.models[0]),
                    batch_size=plan["decode_batch"], timing=timing, budget=budget, pool=pool,
                )  # fmt: skip
            else:
                results["agreement"] = _agreement(args, device, plan, photos, budget, pool, agree)
        except Exception as error:  # record it; the other sections' figures still count
            logger.exception("Section %s failed", section)
            results["errors"].append(f"{section}: {type(error).__name__}: {error}"[:500])
    pool.shutdown()


def _agreement(args, device, plan, photos, budget, pool, agree) -> list[dict]:
    train = agree.shapes_jpegs(plan["train_images"], plan["shape_size"], seed=1, pool=pool)
    test = agree.shapes_jpegs(plan["test_images"], plan["shape_size"], seed=2, pool=pool)
    out = []
    for index, architecture in enumerate(args.models):
        share = type(budget).of(budget.left() / (len(args.models) - index), budget)
        out.append(agree.agreement(
            architecture, device=device, dtypes=args.dtypes, train=train, test=test,
            photos=photos, train_seconds=plan["train_seconds"], max_steps=plan["max_steps"],
            batch_size=plan["train_batch"], budget=share, pool=pool,
        ))  # fmt: skip
    return out
