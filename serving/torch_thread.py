"""One thread for every torch call of a loaded model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class TorchThread:
    """One dedicated thread for every torch call of a loaded model: loading, warm-up, batches.

    torch's CPU thread pool is OpenMP, and each Python thread that runs torch ops gets its own
    OpenMP team. Once two teams exist they slow each other down: loading a model on one thread
    and running it on another made batch-1 forwards much slower (figures: docs/performance.md).
    BentoML builds the service on the worker's main thread and runs sync APIs in a thread pool,
    so the service routes all its torch work through here.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    def call(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """Run ``fn`` on the torch thread and wait for it (for start-up code)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """Run ``fn`` on the torch thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
