"""``python -m benchmarks run``: each model's ceiling, then each server alone at every concurrency.

Per load point: throughput, latency percentiles, errors, and the CPU time per request of the
server's process tree and of the load generator, both over the measured window only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os

logger = logging.getLogger("benchmarks")


def _images_setting(uploads, sizes) -> str:
    return f"{len(uploads)} photo-like JPEGs, " + " and ".join(f"{w}x{h}" for w, h in sizes)


def parse_cpus(text: str) -> set[int]:
    """``"0"``, ``"0,1"`` or ``"0-3"`` (taskset's list syntax) -> the set of core numbers."""
    cores: set[int] = set()
    for item in filter(None, text.split(",")):
        first, _, last = item.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


@contextlib.contextmanager
def client_pinned_apart(server_cpus: str | None):
    """Pin the calling thread (the load generator's event loop) to the cores the server was not
    given, when there are any; otherwise the client shares the server's cores and its CPU time
    is accounted for in the report instead."""
    before = os.sched_getaffinity(0)
    others = before - parse_cpus(server_cpus) if server_cpus else set()
    if others:
        os.sched_setaffinity(0, others)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _measure_server(args, runtime, entry, model, name, cpus, requests, uploads, steps) -> dict:
    """Start one server (pinned to ``cpus`` when given) and drive it at every concurrency."""
    from . import ceiling as ceilings
    from .loadgen import run_load
    from .servers import running, server_kind

    label = entry["name"]
    log_path = args.work_dir / "logs" / f"{label}-{name}{'-cpus' + cpus if cpus else ''}.log"
    kind = server_kind(name)
    server = {"name": name, "cpus": cpus, "workers": kind.workers, "points": []}
    ceiling = None
    if not args.skip_ceiling:
        server["ceiling"] = ceilings.adjacent(runtime, uploads, entry["ceiling"]["best_batch_size"])
        ceiling = server["ceiling"]["ceiling_images_per_s"]
    with running(kind, model, log_path, cpus=cpus) as started:
        server["ready_s"] = round(started.ready_s, 1)
        for concurrency in args.concurrency:
            where = f" cpus {cpus}" if cpus else ""
            steps.set_postfix_str(f"{label} {name}{where} C={concurrency}")
            with client_pinned_apart(cpus):
                result = asyncio.run(
                    run_load(
                        started.base_url + "/classify",
                        requests,
                        concurrency,
                        args.duration,
                        warmup_s=args.warmup,
                        max_requests=args.max_requests,
                        server_pid=started.pid,
                    )
                )
            point = result.summary()
            point["ratio_to_ceiling"] = (
                round(point["images_per_s"] / ceiling, 3) if ceiling else None
            )
            server["points"].append(point)
            steps.update()
            logger.info("%s %s%s C=%d: %s", label, name, where, concurrency, point)
    return server


def run_main(args: argparse.Namespace, tracking_uri: str) -> int:
    from tqdm import tqdm

    from . import ceiling as ceilings
    from . import report
    from .model import prepare_model, resolve
    from .servers import server_kind
    from .targets import evaluate
    from .workload import DEFAULT_SIZES, bundle, make_uploads

    try:
        kinds = {spec: server_kind(spec) for spec in args.servers}
        choices = [resolve(name) for name in args.models]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    sizes = tuple(args.image_sizes or DEFAULT_SIZES)
    uploads = make_uploads(sizes, per_size=args.images_per_size)
    requests = bundle(uploads, args.images_per_request)
    results = {
        "started_at": report.now(),
        "command": report.command_line(),
        "machine": report.machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "images": _images_setting(uploads, sizes),
            "images_per_request": args.images_per_request,
            "cpu_sets": args.cpu_sets,
        },
        "servers": {spec: kind.description for spec, kind in kinds.items()},
        "models": [],
    }
    steps = tqdm(
        total=len(choices) * len(args.servers) * len(args.cpu_sets) * len(args.concurrency),
        desc="load points",
        unit="point",
    )
    from serving.runtime import build_runtime, warmup_batch_sizes
    from serving.settings import ServingSettings
    from serving.torch_thread import TorchThread

    # Every torch call of this process on one thread, as in the service: preparing a model on
    # the main thread and running it on another made the ceiling ~2.5x slower than served.
    torch_thread = TorchThread()
    for choice in choices:
        label = choice.name
        model = torch_thread.call(
            prepare_model, choice.architecture, tracking_uri, image_size=choice.image_size
        )
        entry = {
            "name": label,
            "architecture": choice.architecture,
            "framework_ceiling": choice.framework_ceiling,
            "bento_tag": model.bento_tag,
            "servers": [],
        }
        # The same runtime the service builds, from the same (default) settings.
        settings = ServingSettings.from_env()
        runtime = build_runtime(settings, model.artifact_dir, torch_thread=torch_thread)
        entry["plan"] = runtime.predictor.plan.describe()
        input_size = tuple(runtime.predictor.spec.preprocessing.input_size)
        entry["input_size"] = list(input_size)
        entry["forward_ms_p50"] = ceilings.forward_ms(runtime)
        entry["description"] = ceilings.describe_model(
            choice, entry["forward_ms_p50"], input_size, entry["plan"]
        )
        if not args.skip_ceiling:
            logger.info("Measuring the in-process ceiling of %s", label)
            entry["ceiling"] = ceilings.sweep(
                runtime, uploads, batch_sizes=warmup_batch_sizes(2 * runtime.max_batch_size)
            )
        for name in args.servers:
            for cpus in args.cpu_sets:
                entry["servers"].append(
                    _measure_server(
                        args, runtime, entry, model, name, cpus, requests, uploads, steps
                    )
                )
        runtime.close()
        del runtime
        gc.collect()
        entry["targets"] = evaluate(entry)
        results["models"].append(entry)
    steps.close()
    json_path, md_path = report.write(results, args.out)
    print(report.markdown(results))
    print(f"Written: {json_path} and {md_path}")
    return 0
