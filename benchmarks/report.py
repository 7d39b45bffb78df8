"""Results: the machine, the table, the targets; printed and written as JSON + Markdown."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "bentoml", "litserve", "fastapi", "uvicorn", "pillow")


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "os": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def command_line() -> str:
    """The command, with the environment variables that change what is measured in front."""
    tuning = [f"{key}={value}" for key, value in tuning_environment().items()]
    return shlex.join([*tuning, "python", "-m", "benchmarks", *sys.argv[1:]])


TUNING_PREFIXES = ("CLASSIFIER_", "OMP_", "GOMP_", "KMP_", "MKL_", "BENTOML_CONFIG")


def tuning_environment() -> dict[str, str]:
    """Variables the servers inherit that change performance (threads, OpenMP waiting, our
    settings): a run made with them says so in its command."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(TUNING_PREFIXES)}


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def server_label(server: dict) -> str:
    """The server's name, and the cores it was pinned to when it was."""
    return f"{server['name']} (cores {server['cpus']})" if server.get("cpus") else server["name"]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmark results, {results['started_at']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"GPU: {m['gpu'] or 'none'}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
        f"Load: {results['settings']['duration_s']} s measured per point after "
        f"{results['settings']['warmup_s']} s warm-up, closed loop, "
        f"{results['settings'].get('images_per_request', 1)} image(s) per request, "
        f"{results['settings']['images']}.",
        "",
    ]
    for model in results["models"]:
        lines += [f"## {model.get('name', model['architecture'])}", ""]
        if model.get("description"):
            lines += [f"Model: {model['description']}.", ""]
        lines += [f"Model runs on {model['plan']}.", ""]
        if c := model.get("ceiling"):
            lines += [
                f"Ceiling (in-process, same model and preprocessing): "
                f"**{c['ceiling_images_per_s']} img/s** at batch {c['best_batch_size']} "
                f"(by batch size: {c['images_per_s_by_batch']}); single image "
                f"{c['single_image_ms_p50']} ms (decode + preprocess + forward, p50).",
                "Re-measured right before each server (×ceiling uses this one): "
                + ", ".join(
                    f"{server_label(s)} {s['ceiling']['ceiling_images_per_s']} img/s / "
                    f"{s['ceiling']['single_image_ms_p50']} ms"
                    for s in model["servers"]
                    if s.get("ceiling")
                )
                + ".",
                "",
            ]
        lines += [
            "| server | C | req/s | img/s | × ceiling | p50 ms | p90 ms | p99 ms "
            "| server CPU ms/req | client CPU ms/req | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for server in model["servers"]:
            for point in server["points"]:
                errors = ", ".join(f"{k}: {v}" for k, v in point["errors"].items()) or "0"
                lines.append(
                    f"| {server_label(server)} | {point['concurrency']} | "
                    f"{_fmt(point['throughput_rps'])} | {_fmt(point.get('images_per_s'))} | "
                    f"{_fmt(point['ratio_to_ceiling'], 2)} | "
                    f"{_fmt(point['p50_ms'])} | {_fmt(point['p90_ms'])} | "
                    f"{_fmt(point['p99_ms'])} | "
                    f"{_fmt(point.get('server_cpu_ms_per_request'), 2)} | "
                    f"{_fmt(point.get('client_cpu_ms_per_request'), 2)} | {errors} |"
                )
        lines += [
            "",
            "CPU ms/req: CPU time (user + system) over the measured window divided by the "
            "requests completed in it; server: the server process and all its workers; client: "
            "the load generator.",
            "",
            "Start-up (process start to ready): "
            + ", ".join(f"{server_label(s)} {s['ready_s']:.1f} s" for s in model["servers"]),
            "",
        ]
        if model.get("targets"):
            lines += ["| target | measured | met |", "|---|---|---|"]
            for target in model["targets"]:
                met = {True: "yes", False: "**no**", None: "n/a"}[target["met"]]
                lines.append(f"| {target['target']} | {target['measured']} | {met} |")
            lines.append("")
    lines += ["Servers:", ""] + [
        f"- `{name}`: {description}" for name, description in results["servers"].items()
    ]
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started_at"].replace(":", "").replace("-", "")
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
