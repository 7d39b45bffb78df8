"""The unit tier runs in-process: a test that starts a process (a CLI, git, make, promtool,
Compose, nginx, a server, a multiprocessing worker) fails here and belongs in
tests/integration/ (real tools) or should call the code in-process (a CLI's ``main(argv)``)."""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess

import pytest


class ProcessSpawnedInUnitTestError(AssertionError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise ProcessSpawnedInUnitTestError(
            f"a unit test started a process ({what}): run the code in-process, or move the test "
            "to tests/integration/ (tests that run real tools or CLIs)"
        )

    return refuse


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    """Every way the standard library starts a program or a worker process, refused."""
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("subprocess"))
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _refuse("fork_exec"))  # multiprocessing
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"os.{name}"))
    for name in [n for n in dir(os) if n.startswith(("execv", "execl", "spawn"))]:
        monkeypatch.setattr(os, name, _refuse(f"os.{name}"))
