"""Hold a ``RedisRegistry`` node's tail thread behind the change stream.

Tests of races with a node whose tail has not yet applied what other nodes
wrote once held the tail in a listener. Listeners no longer run on the tail
(a courier thread runs them: a slow listener never stalls the mirror), so
such a test holds the tail thread itself: once it has applied a batch that
brought ``key`` into the mirror, it waits until released. Only that thread
waits, as with the listener: the node's writes, reads and lease go on.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

__all__ = ["TailHold"]


class TailHold:
    """``hold = TailHold(reg, key)``: ``reg``'s tail waits, after the batch that
    brought ``key`` into its mirror, until ``hold.release`` is set (``timeout``
    seconds at most); ``hold.stalled`` is set while it waits."""

    def __init__(self, reg: Any, key: Hashable, timeout: float = 30.0) -> None:
        self.stalled = threading.Event()
        self.release = threading.Event()
        tail, entries = reg._tail, reg._sh.entries
        apply_batch = tail._apply_batch

        def held(gen: int, resp: list[Any]) -> bool:
            only_own: bool = apply_batch(gen, resp)
            if not self.stalled.is_set() and key in entries:
                self.stalled.set()
                self.release.wait(timeout)
            return only_own

        tail._apply_batch = held  # the tail thread looks it up on each batch
