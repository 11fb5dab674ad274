"""Applying a write script's reply to the mirror (functions on ``Shared``).

The writer applies the result of its own write at once (read-your-writes):
``finish`` a REGISTER (or one REGISTER_MANY item's own) reply,
``apply_unregister`` an UNREGISTER reply; the events they make are queued
under the same ``mlock`` as the change (in mirror order).
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from foundation._listeners import _write_tags
from foundation.errors import AlreadyRegistered, BackendUnavailable, RegistryError
from foundation.registry._redis._codec import RemoteAgent, s
from foundation.registry._redis._prepare import Prepared
from foundation.registry._redis._shared import Own, Shared
from foundation.registry._types import Entry, RegistryEvent, new_entry
from foundation.registry._validation import metadata_from_json

__all__ = [
    "apply_ok",
    "apply_unregister",
    "demonitor_replaced",
    "died_meanwhile",
    "finish",
    "note_registered",
    "ok_entry",
]


def finish(sh: Shared, p: Prepared, reply: Any) -> RegistryError | None:
    """Apply the script's ``reply`` for ``p`` to the mirror (holding wlock);
    the error of a refused registration (its local state undone), else None.
    ``p.died``: the agent died while the script ran (the caller deletes it)."""
    if reply[0] != b"OK":
        return _refused(sh, p, reply)
    entry = ok_entry(sh, p, reply)
    # Race: a listener subscribed while this call runs may miss its events (as
    # on every backend); with no listener, no event objects are built at all.
    events: list[RegistryEvent] | None = [] if sh.listeners else None
    with sh.mlock:
        apply_ok(sh, p, reply, entry, events)
        if events:  # in mirror order: queued under the same mlock
            sh.queue(events, _write_tags.tag)
    demonitor_replaced(p.prev)
    return None


def ok_entry(sh: Shared, p: Prepared, reply: Any) -> Entry:
    """The entry of ``p``, registered by the OK ``reply`` (holding wlock, not
    mlock): ``p``'s local state notes the reply."""
    own = p.own
    own.pending = False
    own.at = s(reply[5])
    sh.written = max(sh.written, int(reply[1]))
    return new_entry(p.key, p.agent, p.frozen, p.registered_at, sh.node)


def apply_ok(
    sh: Shared, p: Prepared, reply: Any, entry: Entry, events: list[RegistryEvent] | None
) -> None:
    """Apply ``finish``'s OK ``reply`` for ``p`` (``entry``: ``ok_entry``) to the
    mirror (holding wlock and mlock); its events go to ``events`` (None: no
    listener). ``p.died`` as in ``finish``."""
    key = p.key
    v, first = int(reply[1]), int(reply[2])
    held = sh.own.get(key) is p.own
    p.died = not held and died_meanwhile(sh, p)
    if sh.holds.held:
        # A held entry (see _holds: never shown, never told): Redis holds this
        # write now, not it, whether the script dropped it (``first``) or found
        # the key free (its delete on the stream, which the tail then skips as
        # older than this write): its time being up must not show it.
        sh.holds.take(key)
    if first:
        _apply_dropped(sh, key, first, reply, events)
    m = sh.mirror
    if held and m.is_newer(key, v):
        old = m.put(entry, v)
        if events is not None:
            note_registered(old, entry, events)
    sh.own_records_applied(first or v, v, reply[5])  # the drop record is v - 1
    sh.note_own_write(v)


def died_meanwhile(sh: Shared, p: Prepared) -> bool:
    """``p``, no longer this node's registration of its key, went because its
    agent died while its script ran (its monitor fired: ``on_down`` queued
    its delete, which only a writer flushes, and we hold wlock), not because
    another node's delete of it reached the tail first (holding mlock).

    Race: in that second case the registration was made, then removed by
    another node (the tail applied that newer record, with its event):
    the call succeeded; its agent is alive and no ``NotAlive`` is due.
    """
    pending = sh.pending_downs.get(p.key)
    return pending is not None and pending[1] == p.own.head


