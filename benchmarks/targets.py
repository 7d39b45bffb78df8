"""The performance targets (issues 4 and 12), checked against one run's numbers.

Each model entry of a run is checked on its own; a target whose inputs the run did not measure
(a server not run, no ceiling, no second core set) is left out rather than guessed.
"""

from __future__ import annotations

from .runner import parse_cpus

OURS = "bentoml"
# Our service's configurations judged against the targets: the default, and several workers
# with one share of the cores each (docs/performance.md, "Defaults, and when to change them").
OUR_CONFIGURATIONS = (OURS, "bentoml-2w")
FAIR_PEER = "litserve-ours"  # LitServe around our own runtime: the framework is the difference
SATURATION_RATIO = 0.9
NAIVE_SPEEDUP_AT_32 = 2.0
FAIR_PEER_SPEEDUP_AT_32 = 1.2
SINGLE_LATENCY_SLACK = 1.10
SINGLE_LATENCY_SLACK_MS = 2.0  # within max(10%, 2 ms) of the in-process single image
MULTI_IMAGE_COST_RATIO = 1.2  # an N-image request vs N images at batch N in-process
CORE_SCALING = 1.8  # the 2-core run vs the 1-core run
# The near-no-op model (--models noop): BentoML's users' figure for a no-op service.
NOOP_RPS_PER_WORKER = 600


def _server(entry: dict, name: str, cpus: str | None = None) -> dict:
    return next((s for s in entry["servers"] if s["name"] == name and s.get("cpus") == cpus), {})


def _points(entry: dict, name: str, cpus: str | None = None) -> dict[int, dict]:
    return {p["concurrency"]: p for p in _server(entry, name, cpus).get("points", [])}


def _images_per_request(points: dict[int, dict]) -> int:
    return next(iter(points.values()), {}).get("images_per_request", 1)


def _target(text: str, measured: str, met: bool | None) -> dict:
    return {"target": text, "measured": measured, "met": met}


def _framework_ceiling(entry: dict) -> list[dict]:
    """The near-no-op model: the best of our service's configurations (``bentoml*``, unpinned)
    against BentoML's no-op figure, per worker, with its CPU per request."""
    ours = [(s, p) for s in entry["servers"] if s["name"].startswith(OURS) and not s.get("cpus")
            for p in s["points"]]  # fmt: skip
    if not entry.get("framework_ceiling") or not ours:
        return []
    server, best = max(ours, key=lambda item: item[1]["throughput_rps"] / item[0].get("workers", 1))
    per_worker = best["throughput_rps"] / server.get("workers", 1)
    cpu_ms = best.get("server_cpu_ms_per_request")
    cpu = "" if cpu_ms is None else f", server CPU {cpu_ms:.2f} ms/request"
    return [
        _target(
            f"near-no-op model: >= {NOOP_RPS_PER_WORKER} req/s per worker at saturation",
            f"{per_worker:.1f} req/s per worker ({server['name']}, {server.get('workers', 1)} "
            f"worker(s), C={best['concurrency']}){cpu}",
            per_worker >= NOOP_RPS_PER_WORKER,
        )
    ]


def _client_adjusted_rps(point: dict, cores: int) -> float:
    """Throughput as if the load generator had not shared the server's cores: scaled by the
    cores the server had over the cores left to it (the client's measured CPU taken out)."""
    client_cores = (point.get("client_cpu_s") or 0.0) / max(point["duration_s"], 1e-9)
    return point["throughput_rps"] * cores / max(cores - client_cores, 1e-9)


def _core_scaling(entry: dict) -> list[dict]:
    """Each server run pinned to one core and to two: the 2-core run >= 1.8x the 1-core run."""
    targets = []
    by_name: dict[str, dict[int, dict]] = {}
    for server in entry["servers"]:
        if server.get("cpus") and server["points"]:
            cores = len(parse_cpus(server["cpus"]))
            by_name.setdefault(server["name"], {})[cores] = server
    for name, runs in by_name.items():
        if 1 not in runs or 2 not in runs:
            continue
        one = max(runs[1]["points"], key=lambda p: p["throughput_rps"])
        two = max(runs[2]["points"], key=lambda p: p["throughput_rps"])
        adjusted = _client_adjusted_rps(two, 2)
        ratio = adjusted / max(one["throughput_rps"], 1e-9)
        targets.append(
            _target(
                f"{name}: 2 cores >= {CORE_SCALING}x 1 core (client pinned apart on 1 core; "
                "its CPU taken out on 2)",
                f"{one['throughput_rps']:.1f} req/s on 1 core, {two['throughput_rps']:.1f} on 2 "
                f"({adjusted:.1f} without the client's CPU) = {ratio:.2f}x",
                ratio >= CORE_SCALING,
            )
        )
    return targets


