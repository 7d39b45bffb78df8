"""Benchmark the classifier service against its in-process ceiling and its peers.

    python -m benchmarks run                 # or: make benchmark
    python -m benchmarks run --models noop --servers bentoml-fp32,bentoml --image-sizes 64x48
                                             # the framework's own ceiling (near-no-op model)
    python -m benchmarks soak                # or: make soak (10 minutes of sustained load)
    python -m benchmarks gpu                 # the prepared GPU check (torch/timm only, < 8 min)

Prepares each model (random weights, registered in a private MLflow registry, imported into a
private BentoML store under --work-dir), measures the in-process ceiling, then starts each
server alone and drives it at every concurrency. Prints the table and writes JSON + Markdown to
--out. Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("benchmarks")


def _csv(kind):
    def parse(text: str):
        return [kind(item) for item in text.split(",") if item]

    return parse


def parse_image_sizes(text: str) -> list[tuple[int, int]]:
    """``"64x48,500x375"`` -> ``[(64, 48), (500, 375)]``."""
    sizes = []
    for item in filter(None, text.split(",")):
        width, sep, height = item.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()) or min(int(width), int(height)) < 16:
            raise argparse.ArgumentTypeError(f"{item!r}: want WIDTHxHEIGHT, each at least 16")
        sizes.append((int(width), int(height)))
    if not sizes:
        raise argparse.ArgumentTypeError("no image size given")
    return sizes


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want a whole number >= 1")
    return int(text)


def parse_cpu_sets(text: str) -> list[str | None]:
    """``"0;0,1"`` -> ``["0", "0,1"]``, each set checked against the cores this process may use."""
    from .runner import parse_cpus

    sets = [item.strip() for item in text.split(";") if item.strip()]
    usable = os.sched_getaffinity(0)
    for item in sets:
        try:
            cores = parse_cpus(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: want cores like 0 or 0,1 or 0-3") from None
        if not cores or not cores <= usable:
            raise argparse.ArgumentTypeError(f"{item!r}: usable cores are {sorted(usable)}")
    if not sets:
        raise argparse.ArgumentTypeError("no core set given")
    return sets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and write the results")
    run.add_argument(
        "--models",
        type=_csv(str),
        default=["resnet50", "efficientnet_b0"],
        help="timm architectures, comma-separated; NAME@SIZE for another input size "
        "(test_resnet@32); 'noop' is the framework ceiling, a near-no-op model "
        "(test_resnet at 16x16) (default: %(default)s)",
    )
    run.add_argument(
        "--servers",
        type=_csv(str),
        default=["bentoml", "bentoml-fp32", "bentoml-nobatch", "fastapi-naive", "litserve"],
        help="servers to compare, comma-separated; NAME+VARIABLE=VALUE runs one with extra "
        "environment, e.g. bentoml+GOMP_SPINCOUNT=20000 (default: %(default)s)",
    )
    run.add_argument(
        "--concurrency",
        type=_csv(int),
        default=[1, 8, 32, 64],
        help="requests kept in flight, comma-separated (default: %(default)s)",
    )
    run.add_argument(
        "--duration",
        type=float,
        default=15.0,
        help="seconds measured per point (default: %(default)s)",
    )
    run.add_argument(
        "--warmup",
        type=float,
        default=4.0,
        help="seconds of load before each measured window (default: %(default)s)",
    )
    run.add_argument(
        "--max-requests",
        type=int,
        default=20_000,
        help="hard cap on requests per point (default: %(default)s)",
    )
    run.add_argument(
        "--images-per-size",
        type=int,
        default=8,
        help="distinct JPEGs per size (default: %(default)s)",
    )
    run.add_argument(
        "--image-sizes",
        type=parse_image_sizes,
        default=None,
        help="upload sizes WxH, comma-separated, e.g. 64x48 to isolate the framework's "
        "overhead from JPEG decode (default: 500x375,1024x768)",
    )
    run.add_argument(
        "--images-per-request",
        type=positive_int,
        default=1,
        help="images in each request's multipart body, e.g. 16 for the multi-image workload "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--cpu-sets",
        type=parse_cpu_sets,
        default=[None],
        help="run each server once per core set, pinned to it (taskset syntax, sets separated "
        "by ';', e.g. '0;0,1': the core-scaling measurement); the load generator is pinned to "
        "the remaining cores when there are any (default: not pinned)",
    )
    run.add_argument(
        "--skip-ceiling",
        action="store_true",
        help="do not measure the in-process ceiling (ratios are then omitted)",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        default=HERE / ".work",
        help="private BentoML store, MLflow registry and server logs (default: benchmarks/.work)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=HERE / "results",
        help="where the JSON and Markdown results go (default: benchmarks/results)",
    )
    soak = sub.add_parser(
        "soak", help="sustained load on our service: errors, latency drift and memory growth"
    )
    soak.add_argument(
        "--model", default="efficientnet_b0", help="as --models of run (default: %(default)s)"
    )
    soak.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight (default: %(default)s)"
    )
    soak.add_argument(
        "--duration", type=float, default=600.0, help="seconds of load (default: %(default)s)"
    )
    soak.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="seconds per measured window (default: %(default)s)",
    )
    soak.add_argument(
        "--work-dir", type=Path, default=HERE / ".work", help="as for run (default: %(default)s)"
    )
    soak.add_argument(
        "--out", type=Path, default=HERE / "results", help="where the JSON report goes"
    )
    from .gpu import __doc__ as gpu_doc
    from .gpu import add_arguments as gpu_arguments

    gpu_arguments(
        sub.add_parser(
            "gpu",
            help="the prepared GPU check: ceiling, decode, agreement (torch/timm only)",
            description=gpu_doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def soak_main(args: argparse.Namespace, tracking_uri: str) -> int:
    import json

    from . import report
    from .model import prepare_model, resolve
    from .servers import SERVERS, running
    from .soak import SoakLimits, run_soak
    from .workload import make_uploads

    uploads = make_uploads(per_size=4)
    choice = resolve(args.model)
    model = prepare_model(choice.architecture, tracking_uri, image_size=choice.image_size)
    log_path = args.work_dir / "logs" / f"soak-{args.model}.log"
    with running(SERVERS["bentoml"], model, log_path) as server:
        result = run_soak(
            server.base_url + "/classify",
            uploads,
            concurrency=args.concurrency,
            duration_s=args.duration,
            window_s=args.window,
        )
    limits = SoakLimits()
    problems = result.problems(limits)
    document = {
        "command": report.command_line(),
        "machine": report.machine(),
        "model": args.model,
        "limits": limits.__dict__,
        "result": result.as_dict(),
        "problems": problems,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{report.now().replace(':', '')}.json"
    path.write_text(json.dumps(document, indent=2))
    print(json.dumps({k: document[k] for k in ("model", "limits", "problems")}, indent=2))
    print(
        f"{result.errors} errors, memory growth {result.rss_growth_mb:.0f} MB, "
        f"p50 drift x{result.p50_drift:.2f}; written {path}"
    )
    return 1 if problems else 0


def _isolate(work_dir: Path) -> str:
    """Point BentoML and MLflow at the work dir before either is imported."""
    work_dir.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(work_dir / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    return tracking_uri


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gpu":  # needs torch/timm only: no work dir, no BentoML or MLflow
        from .gpu import run as gpu_run

        return gpu_run(args, list(sys.argv[2:] if argv is None else argv[1:]))
    # Servers run in their own sessions; turn SIGTERM into SystemExit so the `finally` blocks
    # that stop them run (Ctrl-C already raises KeyboardInterrupt).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tracking_uri = _isolate(args.work_dir.resolve())
    if args.command == "soak":
        return soak_main(args, tracking_uri)

    from .runner import run_main

    return run_main(args, tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
