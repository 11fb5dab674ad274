"""The event list in ``foundation.telemetry``'s docs names every flag store event emitted."""

from __future__ import annotations

import re
from pathlib import Path

from foundation import telemetry

_STORE_SOURCES = Path(__file__).resolve().parent.parent / "src/foundation/flags/_redis_store"


def _store_events() -> set[str]:
    """The ``what`` of every ``self._event(what, ...)`` call of the Redis flag store."""
    found: set[str] = set()
    for path in _STORE_SOURCES.glob("*.py"):
        found.update(re.findall(r"self\._event\(\s*\"(\w+)\"", path.read_text()))
    return found


def test_every_flag_store_event_is_listed() -> None:
    events = _store_events()
    assert {"stale", "in_sync", "read_only", "writable"} <= events  # the scan finds them
    listed = " ".join((telemetry.__doc__ or "").split())
    missing = sorted(e for e in events if f"``foundation.flags.{e}``" not in listed)
    assert missing == []
