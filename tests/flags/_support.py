"""Helpers for the flag tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Flag, FlagChange

FLAGS = (
    Flag("beta", description="a beta feature"),
    Flag("dark_mode", default=True),
    Flag("new_checkout"),
    *DEFAULT_FLAGS,
)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)  # sleep-ok: polling with a deadline


def check_concurrent_pins_chain(
    one: FeatureFlags, two: FeatureFlags, watcher: FeatureFlags, heard: list[FlagChange]
) -> None:
    """Two writers pin 40 actors each on "beta" at once: the history is ONE chain
    (each record's ``old`` is the previous record's ``new``, one actor added per
    record), and ``watcher``'s listener (``heard``) hears exactly that history."""

    def pin(flags: FeatureFlags, prefix: str) -> None:
        for i in range(40):
            flags.allow("beta", f"{prefix}{i}")

    threads = [
        threading.Thread(target=pin, args=(flags, prefix))
        for flags, prefix in ((one, "one-"), (two, "two-"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = watcher.history("beta")
    assert len(history) == 80
    for before, after in itertools.pairwise(history):
        assert after.old == before.new  # every base is the previous commit's state
        assert len(after.new.allow - after.old.allow) == 1
    wait_until(lambda: len(heard) >= 80, timeout=60)
    assert heard == history
    last = history[-1].new  # every process converges on it (the others' changes are pushed)
    wait_until(lambda: one.state("beta") == two.state("beta") == watcher.state("beta") == last)
