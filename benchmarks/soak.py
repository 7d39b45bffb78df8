"""Soak: sustained load below the service's limits, in windows, watching errors, latency drift
and the server's memory.

    python -m benchmarks soak --duration 600      # the full form (10 minutes)

The integration tests run a shortened form (tests/integration/test_soak.py). Loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import psutil

from .loadgen import run_load
from .workload import Upload

logger = logging.getLogger("benchmarks.soak")


@dataclass(frozen=True)
class SoakLimits:
    """What a healthy soak looks like (the defaults are the documented bounds)."""

    max_rss_growth_mb: float = 150.0  # after the first window (warm-up, allocator pools)
    max_p50_drift: float = 1.5  # last window's p50 / first window's p50
    max_errors: int = 0


@dataclass
class SoakWindow:
    started_s: float
    ok: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    server_rss_mb: float


@dataclass
class SoakReport:
    concurrency: int
    duration_s: float
    windows: list[SoakWindow] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(sum(w.errors.values()) for w in self.windows)

    @property
    def rss_growth_mb(self) -> float:
        """Memory growth after the first window (which includes warm-up allocations)."""
        if len(self.windows) < 2:
            return 0.0
        return max(w.server_rss_mb for w in self.windows[1:]) - self.windows[0].server_rss_mb

    @property
    def p50_drift(self) -> float:
        first, last = self.windows[0].p50_ms, self.windows[-1].p50_ms
        return last / first if first else float("inf")

    def problems(self, limits: SoakLimits) -> list[str]:
        found = []
        if self.errors > limits.max_errors:
            found.append(f"{self.errors} errors (allowed {limits.max_errors})")
        if self.rss_growth_mb > limits.max_rss_growth_mb:
            found.append(
                f"server memory grew {self.rss_growth_mb:.0f} MB (allowed "
                f"{limits.max_rss_growth_mb:.0f})"
            )
        if self.p50_drift > limits.max_p50_drift:
            found.append(f"p50 drifted x{self.p50_drift:.2f} (allowed x{limits.max_p50_drift})")
        return found

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "errors": self.errors,
            "rss_growth_mb": round(self.rss_growth_mb, 1),
            "p50_drift": round(self.p50_drift, 3),
        }


def server_rss_mb(url: str) -> float:
    """Resident memory of every process listening on ``url``'s port (BentoML's arbiter and
    its workers all hold the listening socket), in MB."""
    port = urlsplit(url).port
    pids = {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    }
    total = 0
    for pid in pids - {None}:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    if not total:
        raise RuntimeError(f"no process is listening on port {port}")
    return total / 2**20


async def soak(
    url: str,
    uploads: list[Upload],
    concurrency: int,
    duration_s: float,
    window_s: float = 30.0,
) -> SoakReport:
    """Closed-loop load at ``concurrency`` for ``duration_s``, measured in windows."""
    report = SoakReport(concurrency=concurrency, duration_s=duration_s)
    elapsed = 0.0
    while elapsed < duration_s - 1e-6:
        length = min(window_s, duration_s - elapsed)
        result = await run_load(
            url, uploads, concurrency, duration_s=length, warmup_s=0.0, max_requests=10**7
        )
        latencies = sorted(result.latencies_ms)
        window = SoakWindow(
            started_s=round(elapsed, 1),
            ok=result.ok,
            errors={
                key: result.errors.get(key, 0) + result.unmeasured_errors.get(key, 0)
                for key in {*result.errors, *result.unmeasured_errors}
            },
            p50_ms=round(statistics.median(latencies), 2) if latencies else float("nan"),
            p99_ms=round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else 0.0,
            server_rss_mb=round(server_rss_mb(url), 1),
        )
        report.windows.append(window)
        logger.info(
            "soak t=%.0fs ok=%d errors=%s p50=%.1fms p99=%.1fms rss=%.0fMB",
            elapsed,
            window.ok,
            window.errors or 0,
            window.p50_ms,
            window.p99_ms,
            window.server_rss_mb,
        )
        elapsed += length
    return report


def run_soak(url: str, uploads: list[Upload], **kwargs) -> SoakReport:
    return asyncio.run(soak(url, uploads, **kwargs))
