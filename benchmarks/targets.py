"""The performance targets (issue 4), checked against one run's numbers."""

from __future__ import annotations

OURS = "bentoml"
SATURATION_RATIO = 0.9
NAIVE_SPEEDUP_AT_32 = 2.0
SINGLE_LATENCY_SLACK = 1.10
# The near-no-op model (--models noop): BentoML's users' figure for a no-op service.
NOOP_RPS_PER_WORKER = 600
WORKERS = 1  # every server under test runs one worker (configuration.yaml, benchmarks/servers.py)


def _server(entry: dict, name: str) -> dict:
    return next((s for s in entry["servers"] if s["name"] == name), {})


def _points(entry: dict, name: str) -> dict[int, dict]:
    return {p["concurrency"]: p for p in _server(entry, name).get("points", [])}


def _target(text: str, measured: str, met: bool | None) -> dict:
    return {"target": text, "measured": measured, "met": met}


def _framework_ceiling(entry: dict) -> list[dict]:
    """The near-no-op model: the best of our service's configurations (``bentoml*``; in fp32
    the tiny forward is cheapest) against BentoML's no-op figure, with its CPU per request."""
    ours = [(s["name"], p) for s in entry["servers"] if s["name"].startswith(OURS)
            for p in s["points"]]  # fmt: skip
    if not entry.get("framework_ceiling") or not ours:
        return []
    name, best = max(ours, key=lambda item: item[1]["throughput_rps"])
    per_worker = best["throughput_rps"] / WORKERS
    cpu_ms = best.get("server_cpu_ms_per_request")
    cpu = "" if cpu_ms is None else f", server CPU {cpu_ms:.2f} ms/request"
    return [
        _target(
            f"near-no-op model: >= {NOOP_RPS_PER_WORKER} req/s per worker at saturation",
            f"{per_worker:.1f} req/s per worker ({name}, C={best['concurrency']}){cpu}",
            per_worker >= NOOP_RPS_PER_WORKER,
        )
    ]


def evaluate(entry: dict) -> list[dict]:
    framework = _framework_ceiling(entry)
    ours = _points(entry, OURS)
    if not ours:
        return framework
    # The ceiling measured right before our server ran (the machine drifts over minutes).
    ceiling = _server(entry, OURS).get("ceiling") or {}
    targets = framework
    best = max(p["throughput_rps"] for p in ours.values())
    if ceiling:
        ratio = best / ceiling["ceiling_images_per_s"]
        targets.append(
            _target(
                f"saturation throughput >= {SATURATION_RATIO} x ceiling",
                f"{best:.1f} / {ceiling['ceiling_images_per_s']:.1f} = {ratio:.2f}",
                ratio >= SATURATION_RATIO,
            )
        )
    naive, lit = _points(entry, "fastapi-naive"), _points(entry, "litserve")
    if 32 in ours and 32 in naive:
        speedup = ours[32]["throughput_rps"] / max(naive[32]["throughput_rps"], 1e-9)
        targets.append(
            _target(
                f">= {NAIVE_SPEEDUP_AT_32}x naive FastAPI at C=32",
                f"{ours[32]['throughput_rps']:.1f} / {naive[32]['throughput_rps']:.1f} = "
                f"{speedup:.2f}x",
                speedup >= NAIVE_SPEEDUP_AT_32,
            )
        )
    if 32 in ours and 32 in lit:
        targets.append(
            _target(
                "ahead of LitServe at C=32",
                f"{ours[32]['throughput_rps']:.1f} vs {lit[32]['throughput_rps']:.1f}",
                ours[32]["throughput_rps"] > lit[32]["throughput_rps"],
            )
        )
    if ceiling and 1 in ours and ours[1]["p50_ms"] is not None:
        limit = ceiling["single_image_ms_p50"] * SINGLE_LATENCY_SLACK
        targets.append(
            _target(
                "p50 at C=1 within 10% of in-process single-image latency",
                f"{ours[1]['p50_ms']:.1f} ms vs {ceiling['single_image_ms_p50']:.1f} ms "
                f"(limit {limit:.1f})",
                ours[1]["p50_ms"] <= limit,
            )
        )
    # Failures: 5xx, and anything that is not an HTTP status (timeouts, dropped connections),
    # during the measured windows or outside them.
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
    targets.append(
        _target(
            "no 5xx or connection errors at any C (default configuration)",
            str(bad) if bad else "none",
            not bad,
        )
    )
    return targets
