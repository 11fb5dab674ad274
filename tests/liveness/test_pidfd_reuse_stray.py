"""A pidfd released right after its process died, its number reused at once.

A caller that kills a process and releases its monitor at once (a supervisor
stopping a process child, a registry's ``unregister``), then watches the next
process, makes the selector meet events for a pidfd released (and closed)
after the epoll reported it, and the next pidfd takes the same number. Before,
two such stale events on one number in two rounds in a row were taken for a
registration that is not the manager's own: the epoll was rebuilt and a
WARNING logged ('fd N in its epoll has no watch ... epoll rebuilt', 10 to 24
times in 300 cycles), although only the manager had touched its epoll.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest

from foundation.liveness import Monitor, MonitorManager
from tests._ci import cannot_run
from tests.liveness._support import Recorder, wait_until
from tests.liveness.test_fork_inherited import _registered_fds

CYCLES = 300
WIDTH = 2  # processes watched at once (the numbers the pidfds cycle through)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def liveness_log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("foundation.liveness")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started before the cycles (so that they run fast); all reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(CYCLES + WIDTH):
            procs.append(subprocess.Popen(["sleep", "60"]))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_release_racing_a_death_is_not_taken_for_a_foreign_registration(
    manager: MonitorManager,
    sleepers: list[subprocess.Popen[bytes]],
    liveness_log: _Records,
) -> None:
    if sys.platform != "linux" or not manager.uses_pidfd:
        cannot_run("needs pidfd_open and epoll")
    live: list[tuple[subprocess.Popen[bytes], Monitor, Recorder]] = []
    released: list[tuple[Recorder, bool]] = []
    for proc in sleepers:
        if len(live) == WIDTH:
            old, mon, rec = live.pop(0)
            old.kill()  # dies now: the selector is about to report its pidfd
            released.append((rec, mon.demonitor()))  # closes that pidfd meanwhile
        rec = Recorder()
        live.append((proc, manager.monitor(proc, rec), rec))  # reuses the number
    for proc, _, _ in live:
        proc.kill()
    # Every death told once: each monitor the death took (demonitor() found it
    # taken: False) was called once, with the kill; one the release took, never.
    told = [rec for rec, mine in released if not mine] + [rec for _, _, rec in live]
    assert wait_until(lambda: all(rec.count >= 1 for rec in told))
    assert wait_until(lambda: manager.active_count() == 0)
    assert all(rec.count == 1 and rec.downs[0].reason == "killed" for rec in told)
    assert all(rec.count == 0 for rec, mine in released if mine)
    rebuilt = [r.getMessage() for r in liveness_log.records if "no watch" in r.getMessage()]
    assert rebuilt == [], f"{len(rebuilt)} false WARNINGs: {rebuilt[:2]}"
    problems = [r.getMessage() for r in liveness_log.records if r.levelno >= logging.WARNING]
    assert problems == []


def test_a_foreign_registration_on_a_number_the_manager_reuses_is_still_dropped(
    manager: MonitorManager,
    sleepers: list[subprocess.Popen[bytes]],
    liveness_log: _Records,
) -> None:
    """The stale events above are told apart by the releases of their number:
    a registration that is not the manager's own, made under a number the
    manager's next pidfds take and release again and again, is still dropped
    (the epoll rebuilt, and said) once a round meets it with no release."""
    if sys.platform != "linux" or not manager.uses_pidfd:
        cannot_run("needs pidfd_open and epoll")
    kept, foreign, *others = sleepers
    rec = Recorder()
    manager.monitor(kept, rec)
    epoll = manager._epoll
    assert epoll is not None
    ours = _registered_fds(epoll)
    stray = os.pidfd_open(foreign.pid)
    keep = os.dup(stray)  # keeps the open file, so its registration, alive
    try:
        epoll.register(stray, select.EPOLLIN)  # as foreign code would
        os.close(stray)  # the number is free: the next pidfds take it
        for proc in others[:25]:
            manager.monitor(proc, Recorder()).demonitor()  # takes, releases the number
        foreign.kill()
        foreign.wait()  # readable from now on: reported on every poll
        for proc in others[25:50]:
            manager.monitor(proc, Recorder()).demonitor()
        assert wait_until(lambda: _registered_fds(manager._epoll) == ours)
    finally:
        os.close(keep)
    assert any("no watch" in r.getMessage() for r in liveness_log.records)
    kept.kill()
    assert rec.wait().reason == "killed"
