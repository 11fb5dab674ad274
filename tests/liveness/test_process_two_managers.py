"""One multiprocessing child watched by two monitor managers (a registry's and
the user's own ``monitor()``, both sides of a ``MigratingRegistry``).

A forkserver child's status is in a pipe with room for one reader. Once the
owner leaves it unread past its deadline, each manager's poller thread read it
itself, at about the same moment: one got the code, the other EOF, and
multiprocessing stored 255, in that manager's Down and as the owner's
``exitcode`` (2/18 runs with ten children, two managers). The read is now one
at a time. fork and spawn children are read with a non-reaping ``waitid`` by
every manager: nothing to share, checked alike.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Iterator

import pytest

import foundation.liveness._process as _process
from foundation.liveness import Down, MonitorManager
from foundation.liveness._process import exit_down, owner_down
from tests.liveness._support import manager_threads

TIMEOUT = 60.0
ROUNDS = 3
CODE = 3


def _exit_at_eof(
    reader: multiprocessing.connection.Connection,
    writer: multiprocessing.connection.Connection,
    code: int,
) -> None:
    """A child that exits with ``code`` once its parent closed the pipe's write
    end (its own copy closed first: a fork child inherits every one)."""
    writer.close()
    with contextlib.suppress(EOFError):
        reader.recv()
    os._exit(code)


@pytest.fixture
def two_managers() -> Iterator[list[MonitorManager]]:
    """Two managers whose process pollers look every millisecond."""
    names = [f"two{os.getpid()}-{i}" for i in range(2)]
    managers = [MonitorManager(name=n, process_poll_interval=0.001) for n in names]
    try:
        yield managers
    finally:
        for mgr in managers:
            mgr.close()
    assert [manager_threads(n) for n in names] == [[], []]


def _one_round(method: str, managers: list[MonitorManager], children: int) -> list[Down]:
    """``children`` children of ``method`` exiting with ``CODE`` at once, each
    watched by every manager; the owner reads nothing until every Down came.
    Returns the Downs; asserts the owner's exitcodes."""
    ctx = multiprocessing.get_context(method)
    reader, writer = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=_exit_at_eof, args=(reader, writer, CODE)) for _ in range(children)]
    for proc in procs:
        proc.start()
    reader.close()
    downs: list[Down] = []
    lock = threading.Lock()
    every = threading.Event()

    def on_down(down: Down) -> None:
        with lock:
            downs.append(down)
            if len(downs) == children * len(managers):
                every.set()

    for proc in procs:
        for mgr in managers:
            mgr.monitor(proc, on_down)
    writer.close()  # every child exits now
    assert every.wait(TIMEOUT), f"{len(downs)} Downs of {children * len(managers)}"
    for proc in procs:
        proc.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [CODE] * children
    for proc in procs:
        proc.close()
    return downs


def test_forkserver_status_read_by_two_pollers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """What each manager's poller thread does past the owner's deadline (cut
    to 0 here), two threads lined up on each dead child whose status the
    forkserver wrote: without the fix, 255 in several Downs and the owner's
    exitcode (the test failed 6/7, passing once under four parallel runs on
    two cores); now every read gives the real code."""
    monkeypatch.setattr(_process, "_OWNER_WAIT", 0.0)
    ctx = multiprocessing.get_context("forkserver")
    for _ in range(ROUNDS):
        reader, writer = ctx.Pipe(duplex=False)
        procs = [ctx.Process(target=_exit_at_eof, args=(reader, writer, CODE)) for _ in range(20)]
        for proc in procs:
            proc.start()
        reader.close()
        assert [exit_down(p) for p in procs] == [None] * len(procs)  # first sight, as monitor()
        writer.close()
        _wait_statuses_written(procs)
        downs = _race_owner_down(procs)
        assert downs == [Down("exit", exit_code=CODE)] * (2 * len(procs))
        for proc in procs:
            proc.join(TIMEOUT)
        assert [p.exitcode for p in procs] == [CODE] * len(procs)


def _wait_statuses_written(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Until every forkserver child's status is in its pipe (select: nothing read)."""
    pending = [p.sentinel for p in procs]
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        ready = multiprocessing.connection.wait(pending, 1.0)
        pending = [s for s in pending if s not in ready]
    assert pending == []


def _race_owner_down(procs: list[multiprocessing.process.BaseProcess]) -> list[Down | None]:
    """``owner_down`` of each process from two threads at once: both spin
    until the other reached the same process (runnable, not asleep, so that
    the one entering the pipe's select hands the GIL to the other)."""
    arrived = [0] * len(procs)
    lock = threading.Lock()
    downs: list[Down | None] = []
    deadline = time.monotonic() + TIMEOUT

    def poller() -> None:
        for i, proc in enumerate(procs):
            with lock:
                arrived[i] += 1
            while arrived[i] < 2 and time.monotonic() < deadline:
                pass  # spin: a wait on a lock or event sleeps, and misses the race
            down = owner_down(proc)
            with lock:
                downs.append(down)

    threads = [threading.Thread(target=poller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return downs


def test_forkserver_child_two_managers(two_managers: list[MonitorManager]) -> None:
    """The scenario seen: two managers, the owner reads nothing until every
    Down came (a 255 in 2/18 runs with ten children before the fix). A Down
    may have no code if the forkserver wrote the status past the owner's
    deadline (a loaded machine; documented), never a wrong one."""
    downs = _one_round("forkserver", two_managers, 20)
    assert {(d.reason, d.exit_code) for d in downs} <= {("exit", CODE), ("exit", None)}


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fork_and_spawn_children_two_managers_exact(
    two_managers: list[MonitorManager], method: str
) -> None:
    """fork and spawn children are our own: every manager reads the status
    itself, without reaping (the owner's join() still gets it)."""
    downs = _one_round(method, two_managers, 20 if method == "fork" else 5)
    assert downs == [Down("exit", exit_code=CODE)] * len(downs)
