"""What the failover no-resurrection tests share: the listener that records every
event (and a marker key to flush them), and the owners Redis holds."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from foundation.registry import RegistryEvent
from tests.redis_support import RedisServer


class Heard:
    """Every event of a node's or an observer's listeners, and a marker key to
    flush them."""

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []
        self.lock = threading.Lock()
        self.marked = threading.Event()

    def __call__(self, event: RegistryEvent) -> None:
        with self.lock:
            self.events.append(event)
        if event.entry.key == "marker":
            self.marked.set()

    def of(self, key: Hashable) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(e.kind, e.reason) for e in self.events if e.entry.key == key]


def owners(server: RedisServer, ns: str) -> set[str]:
    """The keys namespace ``ns`` holds an owner for (JSON-encoded)."""
    return {k.decode() for k in server.command("HKEYS", f"{{{ns}}}:owner")}