def _multi_image(entry: dict, ours: dict[int, dict]) -> list[dict]:
    """An N-image request at C=1 against N images at batch N in-process (decode + forward)."""
    images = _images_per_request(ours)
    by_batch = (entry.get("ceiling") or {}).get("images_per_s_by_batch", {})
    if images <= 1 or 1 not in ours or str(images) not in by_batch:
        return []
    in_process_ms = 1000.0 * images / by_batch[str(images)]
    served_ms = ours[1]["p50_ms"]
    ratio = served_ms / in_process_ms
    return [
        _target(
            f"a {images}-image request costs <= {MULTI_IMAGE_COST_RATIO}x {images} images "
            f"in-process (batch {images})",
            f"{served_ms:.1f} ms (p50, C=1) vs {in_process_ms:.1f} ms = {ratio:.2f}x",
            ratio <= MULTI_IMAGE_COST_RATIO,
        )
    ]


def _speedup(ours: dict, other: dict, factor: float, label: str) -> list[dict]:
    if 32 not in ours or 32 not in other:
        return []
    speedup = ours[32]["throughput_rps"] / max(other[32]["throughput_rps"], 1e-9)
    return [
        _target(
            f">= {factor}x {label} at C=32",
            f"{ours[32]['throughput_rps']:.1f} / {other[32]['throughput_rps']:.1f} = "
            f"{speedup:.2f}x",
            speedup >= factor,
        )
    ]


def _latency_and_saturation(entry: dict, ours: dict[int, dict], name: str) -> list[dict]:
    # The ceiling measured right before our server ran (the machine drifts over minutes).
    ceiling = _server(entry, name).get("ceiling") or {}
    if not ceiling:
        return []
    targets = []
    images = _images_per_request(ours)
    if images == 1:
        best = max(p["throughput_rps"] for p in ours.values())
        ratio = best / ceiling["ceiling_images_per_s"]
        targets.append(
            _target(
                f"saturation throughput >= {SATURATION_RATIO} x ceiling",
                f"{best:.1f} / {ceiling['ceiling_images_per_s']:.1f} = {ratio:.2f}",
                ratio >= SATURATION_RATIO,
            )
        )
    if images == 1 and 1 in ours and ours[1]["p50_ms"] is not None:
        single = ceiling["single_image_ms_p50"]
        limit = max(single * SINGLE_LATENCY_SLACK, single + SINGLE_LATENCY_SLACK_MS)
        targets.append(
            _target(
                "p50 at C=1 within max(10%, 2 ms) of in-process single-image latency",
                f"{ours[1]['p50_ms']:.1f} ms vs {single:.1f} ms (limit {limit:.1f})",
                ours[1]["p50_ms"] <= limit,
            )
        )
    return targets


def _no_failures(ours: dict[int, dict]) -> list[dict]:
    """Failures: 5xx, and anything that is not an HTTP status (timeouts, dropped connections),
    during the measured windows or outside them."""
    failures = {
        c: {
            k: v
            for errors in (p["errors"], p.get("unmeasured_errors", {}))
            for k, v in errors.items()
            if not k.startswith(("2", "4"))
        }
        for c, p in ours.items()
    }
    bad = {c: e for c, e in failures.items() if e}
    return [
        _target(
            "no 5xx or connection errors at any C (default configuration)",
            str(bad) if bad else "none",
            not bad,
        )
    ]


def evaluate(entry: dict) -> list[dict]:
    """Every target the run measured: the framework ceiling and core scaling, then the
    service's targets for the default configuration (``bentoml``) and, when it ran, for the
    throughput configuration (``bentoml-2w``, its targets prefixed with its name)."""
    targets = _framework_ceiling(entry) + _core_scaling(entry)
    for name in OUR_CONFIGURATIONS:
        ours = _points(entry, name)
        if not ours:
            continue
        prefix = "" if name == OURS else f"{name}: "
        targets += [
            {**target, "target": prefix + target["target"]}
            for target in _service_targets(entry, ours, name)
        ]
    return targets


def _service_targets(entry: dict, ours: dict[int, dict], name: str) -> list[dict]:
    return (
        _latency_and_saturation(entry, ours, name)
        + _multi_image(entry, ours)
        + _speedup(ours, _points(entry, "fastapi-naive"), NAIVE_SPEEDUP_AT_32, "naive FastAPI")
        + _speedup(ours, _points(entry, FAIR_PEER), FAIR_PEER_SPEEDUP_AT_32, f"{FAIR_PEER}")
        + _ahead_of_litserve(ours, _points(entry, "litserve"))
        + _no_failures(ours)
    )


def _ahead_of_litserve(ours: dict, lit: dict) -> list[dict]:
    if 32 not in ours or 32 not in lit:
        return []
    return [
        _target(
            "ahead of LitServe (documented setup) at C=32",
            f"{ours[32]['throughput_rps']:.1f} vs {lit[32]['throughput_rps']:.1f}",
            ours[32]["throughput_rps"] > lit[32]["throughput_rps"],
        )
    ]
