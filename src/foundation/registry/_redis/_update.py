"""``update_metadata``'s write path: sending UPDATE (re-asserting first a live
registration of this node that Redis lost) and applying its reply to the mirror."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from foundation._listeners import _write_tags
from foundation.errors import FoundationError
from foundation.liveness import is_alive
from foundation.registry._redis._codec import s
from foundation.registry._redis._mirror import same_registration
from foundation.registry._redis._shared import Shared
from foundation.registry._types import Entry, RegistryEvent, new_entry

if TYPE_CHECKING:
    from foundation.registry._redis._lease import Lease

__all__ = ["apply_update", "send_update"]


def send_update(sh: Shared, lease: Lease, key: Hashable, argv: list[Any]) -> Any:
    """Run UPDATE for ``key`` (holding wlock); a live registration of this node
    that Redis lost is re-asserted first. A failure asks for a resync."""
    doing = f"updating {key!r:.200}"
    try:
        reply = sh.write_script("update", argv, doing)
        if reply[0] == b"NOTREG" and _held_here(sh, key) and not _deleted_unseen(sh, key):
            # Redis lost our live registration (it restarted empty, or our
            # lease was reaped) although lookup returns it: recover (which
            # re-asserts it with its current metadata), then update.
            sh.link.lease_lost(f"Redis lacks our live registration {key!r:.200}")
            lease.recover_locked()
            reply = sh.write_script("update", argv, doing)
    except FoundationError:
        sh.link.resync_needed(f"the outcome of updating {key!r:.200} is unknown")
        raise
    return reply


def _deleted_unseen(sh: Shared, key: Hashable) -> bool:
    """A delete of this node's registration of ``key`` is on the stream past our
    tail's position (holding wlock): another node unregistered it and our tail
    has not applied that yet. Then Redis did not lose it: re-asserting it would
    undo that unregister.

    Race: the tail may apply the record meanwhile (the answer stays right).
    A stream trimmed past our position finds nothing: as before, recover.
    """
    own = sh.own.get(key)
    if own is None:
        return False
    with sh.mlock:
        start = sh.sid
    records = sh.call(
        f"looking for a delete of {key!r:.200} on the change stream",
        sh.client.xrange,
        sh.k_log,
        min="(" + s(start),
        max="+",
        count=int(sh.maxlen),
    )
    ek, head = own.ek.encode(), own.head.encode()
    # A head of "" (Redis had lost it) names whatever the node in "n" held.
    # Race: another node's heartbeat reaped our expired lease (we were frozen)
    # and our tail has not applied it yet: that delete (``lease_expired``) is
    # no unregister; our live agent's registration is re-asserted, as the
    # recovery does (``Lease._drop_deleted_unseen``), not NotRegistered.
    return any(
        f.get(b"op") == b"d"
        and f.get(b"k") == ek
        and f.get(b"dr") != b"lease_expired"
        and (f.get(b"h") == head or (f.get(b"h") == b"" and f.get(b"n") == sh.node_b))
        for _, f in records
    )


def _held_here(sh: Shared, key: Hashable) -> bool:
    """``key`` is a live registration of this node that the mirror shows."""
    own = sh.own.get(key)
    held = sh.entries.get(key)
    return (
        own is not None
        and not own.pending
        and held is not None
        and held.node == sh.node
        and is_alive(own.agent)
    )


def apply_update(
    sh: Shared,
    key: Hashable,
    ek: str,
    reply: Any,
    *,
    frozen: Mapping[str, Any],
    meta: bytes,
    ix: str,
) -> None:
    """Apply UPDATE's OK ``reply`` to the mirror (holding wlock); its event
    is queued under the same mlock."""
    v = int(reply[1])
    sh.written = v
    with sh.applied:  # holds mlock
        own = sh.own.get(key)
        if own is not None:
            own.meta, own.ix = meta, ix
        caught_up = _caught_up(sh, key, ek, reply, v)
        sh.note_own_write(v)
        if caught_up:
            _put_updated(sh, key, ek, reply, frozen=frozen, meta=meta)
    if not caught_up:
        # The tail stalled (Redis failing): a snapshot brings the mirror up
        # to Redis, this update included.
        sh.link.resync_needed(f"the mirror lags behind the update of {key!r:.200}")


def _caught_up(sh: Shared, key: Hashable, ek: str, reply: Any, v: int) -> bool:
    """The mirror may take UPDATE's ``reply`` (version ``v``) for ``key`` now
    (holding mlock, through ``sh.applied``): it applied every record before
    ``v``, or it shows no entry of ``key`` or the very registration Redis
    updated. Else this waits (up to ``op_timeout``) for the tail to apply them.

    Race (a node kept a registration Redis had replaced or deleted, for
    ever): our mirror still showed this node's registration A of ``key``
    while another node had replaced it by B (its delete of A and its
    registration of B on the stream, not yet applied by our tail). UPDATE
    changed B's metadata; the mirror put A with it at version ``v``, and the
    tail then skipped the older delete and registration as already applied:
    A stayed (no "unregistered" event, its monitor kept), a later delete of B
    was taken for "another registration than our live one" and kept it too,
    and the next UPDATE found NOTREG and re-asserted (a false lease_lost).
    The same held a remote entry the mirror had not seen replaced. So the
    update waits for the tail to apply them first (with their events, in
    Redis's order); the common case (the same registration) waits for
    nothing: whatever our tail has not applied yet for it, this update
    supersedes (metadata is replaced whole). Nor does an entry the mirror
    has not seen yet (built from the reply: nothing shown here is kept).
    """
    if sh.tail_v >= v - 1 or not _shows_another(sh, key, ek, reply):
        return True
    return sh.applied.wait_for(lambda: sh.tail_v >= v - 1, timeout=sh.op_timeout)


def _shows_another(sh: Shared, key: Hashable, ek: str, reply: Any) -> bool:
    """The mirror shows an entry of ``key`` that is not (or not surely) the
    registration whose head UPDATE's ``reply`` names (holding mlock)."""
    held = sh.entries.get(key)
    if held is None:
        return False
    if len(reply) < 4 or reply[3] is None:
        return True  # Redis lost the head: no telling
    try:
        named = sh.entry_from_head(key, ek, s(reply[3]), b"{}", [])
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError):
        return True
    return named is None or not same_registration(held, named)


