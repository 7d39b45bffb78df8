"""Where one worker runs: its share of the GPUs and of the CPU cores, from the service's
effective BentoML configuration and the container's limits."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from models.device import WorkerSlot


def worker_slot(service_config: dict[str, Any], *, worker_index: int | None) -> WorkerSlot:
    """This worker's place among the service's GPUs, from the service's BentoML configuration
    (``configuration.yaml`` as BentoML resolved it).

    ``workers`` over ``resources.gpu`` workers share each GPU (2 workers and ``gpu: 1``: both
    on it; 4 and ``gpu: 4``: one each); without ``resources.gpu``, one worker per visible GPU,
    round robin. ``worker_index`` is BentoML's 1-based worker index (None outside a served
    worker: worker 1).
    """
    workers = service_config.get("workers", 1)
    gpus = (service_config.get("resources") or {}).get("gpu")
    per_gpu = 1
    if isinstance(workers, int) and isinstance(gpus, int | float) and gpus >= 1:
        per_gpu = math.ceil(workers / int(gpus))
    return WorkerSlot(index=worker_index or 1, per_gpu=per_gpu)


def torch_threads_per_worker(service_config: dict[str, Any], *, usable_cores: int) -> int:
    """Each worker's share of the cores (``workers`` from the effective BentoML configuration;
    ``cpu_count`` means one worker per core)."""
    workers = service_config.get("workers", 1)
    if not isinstance(workers, int) or workers < 1:
        return 1
    return max(1, usable_cores // workers)


def usable_cores(*, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (Docker's ``--cpus``, a Kubernetes CPU limit), rounded up. Without the cap, a container
    limited to 2 CPUs on a 64-core host would run 64-thread OpenMP teams against its quota."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of quota from cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``); None
    when there is none or it cannot be read."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None
