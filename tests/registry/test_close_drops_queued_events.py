"""``MemoryRegistry.close()`` unsubscribes every listener first, as ``RedisRegistry``'s does.

Found by an explorer (3/3): events queued behind a slow listener went on being
delivered by a courier for seconds after ``close()`` returned (100 calls, the
last 5 s later; 1,500 calls up to 21 s later under load). Now queued events
reach no one; the event being delivered at the close still reaches the
listener it was being given to. Real threads; the slow listener is held on an
event, no sleeps.
"""

from __future__ import annotations

import threading
import time

from foundation import MemoryRegistry, spawn_thread


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        threading.Event().wait(0.005)  # poll with a deadline


def test_events_queued_at_close_are_not_delivered() -> None:
    stop, release, in_listener = threading.Event(), threading.Event(), threading.Event()
    heard: list[object] = []

    def slow(event: object) -> None:
        heard.append(event.entry.key)  # type: ignore[attr-defined]
        in_listener.set()
        release.wait(30)  # a listener doing I/O: every later event queues behind it

    registry = MemoryRegistry()
    registry.subscribe(slow)
    first = threading.Thread(
        target=registry.register, args=("first", spawn_thread(stop.wait))
    )  # delivers its own event, so it holds the turn while `slow` blocks
    first.start()
    try:
        assert in_listener.wait(30)
        for i in range(10):  # queued behind the slow listener
            registry.register(f"k{i}", spawn_thread(stop.wait))
        assert len(registry._delivery.pending) == 10
        registry.close()
    finally:
        release.set()
        first.join(30)
        stop.set()
    queue = registry._delivery
    _until(lambda: not queue.pending and not queue.busy, "the queue emptied")
    with queue._lock:  # the turn: taken once the last deliverer has ended its own
        assert heard == ["first"], heard