def _put_updated(
    sh: Shared, key: Hashable, ek: str, reply: Any, *, frozen: Mapping[str, Any], meta: bytes
) -> None:
    """Put the entry of ``key`` with UPDATE's metadata into the mirror and queue
    its event (holding mlock), unless a newer record was applied already."""
    v = int(reply[1])
    m = sh.mirror
    if not m.is_newer(key, v):
        return
    if sh.holds.held:
        # A held entry (see _holds) this node updated: Redis has it, shown now
        # (told ``registered``); its hold ends here, or the tail, on a later
        # update record of the key, told it ``registered`` a second time.
        sh.holds.take(key)
    known = key in sh.entries
    new = _updated_entry(sh, key, ek, reply, frozen=frozen, meta=meta)
    if new is None:
        return
    m.put(new, v)
    # An entry this mirror had not seen yet (its registration record,
    # older, will be skipped) appears here: for local listeners it is
    # registered.
    if sh.listeners:
        kind: Literal["updated", "registered"] = "updated" if known else "registered"
        sh.queue([RegistryEvent(kind, new)], _write_tags.tag)


def _updated_entry(
    sh: Shared, key: Hashable, ek: str, reply: Any, *, frozen: Mapping[str, Any], meta: bytes
) -> Entry | None:
    """The entry of ``key`` with its new metadata after UPDATE (holding mlock)."""
    old = sh.entries.get(key)
    if old is not None:
        return new_entry(key, old.agent, frozen, old.registered_at, old.node)
    # Our mirror has not seen this (remote) entry yet: build it
    # from the reply; the older record will be skipped. Redis may have lost
    # its head (None): then its owner writes it back, and the tail brings it.
    if len(reply) < 4 or reply[3] is None:
        return None
    try:
        return sh.entry_from_head(key, ek, s(reply[3]), meta, [])
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError):
        # A head nobody can read (written by something else): no entry to show
        # (the update itself was made); raised, it leaked out of update_metadata.
        return None
