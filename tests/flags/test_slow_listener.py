"""A slow ``subscribe`` listener stalls no writer of the same FeatureFlags.

Before, every write called the listeners holding the FeatureFlags lock: a
listener blocked in one thread's write made every other thread's write (and
``load_from_config``) wait for it. Now a change is queued under the lock and
delivered after it, by one thread at a time: the other writers return at once
and their changes reach the listener, in order, once it returns (from a
courier thread: the delivering writer delivers only the changes queued before
its turn).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foundation import FeatureFlags, Flag
from foundation.flags import FlagChange
from tests.contract.agents import wait_until


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_a_blocked_listener_stalls_no_other_writer() -> None:
    flags = FeatureFlags([Flag("x"), Flag("y"), Flag("z")])
    release, held = threading.Event(), threading.Event()
    heard: list[tuple[str, str | None, str]] = []

    def slow(change: FlagChange) -> None:
        heard.append((change.flag, change.by, threading.current_thread().name))
        if change.flag == "x":
            held.set()
            release.wait(30)

    flags.subscribe(slow)
    first, first_done = _in_thread(lambda: flags.enable("x", by="first"))
    try:
        assert held.wait(10), "the listener never got x"
        # The listener blocks the first writer (it delivers its own change);
        # the other writers go on, and reads see their writes at once.
        _, done = _in_thread(lambda: flags.set_percentage("y", 30, by="second"))
        assert done.wait(10), "a write waited for a listener running in another thread"
        assert flags.state("y").percentage == 30
        flags.load_from_config({"z": True}, env=None)  # this thread: not stalled either
        assert flags.enabled("z")
        assert heard == [("x", "first", first.name)]
    finally:
        release.set()
    assert first_done.wait(10)
    first.join(10)
    # The first writer delivered its own change only; a courier delivers the
    # later ones, in order (the writer's call returned: it never delivers
    # other writers' changes queued during its turn, which could go on for ever).
    assert wait_until(lambda: len(heard) == 3, 10), heard
    assert heard == [
        ("x", "first", first.name),
        ("y", "second", "foundation-flags-events"),
        ("z", "config", "foundation-flags-events"),
    ]
    flags.close()


def test_a_listener_that_writes_gets_its_own_change_after_the_current_one() -> None:
    flags = FeatureFlags([Flag("x"), Flag("y")])
    heard: list[str] = []

    def listener(change: FlagChange) -> None:
        heard.append(change.flag)
        if change.flag == "x":
            flags.enable("y")  # no lock held here: the write goes through
            assert flags.enabled("y")
            assert heard == ["x"]  # its change comes after this one returns

    flags.subscribe(listener)
    flags.enable("x")
    assert heard == ["x", "y"]  # both delivered before the outer write returns
    flags.close()
