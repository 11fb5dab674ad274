"""The pause clock: how long this process did not run (``foundation._pause_clock``).

A RedisRegistry's lease thread reads it to tell its own silence from an outage
(tests/redis/test_register_many_heartbeat.py has the scenarios, a stopped
process among them). Here: the clock itself, with a real pause (a full
collection), its thread's life, a forked child.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest

from foundation._pause_clock import PAUSES, TICK, PauseClock
from tests.test_fork_closes_inherited import in_child


def _collect_a_big_heap() -> float:
    """One full collection of a heap of 3 million lists; how long it took."""
    heap = [[] for _ in range(3_000_000)]
    began = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - began
    del heap
    return took


def _ticker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "foundation-pause-clock"]


def test_a_collection_is_counted_as_a_pause() -> None:
    clock = PauseClock()
    with clock.running():
        before = clock.paused()
        took = _collect_a_big_heap()
        during = clock.paused()
    # No thread ran meanwhile, the ticker neither: it woke that much late.
    assert during - before >= took - 2 * TICK  # (a tick it may have slept through first)
    assert clock.paused() >= during


def test_the_sum_stands_still_without_a_user() -> None:
    clock = PauseClock()
    with clock.running():
        _collect_a_big_heap()
    stopped = clock.paused()
    assert stopped > 0.0
    _collect_a_big_heap()  # nobody asked: no ticker, nothing added
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
