"""A Ctrl-C landing anywhere in a write of ``RedisRegistry`` leaves its write lock free.

A real SIGINT is raised in the main thread at the interpreter's next check:
right after a C call returns (``wlock.acquire()`` in ``_Writing.__enter__``,
before any statement of it) or at the first instruction of a Python function
(``_Writing.__exit__``, before it released the lock). Either way the lock
stayed held by the interrupted thread with nothing to release it: the lease
thread's jobs (the delete of a dead agent's entry, a recovery) waited for it
for ever, other nodes kept showing a dead agent, and ``close()`` waited out
its join of the lease thread.

Here a profile function raises ``KeyboardInterrupt`` at exactly those points
(a ``call`` event, a ``c_return`` event) of the registry's code, the 1st, 2nd,
... of a write, until a run completes; after each, this thread holds no lock.
(A trace function's ``line`` events are no such points: one at the ``try:``
or at the exit of a ``with`` is never a check, and would leak what no real
signal can.)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from foundation.liveness import spawn_thread
from foundation.registry import RegistryEvent
from foundation.registry._redis._registry import RedisRegistry
from tests.redis.conftest import MakeRegistry

_WATCHED = "foundation/registry/_redis/"


def _interrupt_at(event_number: int) -> Any:
    """A profile function raising ``KeyboardInterrupt`` at the n-th point of the
    registry's code where a signal's handler runs."""
    seen = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal seen
        if event in ("call", "c_return") and _WATCHED in frame.f_code.co_filename:
            seen += 1
            if seen == event_number:
                sys.setprofile(None)
                raise KeyboardInterrupt

    return profile


def _no_lock_held(reg: RedisRegistry) -> None:
    sh = reg._sh
    assert not sh.wlock._is_owned()  # type: ignore[attr-defined]
    assert sh.mlock.acquire(timeout=10)  # (the tail thread holds it for moments)
    sh.mlock.release()


def _interrupted_everywhere(reg: RedisRegistry, write: Callable[[int], object]) -> int:
    """Run ``write(i)`` interrupted at its i-th point, i = 1, 2, ... until it
    completes; checks the locks after each. How many runs were interrupted."""
    for n in range(1, 10_000):
        sys.setprofile(_interrupt_at(n))
        try:
            write(n)
        except KeyboardInterrupt:
            _no_lock_held(reg)
            continue
        finally:
            sys.setprofile(None)
        _no_lock_held(reg)
        return n - 1
    raise AssertionError("the write never completed")


@pytest.mark.parametrize("kind", ["register", "unregister", "update_metadata"])
def test_a_ctrl_c_anywhere_in_a_write_leaves_no_lock_held(
    make_registry: MakeRegistry, agents: Callable[[], Any], kind: str
) -> None:
    a = make_registry(node="a", op_timeout=0.5)
    b = make_registry(node="b", op_timeout=0.5)

    def write(n: int) -> object:
        key = f"{kind}-{n}"
        if kind == "register":
            return a.register(key, agents())
        a.register(key, agents())
        if kind == "unregister":
            return a.unregister(key)
        return a.update_metadata(key, {"v": 2})

    assert _interrupted_everywhere(a, write) > 0

    # The lease thread deletes a dead agent's entry (holding wlock): node b sees
    # it go; with the lock leaked it showed the dead agent for ever.
    stop = threading.Event()
    dying = spawn_thread(stop.wait)
    gone = threading.Event()

    def listener(event: RegistryEvent) -> None:
        if event.entry.key == "dying" and event.kind != "registered":
            gone.set()

    b.subscribe(listener)
    a.register("dying", dying)
    assert b.wait_for_version(a.status().written)
    stop.set()
    dying.join()
    assert gone.wait(10)
    # And the node goes on working.
    a.register("after", agents())
    assert a.lookup("after") is not None
    assert a._lease.thread.is_alive()
    assert a._tail.thread.is_alive()