def _apply_dropped(
    sh: Shared, key: Hashable, first: int, reply: Any, events: list[RegistryEvent] | None
) -> None:
    """Remove the previous holder of ``key`` that REGISTER's ``reply`` dropped at
    version ``first`` (holding mlock); its event goes to ``events`` (None: no
    listener)."""
    m = sh.mirror
    if m.is_newer(key, first):
        old = m.remove(key, first)
        if old is not None and events is not None:
            events.append(sh.removed_event(old, s(reply[3]), s(reply[4]), "", ""))


def _refused(sh: Shared, p: Prepared, reply: Any) -> RegistryError:
    """The error of a registration the script refused (``reply`` not OK), its
    local state undone (holding wlock)."""
    key, own = p.key, p.own
    if reply[0] == b"EXISTS":
        sh.forget_own(key, own, p.prev)
        return AlreadyRegistered(key, _entry_from_reply(sh, key, reply))
    sh.forget_own(key, own, p.prev)
    return BackendUnavailable(f"unexpected reply from Redis at {sh.url}: {reply!r:.200}")


def _entry_from_reply(sh: Shared, key: Hashable, reply: list[Any]) -> Entry | None:
    """The live entry named in an EXISTS reply (ours from the mirror, else remote)."""
    local = sh.entries.get(key)
    owner = s(reply[1])
    if local is not None and local.node == owner:
        return local
    try:
        head = json.loads(reply[2])
        a = head.get("a") or {}
        agent = RemoteAgent(owner, a.get("kind", "?"), a.get("pid"), a.get("name"))
        return new_entry(key, agent, metadata_from_json(reply[3]), head.get("t", 0.0), owner)
    except (TypeError, ValueError):
        return None


def apply_unregister(sh: Shared, key: Hashable, v: int, own: Own | None) -> Own | None:
    """Apply UNREGISTER's reply ``v`` for ``key`` to the mirror and queue its one
    event (holding mlock); ``own``: our registration of the key the caller
    marked ``unregistering`` (None if none). Returns ``own`` if this call
    removed it (its monitor is the caller's to release), else None.

    Races, each settled here so that the return value, this node's event and
    the other nodes' (the script's record) agree:

    - our agent died while the script ran (``own.died``): ``on_down`` left it
      to us. Redis removed the key as "unregistered" (``v``): that is the
      reason everywhere; nothing is left to delete (no delete job was queued).
    - the tail applied another node's delete of our registration while the
      script ran (it forgot ``own`` and queued that removal's event): our
      script found nothing (0), no event here, False.
    - the lease thread's delete of a dead agent cannot run meanwhile (it
      needs the wlock the caller holds), and its record, like ours, is
      skipped by our tail (this node wrote it): the mirror changes only here.
    """
    mine = own if own is not None and sh.own.get(key) is own else None
    if mine is not None:
        del sh.own[key]
        mine.died = None  # (see above: Redis said "unregistered", or had nothing)
    m = sh.mirror
    old: Entry | None = None
    sh.note_own_write(v)  # (0, no record: nothing)
    if v and sh.holds.held:
        # A held entry (see _holds: never shown, never told) that this node
        # deleted: Redis no longer has it, so its time being up must not show it.
        sh.holds.take(key)
    if v and m.is_newer(key, v):
        sh.written = v
        old = m.remove(key, v)
    elif not v and mine is not None:
        # Redis lost it (restarted, not yet re-asserted): still ours.
        old = m.remove(key, m.versions.get(key, m.floor))
    if old is not None and sh.listeners:
        sh.queue([RegistryEvent("unregistered", old, reason="unregistered")], _write_tags.tag)
    return mine


def note_registered(old: Entry | None, entry: Entry, events: list[RegistryEvent]) -> None:
    """Append the events of ``entry`` put in the mirror over ``old`` (None if none)."""
    if old is not None:
        events.append(RegistryEvent("unregistered", old, reason="replaced"))
    events.append(RegistryEvent("registered", entry))


def demonitor_replaced(prev: Own | None) -> None:
    """Stop watching ``prev``, a registration this node held that Redis just replaced."""
    if prev is not None and prev.monitor is not None:
        prev.monitor.demonitor()  # its registration was just replaced in Redis
