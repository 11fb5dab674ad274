"""The pause clock: how long this process did not run (``foundation._pause_clock``).

A RedisRegistry's lease thread reads it to tell its own silence from an outage
(tests/redis/test_register_many_heartbeat.py has the scenarios). Here: the
clock itself, with a real pause (a C call holding the GIL), its thread's life,
and a forked child.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from foundation._pause_clock import PAUSES, TICK, PauseClock
from tests.test_fork_closes_inherited import in_child

_BACKTRACKS = re.compile(r"(a|aa)+b")  # no "b": tries every split, holding the GIL


def _hold_the_gil(at_least: float) -> float:
    """Run one C call holding the GIL for ``at_least`` s or more; its length."""
    n = 20
    while True:
        began = time.perf_counter()
        _BACKTRACKS.fullmatch("a" * n)
        held = time.perf_counter() - began
        if held >= at_least:
            return held
        n += 2


def _ticker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "foundation-pause-clock"]


def test_a_call_holding_the_gil_is_counted_as_a_pause() -> None:
    clock = PauseClock()
    with clock.running():
        before = clock.paused()
        held = _hold_the_gil(at_least=0.4)
        # Read before the ticker ran again: the pause in progress counts already.
        during = clock.paused()
    # The ticker could not run for the whole call, less one tick it may have
    # slept through before the call began (and the slack for GIL hand-overs).
    assert during - before >= held - 2 * TICK
    assert clock.paused() >= during  # never backwards, also once stopped


def test_the_sum_stands_still_without_a_user() -> None:
    clock = PauseClock()
    with clock.running():
        _hold_the_gil(at_least=0.2)
    stopped = clock.paused()
    assert stopped > 0.0
    _hold_the_gil(at_least=0.2)  # nobody asked: no ticker, nothing added
    assert clock.paused() == stopped


def test_one_ticker_for_every_user_gone_with_the_last() -> None:
    clock = PauseClock()
    before = len(_ticker_threads())
    with clock.running(), clock.running():
        assert len(_ticker_threads()) == before + 1
    assert len(_ticker_threads()) == before  # joined by the last release


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_starts_a_ticker_of_its_own() -> None:
    def child() -> dict[str, Any]:  # one thread: the parent's ticker is not there
        inherited = len(_ticker_threads())
        with PAUSES.running():
            running = len(_ticker_threads())
        return {"tickers": [inherited, running, len(_ticker_threads())]}

    with PAUSES.running():
        assert in_child(child) == {"tickers": [0, 1, 0]}
