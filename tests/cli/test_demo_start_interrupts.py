"""Demo parts 1 to 3: a Ctrl-C landing while a part starts what it must stop
(part 1's asyncio loop, part 2's flag store, part 3's application tree) leaves
nothing behind.

A real SIGINT is sent to this process at the first event Python traces in the
named library code, so its handler runs where Python would run it: held by
``ctrl_c_deferred``, else raising ``KeyboardInterrupt`` (tests/_ctrl_c.py
raises at a trace event instead, which a held signal never does)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from foundation._demo._console import Console
from foundation._demo._scoreboard import Scoreboard


def _sigint_at_first_event_in(where: str) -> Any:
    """A trace function: SIGINT at the first event in a file whose name contains
    ``where``, or in a function of that qualified name."""
    sent = False

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal sent
        code = frame.f_code
        if sent or (where not in code.co_filename and where != code.co_qualname):
            return None
        sent = True
        os.kill(os.getpid(), signal.SIGINT)
        return None

    return trace


def _interrupted(call: Callable[[], object], where: str) -> None:
    """Run ``call`` with a SIGINT sent at its first event in ``where``: it must
    end in ``KeyboardInterrupt``."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    sys.settrace(_sigint_at_first_event_in(where))
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        sys.settrace(None)


def _children() -> list[str]:
    """This process's live child processes (pid and command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile
        if int(ppid) == os.getpid() and state != "Z":
            found.append(f"{entry.name} {command}")
    return found


def _new_threads(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]


def _settled(before: tuple[set[threading.Thread], set[str]]) -> tuple[list[str], list[str]]:
    """The threads and child processes started since ``before`` (``_before()``)
    still there once what ends on its own has ended (a thread told to stop may
    take a moment): polled with a deadline. Children of this process from before
    (another test's redis-server) do not count."""
    threads_before, children_before = before

    def new_children() -> list[str]:
        return [c for c in _children() if c not in children_before]

    deadline = time.monotonic() + 10
    while (_new_threads(threads_before) or new_children()) and time.monotonic() < deadline:
        time.sleep(0.02)  # sleep-ok: the poll interval of a loop with a deadline
    return _new_threads(threads_before), new_children()


def _before() -> tuple[set[threading.Thread], set[str]]:
    """This process's threads and child processes now (for ``_settled``)."""
    return set(threading.enumerate()), set(_children())


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_ctrl_c_while_the_application_tree_starts_stops_it() -> None:
    from foundation._demo._supervision import run_supervision
    from foundation.application import Application

    before = _before()
    try:
        # Held during Application.start, the signal was raised as the start
        # ended, before the part's stop guard: the tree ran on, and its
        # "sleep 300" sidecar outlived the demo.
        _interrupted(lambda: run_supervision(Console(plain=True), Scoreboard()), "application.py")
        threads, children = _settled(before)
        assert children == []
        assert threads == []
    finally:
        for thing in gc.get_objects():  # what a failed check left running
            if isinstance(thing, Application):
                thing.stop()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_ctrl_c_while_part_one_makes_its_loop_leaves_no_half_made_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from foundation._demo._core import run_core

    unraisable: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook", lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
    )
    before = _before()
    # Inside BaseEventLoop.__init__, the signal left a half-made loop whose
    # __del__ printed "Exception ignored ... no attribute '_signal_handlers'".
    _interrupted(lambda: run_core(Console(plain=True), Scoreboard(), per_kind=1), "base_events.py")
    gc.collect()
    threads, children = _settled(before)
    assert unraisable == []
    assert children == []
    assert threads == []


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_ctrl_c_while_the_rollout_opens_its_flag_store_closes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from foundation._demo._rollout import run_rollout

    unraisable: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook", lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
    )
    monkeypatch.setattr(
        threading, "excepthook", lambda a: unraisable.append(f"{a.thread}: {a.exc_value!r}")
    )
    before = _before()
    # Between the flag service's opening and the part's try, the signal left
    # its store's thread running, which failed on the removed directory (a
    # thread traceback), and "Exception ignored in: SQLiteFlagStore(...)".
    _interrupted(
        lambda: run_rollout(Console(plain=True), Scoreboard(), seconds=0.05, workers=1),
        "MigratingRegistry.__init__",
    )
    threads, _children_left = _settled(before)
    gc.collect()
    assert threads == []
    assert unraisable == []


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_a_ctrl_c_raised_as_the_signals_are_blocked_leaves_them_unblocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from foundation._demo._interrupts import ctrl_c_deferred

    real = signal.pthread_sigmask
    raised = False

    def mask_then_ctrl_c(how: int, signals: Iterable[int]) -> set[signal.Signals]:
        # A SIGINT that arrived just before the call: its handler runs as the
        # call returns, before the caller stores what it returned.
        nonlocal raised
        previous = real(how, signals)
        if not raised and how == signal.SIG_BLOCK and signal.SIGINT in set(signals):
            raised = True
            raise KeyboardInterrupt
        return previous

    monkeypatch.setattr(signal, "pthread_sigmask", mask_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt), ctrl_c_deferred():
            pass
        # The mask to put back was lost with the call's result: SIGINT and
        # SIGTERM stayed blocked in this thread for good.
        blocked = real(signal.SIG_BLOCK, ())
    finally:
        monkeypatch.undo()
        leftover = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    assert raised
    assert not blocked & {signal.SIGINT, signal.SIGTERM}, leftover
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
