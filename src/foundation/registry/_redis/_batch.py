"""``register_many``'s write path: one pipelined round trip per round of distinct keys.

A round claims its keys locally (``_claims.begin_all``), sends ``REGISTER_MANY``
in chunks of ``_CHUNK`` items, applies the replies (the free keys of a chunk
in bulk, under one ``mlock``), and sends once more the items that found this
node's lease lost, after a recovery.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation._listeners import _write_tags
from foundation.errors import BackendUnavailable, FoundationError, NotAlive, RegistryError
from foundation.registry._redis import _scripts
from foundation.registry._redis._claims import begin_all
from foundation.registry._redis._codec import s
from foundation.registry._redis._prepare import Prepared
from foundation.registry._redis._replies import (
    apply_ok,
    demonitor_replaced,
    died_meanwhile,
    finish,
    note_registered,
    ok_entry,
)
from foundation.registry._redis._shared import Shared
from foundation.registry._types import RegistryEvent, new_entry

if TYPE_CHECKING:
    from foundation.registry._redis._lease import Lease

__all__ = ["register_round"]


_CHUNK: Final = 500  # items per REGISTER_MANY script call (see _pipelined)


def register_round(
    sh: Shared,
    lease: Lease,
    items: list[tuple[int, Prepared]],
    replace: bool,
    outcomes: list[RegistryError | None],
) -> None:
    """Register ``items`` (distinct keys) in one pipelined round trip."""
    died: list[Prepared] = []
    try:
        failure = _register_round_locked(sh, lease, items, replace, outcomes, died)
    finally:
        sh.deliver()  # once every lock is released, in mirror order
    if failure is not None:
        raise failure


def _register_round_locked(  # noqa: PLR0917 - the method's arguments, sh and lease
    sh: Shared,
    lease: Lease,
    items: list[tuple[int, Prepared]],
    replace: bool,
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> BaseException | None:
    """``register_round`` holding wlock; returns the failure to raise."""
    with sh.writing():
        sent = begin_all(sh, lease, items, replace, outcomes)
        failure, todo = _send_round(sh, lease, sent, replace, outcomes=outcomes, died=died)
        if failure is not None:
            # Nothing unconfirmed stays here: undo every item without an outcome.
            for _, p in todo:
                sh.forget_own(p.key, p.own, p.prev)
            sh.link.resync_needed("the outcome of a register_many is unknown")
        else:
            for p in died:
                # Race: the agent died while the script ran: delete it now.
                with contextlib.suppress(FoundationError):
                    lease.flush_pending_down(p.key)
    return failure


def _send_round(
    sh: Shared,
    lease: Lease,
    sent: list[tuple[int, Prepared]],
    replace: bool,
    *,
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> tuple[BaseException | None, list[tuple[int, Prepared]]]:
    """Send ``sent`` and apply the replies (holding wlock), once more after a
    lost lease; returns the first failure and the items left without an outcome."""
    failure: BaseException | None = None
    todo = sent
    lease_retried = False
    while todo and failure is None:
        try:
            replies, bulk_records = _pipelined(sh, todo, replace)
        except BaseException as exc:
            failure = exc
            break
        failure, again = _settle(
            sh, todo, replies, lease_retried=lease_retried, outcomes=outcomes, died=died
        )
        with sh.mlock:  # their entries are in the mirror now (_settle)
            for first, last, sid in bulk_records:
                sh.own_records_applied(first, last, sid)
                sh.note_own_write(first)
        if again and failure is None:
            # Our lease was lost (we were frozen or cut off): recover (which
            # re-asserts everything else we hold), then send those once more.
            lease_retried = True
            sh.link.lease_lost("a write found our lease gone")
            try:
                lease.recover_locked()
            except BaseException as exc:
                failure = exc
        todo = again
    return failure, todo


def _settle(
    sh: Shared,
    todo: list[tuple[int, Prepared]],
    replies: list[Any],
    *,
    lease_retried: bool,
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> tuple[BaseException | None, list[tuple[int, Prepared]]]:
    """Apply one round's replies; returns the first failure and the items to
    send again after a lost lease (none once ``lease_retried``)."""
    failure: BaseException | None = None
    again: list[tuple[int, Prepared]] = []
    bulk: list[tuple[int, Prepared, int]] = []
    held: list[tuple[int, Prepared, Any]] = []  # a held key's OK reply
    for (i, p), reply in zip(todo, replies, strict=True):
        if type(reply) is int:
            bulk.append((i, p, reply))  # the common case, applied below at once
        elif isinstance(reply, BaseException):
            failure = failure or sh.reply_error(reply, f"registering {p.key!r:.200}")
            sh.forget_own(p.key, p.own, p.prev)
        elif reply[0] == b"NOLEASE" and not lease_retried:
            again.append((i, p))
        elif reply[0] == b"OK":
            held.append((i, p, reply))  # applied below, in input order with the bulk
        else:  # refused (nothing changed: no event)
            error = _settle_one(sh, i, p, reply, outcomes=outcomes, died=died)
            failure = failure or error
    if held:
        _settle_in_order(sh, held, bulk, outcomes, died)
    elif bulk:
        _settle_bulk(sh, bulk, outcomes, died)
    return failure, again


def _settle_one(
    sh: Shared,
    i: int,
    p: Prepared,
    reply: Any,
    *,
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> BackendUnavailable | None:
    """Apply item ``i``'s own reply (not a bulk one); its outcome goes to
    ``outcomes[i]`` unless Redis failed it (that failure is returned)."""
    error = finish(sh, p, reply)
    if isinstance(error, BackendUnavailable):
        return error
    if p.died:
        outcomes[i] = NotAlive(p.key, p.agent)
        died.append(p)
    else:
        outcomes[i] = error
    return None


def _settle_bulk(
    sh: Shared,
    bulk: list[tuple[int, Prepared, int]],
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> None:
    """Apply the bulk replies of one round; an agent that died meanwhile is NotAlive."""
    _finish_bulk(sh, bulk)
    for i, p, _ in bulk:
        if p.died:
            outcomes[i] = NotAlive(p.key, p.agent)
            died.append(p)


def _settle_in_order(
    sh: Shared,
    held: list[tuple[int, Prepared, Any]],
    bulk: list[tuple[int, Prepared, int]],
    outcomes: list[RegistryError | None],
    died: list[Prepared],
) -> None:
    """Apply the OK replies of a round's held keys (``held``) and its bulk
    replies (holding wlock) in input order, under one ``mlock``.

    Redis wrote a chunk's held keys first (one by one), then its free keys
    (one bulk record): applied in that order, a replacement was heard before
    the registrations of free keys given before it. In input order the
    events are those of ``register`` calls, as ``MemoryRegistry`` queues
    them. Race: one ``mlock`` for the whole round, so a change the tail
    applies (another node's, to one of these keys) is queued before or after
    all of them, never between a key's change and its event."""
    entries = {i: ok_entry(sh, p, reply) for i, p, reply in held}
    if bulk:
        sh.written = max(sh.written, bulk[-1][2])  # versions ascend in batch order
    # Race: as in finish, a listener subscribed meanwhile may miss these events.
    events: list[RegistryEvent] | None = [] if sh.listeners else None
    items = sorted([*held, *bulk], key=lambda item: item[0])  # (each list is in input order)
    with sh.mlock:
        for i, p, reply in items:
            if type(reply) is int:
                _apply_bulk_one(sh, p, reply, events)
            else:
                apply_ok(sh, p, reply, entries[i], events)
        if events:  # in mirror order: queued under the same mlock
            sh.queue(events, _write_tags.tag)
    for i, p, _ in items:
        demonitor_replaced(p.prev)
        if p.died:
            outcomes[i] = NotAlive(p.key, p.agent)
            died.append(p)


def _apply_bulk_one(sh: Shared, p: Prepared, v: int, events: list[RegistryEvent] | None) -> None:
    """``_finish_bulk`` for one item, registered at version ``v`` (holding mlock)."""
    p.own.pending = False  # (read only by writers, and we hold wlock)
    key = p.key
    if sh.holds.held:
        sh.holds.take(key)  # a held entry of a key Redis had free: see apply_ok
    if sh.own.get(key) is not p.own:
        p.died = died_meanwhile(sh, p)
        return
    m = sh.mirror
    if m.is_newer(key, v):
        entry = new_entry(key, p.agent, p.frozen, p.registered_at, sh.node)
        old = m.put(entry, v)
        if events is not None:
            note_registered(old, entry, events)


def _finish_bulk(sh: Shared, done: list[tuple[int, Prepared, int]]) -> None:
    """Apply REGISTER_MANY's bulk replies (each item registered at its version,
    nothing displaced) to the mirror under one ``mlock`` (holding wlock); as
    ``finish`` does for one reply. ``p.died`` as there."""
    node = sh.node
    sh.written = max(sh.written, done[-1][2])  # versions ascend in batch order
    # Race: as in finish, a listener subscribed meanwhile may miss these events.
    listening = bool(sh.listeners)
    events: list[RegistryEvent] = []
    with sh.mlock:
        m = sh.mirror
        own = sh.own
        versions, floor, put = m.versions, m.floor, m.put
        # A held entry of a key Redis had free (see apply_ok): the write ends it.
        holds = sh.holds if sh.holds.held else None
        for _, p, v in done:
            p.own.pending = False  # (read only by writers, and we hold wlock)
            key = p.key
            if holds is not None:
                holds.take(key)
            if own.get(key) is not p.own:
                p.died = died_meanwhile(sh, p)
                continue
            if v > versions.get(key, floor):  # m.is_newer(key, v)
                entry = new_entry(key, p.agent, p.frozen, p.registered_at, node)
                old = put(entry, v)
                if listening:
                    note_registered(old, entry, events)
        if events:  # in mirror order: queued under the same mlock
            sh.queue(events, _write_tags.tag)
    for _, p, _ in done:
        if p.prev is not None:
            demonitor_replaced(p.prev)


def _pipelined(
    sh: Shared, items: list[tuple[int, Prepared]], replace: bool
) -> tuple[list[Any], list[tuple[int, int, Any]]]:
    """One round trip: ``REGISTER_MANY`` over every item (chunks of
    ``_CHUNK`` items, pipelined, so no one script blocks Redis for long);
    a reply per item, an exception for the items of a failed chunk; and
    ``(first, last, stream id)`` of each bulk record written, in chunk order."""
    script = sh.scripts["register_many"]
    chunks = _chunks(sh, items, replace)
    replies = _send(sh, chunks, script.sha)
    missing = [j for j, r in enumerate(replies) if isinstance(r, sh.noscript)]
    if missing:
        # Redis restarted or flushed its scripts: those chunks did not run.
        # Load the script and send them again (only them: the others ran).
        script.sha = sh.call("loading a script", sh.client.script_load, script.script)
        again = _send(sh, [chunks[j] for j in missing], script.sha)
        for j, reply in zip(missing, again, strict=True):
            replies[j] = reply
    out: list[Any] = []
    bulk_records: list[tuple[int, int, Any]] = []
    for chunk, reply in zip(chunks, replies, strict=True):
        if isinstance(reply, BaseException):
            out += [reply] * len(chunk.items)
            continue
        *per_item, (first, last, sid) = reply  # REGISTER_MANY's last element
        if first:
            bulk_records.append((int(first), int(last), sid))
            # The bulk record registered every item answered by a version.
            at = s(sid)
            mine = items[len(out) : len(out) + len(per_item)]  # this chunk's items
            for (_, p), r in zip(mine, per_item, strict=True):
                if type(r) is int:
                    p.own.at = at
        out += per_item
    return out, bulk_records


def _chunks(
    sh: Shared, items: list[tuple[int, Prepared]], replace: bool
) -> list[_scripts.RegisterManyArgs]:
    """The ``REGISTER_MANY`` arguments for ``items``, ``_CHUNK`` items per script."""
    mode: Literal["n", "r"] = "r" if replace else "n"
    chunks = []
    for i in range(0, len(items), _CHUNK):
        owns = [p.own for _, p in items[i : i + _CHUNK]]
        chunks.append(
            _scripts.RegisterManyArgs(
                sh.maxlen,
                sh.node,
                sh.node,
                sh.grace_ms,
                mode,
                "".join(["1" if p.own_dead else "0" for _, p in items[i : i + _CHUNK]]),
                [(o.ek, o.head, o.meta, o.ix) for o in owns],
            )
        )
    return chunks


def _send(sh: Shared, chunks: list[_scripts.RegisterManyArgs], sha: str) -> list[Any]:
    # EVALSHA by hand: redis-py's pipelined Script asks SCRIPT EXISTS first,
    # a second round trip.
    pipe = sh.client.pipeline(transaction=False)
    for chunk in chunks:
        pipe.evalsha(sha, 1, *sh.keys, *chunk.argv())
    replies: list[Any] = sh.call("registering a batch", pipe.execute, raise_on_error=False)
    return replies
