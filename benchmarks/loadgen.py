"""A closed-loop load generator: keeps exactly C requests in flight for a fixed time.

Loopback only (it refuses other hosts: this is a benchmark, not a load-testing tool for other
people's servers), bounded both in duration and in request count. Request bodies are prebuilt so
the client's own CPU use stays small: on a 2-core machine it shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from .workload import Upload

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
REQUEST_TIMEOUT_S = 120


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    unmeasured_errors: dict[str, int] = field(default_factory=dict)  # warm-up and tail
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Successful requests per second (one image per request)."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 2),
            "ok": self.ok,
            "errors": dict(self.errors),
            "unmeasured_errors": dict(self.unmeasured_errors),
            "throughput_rps": round(self.throughput, 2),
            "p50_ms": _round(self.percentile(50)),
            "p90_ms": _round(self.percentile(90)),
            "p99_ms": _round(self.percentile(99)),
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the load generator only targets loopback, not {host!r}")


async def _worker(session, url, uploads, stop_at, budget, result, lock, record) -> None:
    for upload in uploads:
        if time.perf_counter() >= stop_at:
            return
        async with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        started = time.perf_counter()
        try:
            async with session.post(
                url, data=upload.body, headers={"Content-Type": upload.content_type}
            ) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = type(exc).__name__
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not record():
            if status != 200:
                key = str(status)
                result.unmeasured_errors[key] = result.unmeasured_errors.get(key, 0) + 1
            continue
        if status == 200:
            result.ok += 1
            result.latencies_ms.append(elapsed_ms)
        else:
            result.errors[str(status)] = result.errors.get(str(status), 0) + 1


async def run_load(
    url: str,
    uploads: list[Upload],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 3.0,
    max_requests: int = 100_000,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup_s + duration_s``; measure the latter.

    Requests that finish during the warm-up are not counted; the measured window starts when the
    warm-up ends, and requests still in flight when it closes are awaited but not counted.
    """
    check_loopback(url)
    result = LoadResult(concurrency=concurrency, duration_s=duration_s, ok=0)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    def record() -> bool:
        return measure_from <= time.perf_counter() <= stop_at

    cpu_before = _cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        lock, budget = asyncio.Lock(), [max_requests]
        workers = [
            _worker(
                session,
                url,
                itertools.islice(itertools.cycle(uploads), index, None),
                stop_at,
                budget,
                result,
                lock,
                record,
            )
            for index in range(concurrency)
        ]
        await asyncio.gather(*workers)
    result.client_cpu_s = _cpu_seconds() - cpu_before
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
