"""A closed-loop load generator: keeps exactly C requests in flight for a fixed time.

Loopback only (it refuses other hosts: this is a benchmark, not a load-testing tool for other
people's servers), bounded both in duration and in request count. Request bodies are prebuilt so
the client's own CPU use stays small: on a 2-core machine it shares the cores with the server.
Given the server's pid, it also samples the CPU time of the server's process tree and its own at
the start and the end of the measured window (benchmarks/cpu.py), for CPU time per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from .cpu import per_request_ms, self_cpu_seconds, tree_cpu_seconds
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
    client_cpu_s: float | None = None  # the load generator's CPU in the measured window
    server_cpu_s: float | None = None  # the server's process tree, same window (None: no pid)
    images_per_request: int = 1

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def requests(self) -> int:
        """Requests completed in the measured window, answered or failed."""
        return self.ok + sum(self.errors.values())

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
            "images_per_request": self.images_per_request,
            "images_per_s": round(self.throughput * self.images_per_request, 2),
            "p50_ms": _round(self.percentile(50)),
            "p90_ms": _round(self.percentile(90)),
            "p99_ms": _round(self.percentile(99)),
            "server_cpu_s": _round(self.server_cpu_s, 3),
            "server_cpu_cores": _round(
                self.server_cpu_s / self.duration_s
                if self.server_cpu_s is not None and self.duration_s
                else None,
                2,
            ),
            "server_cpu_ms_per_request": per_request_ms(self.server_cpu_s, self.requests),
            "client_cpu_s": _round(self.client_cpu_s, 3),
            "client_cpu_ms_per_request": per_request_ms(self.client_cpu_s, self.requests),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


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
    server_pid: int | None = None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup_s + duration_s``; measure the latter.

    Requests that finish during the warm-up are not counted; the measured window starts when the
    warm-up ends, and requests still in flight when it closes are awaited but not counted. The
    CPU time of this process, and of ``server_pid``'s process tree when given, is sampled when
    the window opens and when it closes. If the requests run out (``max_requests``) first, the
    window ends there: ``duration_s`` becomes its real length, so throughput stays right.
    """
    check_loopback(url)
    result = LoadResult(
        concurrency=concurrency, duration_s=duration_s, ok=0, images_per_request=uploads[0].images
    )
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    def record() -> bool:
        return measure_from <= time.perf_counter() <= stop_at

    probe, samples = _cpu_probe(server_pid), []
    sampler = asyncio.create_task(_sample_window(probe, measure_from, stop_at, samples))
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
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    ended = time.perf_counter()
    if ended < stop_at:  # the requests ran out (max_requests) before the window closed
        result.duration_s = max(0.0, ended - measure_from)
        if len(samples) == 1:
            samples.append(probe())
    if len(samples) == 2:
        (server_start, client_start), (server_end, client_end) = samples
        result.client_cpu_s = client_end - client_start
        if server_start is not None and server_end is not None:
            result.server_cpu_s = server_end - server_start
    return result


def _cpu_probe(server_pid: int | None) -> Callable[[], tuple[float | None, float]]:
    def probe() -> tuple[float | None, float]:
        server = None if server_pid is None else tree_cpu_seconds(server_pid)
        return server, self_cpu_seconds()

    return probe


async def _sample_window(probe, measure_from: float, stop_at: float, samples: list) -> None:
    """Append ``probe()`` when the measured window opens and again when it closes."""
    for moment in (measure_from, stop_at):
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        samples.append(probe())
