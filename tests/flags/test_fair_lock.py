"""FairRLock: reentrant, and waiters get it in arrival order (not a thread looping on it)."""

from __future__ import annotations

import threading

import pytest

from foundation.flags._fair_lock import FairRLock
from tests.flags._support import wait_until


def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FairRLock()
    order: list[str] = []

    def waiter(name: str) -> None:
        with lock:
            order.append(name)

    threads = []
    with lock:
        for i, name in enumerate(("first", "second", "third")):
            t = threading.Thread(target=waiter, args=(name,))
            t.start()
            threads.append(t)
            wait_until(lambda n=i + 1: len(lock._waiters) == n)  # queued before the next
    for t in threads:
        t.join(10)
    assert order == ["first", "second", "third"]


def test_a_thread_looping_on_the_lock_cannot_starve_a_waiter() -> None:
    lock = FairRLock()
    stop = threading.Event()
    looping = threading.Event()
    rounds = [0]

    def hog() -> None:
        while not stop.is_set():
            with lock:
                rounds[0] += 1
                looping.set()

    t = threading.Thread(target=hog)
    t.start()
    try:
        assert looping.wait(10)
        for _ in range(200):  # each acquisition waits for at most the hog's current round
            with lock:
                pass
    finally:
        stop.set()
        t.join(10)
    assert rounds[0] > 0


def test_it_is_reentrant_and_only_its_owner_releases_it() -> None:
    lock = FairRLock()
    with lock, lock:
        other: list[BaseException] = []

        def release_elsewhere() -> None:
            try:
                lock.release()
            except RuntimeError as exc:
                other.append(exc)

        t = threading.Thread(target=release_elsewhere)
        t.start()
        t.join(10)
        assert len(other) == 1
    with pytest.raises(RuntimeError):
        lock.release()
