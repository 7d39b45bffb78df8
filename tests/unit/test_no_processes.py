"""The unit tier's guard (tests/unit/conftest.py) refuses every way of starting a process."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from .conftest import ProcessSpawnedInUnitTestError


@pytest.mark.parametrize(
    "start",
    [
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=False),
        lambda: subprocess.Popen(["true"]),
        lambda: os.system("true"),
        lambda: os.fork(),
        lambda: os.posix_spawn("/bin/true", ["true"], os.environ),
        lambda: multiprocessing.get_context("fork").Process(target=print).start(),
        lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
    ],
    ids=["subprocess.run", "Popen", "os.system", "os.fork", "posix_spawn", "mp-fork", "mp-spawn"],
)
def test_starting_a_process_fails_the_test(start):
    with pytest.raises(ProcessSpawnedInUnitTestError, match="tests/integration/"):
        start()
