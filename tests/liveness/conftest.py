"""Fixtures for the liveness tests."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest

from foundation.liveness import MonitorManager
from tests.liveness._support import manager_threads

_names = itertools.count()


@pytest.fixture
def manager() -> Iterator[MonitorManager]:
    """A manager of this test's own; closed afterwards, proven thread-free."""
    name = f"t{next(_names)}"
    mgr = MonitorManager(name=name, thread_poll_interval=0.005)
    try:
        yield mgr
    finally:
        mgr.close()
    assert manager_threads(name) == []


@pytest.fixture
def polling_manager() -> Iterator[MonitorManager]:
    """A manager forced onto the process polling fallback."""
    name = f"p{next(_names)}"
    mgr = MonitorManager(name=name, process_poll_interval=0.002, _pidfd=False)
    try:
        yield mgr
    finally:
        mgr.close()
    assert manager_threads(name) == []


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that runs until killed; always reaped afterwards."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
