"""CPU time of a process tree: what serving one request costs the server, in CPU milliseconds.

Throughput on a shared machine drifts with the load beside it; the CPU time a server spends per
request does much less, so it is the figure to compare framework overheads with. Sampled with
psutil at the start and the end of a load point's measured window (warm-up excluded); Linux
counts it in clock ticks (10 ms), nothing next to a window of seconds.
"""

from __future__ import annotations

import contextlib
import resource

import psutil


def _own_seconds(process: psutil.Process) -> float:
    """User + system seconds of ``process``, and of its children it has already reaped (a
    reaped child has left the tree, so nothing is counted twice)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by ``pid`` and every live descendant (workers a server forked);
    None when ``pid`` is gone. A descendant that exits between listing and reading is skipped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        total = _own_seconds(root)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for child in processes[1:]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += _own_seconds(child)
    return total


def self_cpu_seconds() -> float:
    """CPU seconds of this process (all its threads): the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_request_ms(cpu_s: float | None, requests: int) -> float | None:
    """CPU milliseconds per request, or None when there is nothing to divide."""
    if cpu_s is None or requests <= 0:
        return None
    return round(1000.0 * cpu_s / requests, 3)
