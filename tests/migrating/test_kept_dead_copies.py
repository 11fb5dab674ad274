"""MigratingRegistry(ThreadLocalRegistry, MemoryRegistry), flag off, a listener
subscribed: the dead legacy copies left for their withheld deaths stay bounded.

A catch-up leaves a dead legacy copy in the thread's store while its death is
withheld (the store tells it when the copy is taken again, as a bare
``ThreadLocalRegistry`` does). The withheld deaths are bounded (``_MAX_KEPT``,
the oldest dropped): a copy whose death was dropped is useless, and was kept
forever (each key used once, then dead, kept its dead agent: without bound).
Now such a copy is dropped by the next catch-up, as any other dead copy.

Real stores and real (``Future``) agents; deaths are waited for, never slept on.
"""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import Future

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import RegistryEvent
from foundation.registry._migrating_events import _MAX_KEPT
from tests.migrating.support import FLAGS, wait_until


def test_dead_copies_kept_for_withheld_deaths_stay_bounded() -> None:
    flags = FeatureFlags(FLAGS)  # the flag off: the legacy store answers
    legacy, target = ThreadLocalRegistry(), MemoryRegistry()
    reg = MigratingRegistry(legacy, target, flags)
    events: list[RegistryEvent] = []
    reg.subscribe(events.append)
    n = _MAX_KEPT + 500
    try:
        for i in range(n):  # each key used once, then dead
            agent: Future[None] = Future()
            reg.register(("k", i), agent)
            agent.set_result(None)
        # Every death reported by the target (the last one withheld) ...
        assert wait_until(lambda: target.count() == 0 and ("k", n - 1) in reg._unheard, 20.0)
        reg.register("x", Future())  # ... and caught up by the next write
        assert legacy.stats().entries <= _MAX_KEPT + 2  # was n + 1: every dead copy kept
        events.clear()
        newest, oldest = ("k", n - 1), ("k", 0)
        reg.register(newest, Future())  # its death still withheld: told, before
        reg.register(oldest, Future())  # its death dropped: no copy left to tell it
        assert wait_until(lambda: len(events) >= 3)
        seen: list[tuple[str, Hashable, str | None]] = [
            (e.kind, e.entry.key, e.reason) for e in events
        ]
        assert seen == [
            ("unregistered", newest, "down"),
            ("registered", newest, None),
            ("registered", oldest, None),
        ]
    finally:
        reg.close()
        legacy.close()
        target.close()
        flags.close()
