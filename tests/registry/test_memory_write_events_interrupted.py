"""A Ctrl-C landing anywhere in a write of ``MemoryRegistry``: the change is
stored and its listeners told, or neither.

``update_metadata`` stored the new entry, then detached the old one, unindexed
its terms and built its ``RegistryEvent`` (a dataclass ``__init__``: Python, a
check point): a Ctrl-C landing in any of them left the metadata changed and no
listener ever heard of it. ``unregister`` (a cut at its ``pop``'s return),
``register`` and a ``replace=True`` register (a cut in the event's ``__init__``)
did the same. Now each event is built before the store and queued by the first
call after it.

A profile function raises ``KeyboardInterrupt`` at each real check point of
the registry's code and of the generated dataclass methods (``"<string>"``),
the 1st, 2nd, ... of a write, until a run completes; after each, the events
left queued are delivered (as the next write would) and the store and the
events must agree (``tests._ctrl_c.interrupt_at_check_points``). In a
subprocess, with the interpreter's default hooks (``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

import pytest

from foundation.errors import AlreadyRegistered
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry, RegistryEvent
from tests.faults._subprocess import run_scenario

_T = TypeVar("_T")

_SCENARIO = """
import faulthandler
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry

faulthandler.dump_traceback_later(60, exit=True)  # a hang fails with its stacks
from tests._ctrl_c import interrupt_at_check_points, lock_free

WATCHED = ["foundation/registry/", "<string>"]
stop = threading.Event()
agent = spawn_thread(stop.wait)
registry = MemoryRegistry(indexed=("role",))
# A C method as the listener: this script's own code is "<string>" too, and a
# cut in a listener of its would be a cut listener, not a lost event.
events = []
registry.subscribe(events.append)
heard = set()
for i in range(1, 300):
    registry.register(f"u-{i}", agent, {"v": 0, "role": "a"})
    registry.register(f"p-{i}", agent, {"v": 0, "role": "a"})
registry.register("m", agent, {"v": 0, "role": "a"})

def update_metadata(n):
    registry.update_metadata("m", {"v": n, "role": f"r{n}"})

def update_metadata_seen(n):  # (stored, told): each a bool
    return registry.lookup("m").metadata["v"] == n, ("updated", "m", n) in heard

def register(n):
    registry.register(f"r-{n}", agent, {"v": n, "role": "a"})

def register_seen(n):
    return registry.lookup(f"r-{n}") is not None, ("registered", f"r-{n}", n) in heard

def unregister(n):
    registry.unregister(f"u-{n}")

def unregister_seen(n):
    return registry.lookup(f"u-{n}") is None, ("unregistered", f"u-{n}", 0) in heard

def replace(n):
    registry.register(f"p-{n}", agent, {"v": n, "role": "b"}, replace=True)

def replace_seen(n):
    told = {("unregistered", f"p-{n}", 0) in heard, ("registered", f"p-{n}", n) in heard}
    return registry.lookup(f"p-{n}").metadata["v"] == n, told.pop() if len(told) == 1 else None

for write, seen in ((update_metadata, update_metadata_seen), (register, register_seen),
                    (unregister, unregister_seen), (replace, replace_seen)):
    def check(n):
        assert lock_free(registry._lock), f"lock left held: point {n}"
        registry._delivery.deliver(drain=True, wait=True)  # what is queued (as the next write)
        heard.update((e.kind, e.entry.key, e.entry.metadata.get("v")) for e in events)
        stored, told = seen(n)
        if stored != told:
            print("INCONSISTENT", write.__name__, n, "stored" if stored else "told")
    cut = interrupt_at_check_points(write, WATCHED, after_each=check)
    print("INTERRUPTED", write.__name__, cut > 3)
registry.close()
stop.set()
agent.join()
print("OK")
"""


def test_a_ctrl_c_anywhere_in_a_write_stores_and_tells_or_neither() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("INCONSISTENT") == [], result.stdout
    assert result.lines("INTERRUPTED") == [
        f"INTERRUPTED {write} True"
        for write in ("update_metadata", "register", "unregister", "replace")
    ]


# ----------------------------------------------------------------- re-entrance

# The event built before the store or the `del` is a check point inside the
# write lock (an RLock): a signal handler or a finalizer that this thread runs
# there may write the same key. The write then goes on from what it read:
# an unregister's `del` raised KeyError (a public call raising a non-foundation
# error), or deleted the entry the handler had just registered (gone untold, its
# monitor kept), a register stored over the handler's entry (its monitor kept
# for good), a death's `del` raised KeyError in the thread telling it.


def _at_event_init(inner: Callable[[], object]) -> Callable[[FrameType, str, object], None]:
    """A profile function running ``inner()`` once, at the start of the first
    ``RegistryEvent.__init__`` (a generated dataclass method), as a signal
    handler would run there."""

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_filename == "<string>"
            and code.co_varnames[:3] == ("self", "kind", "entry")
        ):
            sys.setprofile(None)
            inner()

    return profile


def _reentered(write: Callable[[], _T], inner: Callable[[], object]) -> _T:
    before = sys.getprofile()
    sys.setprofile(_at_event_init(inner))
    try:
        return write()
    finally:
        sys.setprofile(before)


@pytest.fixture
def agent() -> Iterator[object]:
    stop = threading.Event()
    thread = spawn_thread(stop.wait)
    yield thread
    stop.set()
    thread.join()


def test_a_write_of_the_same_key_reentering_unregister_is_not_undone(agent: object) -> None:
    with MemoryRegistry() as registry:
        events: list[RegistryEvent] = []
        registry.subscribe(events.append)
        registry.register("k", agent, {"v": 1})
        gone = _reentered(lambda: registry.unregister("k"), lambda: registry.unregister("k"))
        assert gone is False  # (the handler's unregister came first)
        assert "k" not in registry
        registry.register("k", agent, {"v": 1})

        def retake() -> None:
            registry.unregister("k")
            registry.register("k", agent, {"v": 2})

        assert _reentered(lambda: registry.unregister("k"), retake) is False
        entry = registry.lookup("k")
        assert entry is not None
        assert entry.metadata["v"] == 2
        told = [(e.kind, e.entry.metadata["v"]) for e in events]
        assert told == [("registered", 1), ("unregistered", 1)] * 2 + [("registered", 2)]
        assert registry.manager.active_count() == 1


def test_a_write_of_the_same_key_reentering_register_is_not_overwritten(agent: object) -> None:
    with MemoryRegistry() as registry:
        events: list[RegistryEvent] = []
        registry.subscribe(events.append)
        with pytest.raises(AlreadyRegistered):
            _reentered(
                lambda: registry.register("k", agent, {"v": 1}),
                lambda: registry.register("k", agent, {"v": 2}),
            )
        entry = registry.lookup("k")
        assert entry is not None
        assert entry.metadata["v"] == 2
        assert [(e.kind, e.entry.metadata["v"]) for e in events] == [("registered", 2)]
        assert registry.manager.active_count() == 1


def test_an_unregister_reentering_a_death_leaves_no_error(caplog: pytest.LogCaptureFixture) -> None:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    with MemoryRegistry() as registry:
        events: list[RegistryEvent] = []
        registry.subscribe(events.append)
        registry.register("k", future)
        with caplog.at_level(logging.ERROR):
            # The death told by this thread (completing the future), cut there.
            _reentered(lambda: future.set_result(None), lambda: registry.unregister("k"))
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert "k" not in registry
        assert [(e.kind, e.reason) for e in events] == [
            ("registered", None),
            ("unregistered", "unregistered"),
        ]
