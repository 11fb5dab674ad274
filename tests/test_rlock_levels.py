"""``foundation._rlock.held_levels`` on both kinds of CPython 3.11 RLock.

3.11.4+ has ``RLock._recursion_count``; 3.11.2 (Debian 12's ``python3.11``)
does not, and ``FeatureFlags()`` failed to build there when the lock code read
it directly. The fallback (the owner check) is exercised here through a lock
that lacks the count, on whichever interpreter runs the tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foundation._rlock import held_levels


class _RLockWithoutCount:
    """A real RLock showing only what 3.11.2's has: acquire, release, _is_owned."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release
        self._is_owned = self._lock._is_owned  # type: ignore[attr-defined]


def _held_elsewhere(levels: Callable[[], int]) -> int:
    """What ``levels()`` says in another thread."""
    answer: list[int] = []
    other = threading.Thread(target=lambda: answer.append(levels()))
    other.start()
    other.join()
    return answer[0]


def test_the_count_is_used_where_the_rlock_has_one() -> None:
    lock = threading.RLock()
    levels = held_levels(lock)
    assert levels() == 0
    with lock, lock:
        assert levels() == 2
        assert _held_elsewhere(levels) == 0
    assert levels() == 0


def test_without_the_count_the_answer_is_held_or_not() -> None:
    lock = _RLockWithoutCount()
    assert not hasattr(lock, "_recursion_count")
    levels = held_levels(lock)
    assert levels() == 0
    lock.acquire()
    lock.acquire()
    assert levels() == 1  # held: one level told, however many are taken
    assert _held_elsewhere(levels) == 0
    lock.release()
    lock.release()
    assert levels() == 0
