"""Other nodes' entries a resync's snapshot lacks: kept one lease round, then told truly.

Redis can come back without writes it had acknowledged: restarted empty or
from an older snapshot (RDB/AOF), or a failover to a replica that missed them.
A snapshot taken then lacks registrations whose owners still hold them; each
owner writes its live ones back (re-asserts) at its own recovery, within a
lease round. Dropped at once, every other mirror told a live registration
``unregistered`` (reason ``"unregistered"``: an unregister nobody made), then
``registered`` again a moment later; and an agent that died meanwhile was told
``"unregistered"`` too.

So a resync (a ``RedisRegistry`` node's tail, a ``RedisObserver``) treats an
entry of another node that the snapshot lacks as follows:

- the stream past the mirror's position holds the delete record of that
  registration (the mirror was only behind: a cut connection, a slow tail):
  removed with that record's event, as the tail would have;
- otherwise, if Redis lost writes (``lost``: its change counter went back; a
  stream merely trimmed past the mirror keeps the old behaviour: removed as
  ``"unregistered"``), it is **kept** (lookups answer it: it is what its owner asserts)
  and forgotten as soon as a change record of its key is applied (the owner's
  re-assert: no event, or ``updated``; a delete or another registration: that
  record's events) or a later snapshot holds the key;
- still missing one round after it went missing (never extended by later
  resyncs, so an unregister Redis lost is masked one round at most; stretched
  once to its owner's lease if that has longer left: see ``Vanished.drop``), it is
  dropped as ``"down"``: ``Down("lease_expired")`` when its owner's lease is
  gone (the owner died), else ``Down("noproc")``: the owner lives and did not
  write it back, so no live agent of its backs it (its agent died, or it was
  unregistered, while Redis lacked it). The owner's orphan clean-up reports a
  registration no live agent backs with that same ``Down``; no reason of the
  contract says "ended, cause lost with Redis's data".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final

from foundation.liveness import Down
from foundation.registry._redis._codec import decode_key
from foundation.registry._redis._mirror import Mirror
from foundation.registry._redis._shared import UNREADABLE, _down_from, expand_record
from foundation.registry._types import Entry, RegistryEvent, UnregisterReason

__all__ = [
    "DEFAULT_ROUND_S",
    "Vanished",
    "deleted",
    "lease_holders",
    "lost",
    "missing",
    "removed_event",
]

DEFAULT_ROUND_S: Final = 5.0 + 5.0 / 3
"""One lease round at ``RedisRegistry``'s defaults (``lease_ttl`` 5 s plus one
heartbeat): how long a ``RedisObserver``, which knows no ``lease_ttl``, keeps
a vanished entry."""

Call = Callable[..., Any]
"""``call(doing, fn, *args)``: a Redis call whose failure is a ``FoundationError``."""


def removed_event(old: Entry, f: Mapping[bytes, bytes]) -> RegistryEvent:
    """The ``unregistered`` event the delete record ``f`` means for ``old``."""
    why = f.get(b"why", b"").decode()
    reason: UnregisterReason = why if why in ("replaced", "down") else "unregistered"  # type: ignore[assignment]
    dr = f.get(b"dr", b"").decode()
    down = None
    if reason == "down" and dr:
        down = _down_from(dr, f.get(b"dc", b"").decode(), f.get(b"ds", b"").decode())
    return RegistryEvent("unregistered", old, reason=reason, down=down)


def _deletes(held: Entry, f: Mapping[bytes, bytes]) -> bool:
    """The delete record ``f`` removed the registration ``held`` (a lost head,
    ``""``, removed whatever its owner held)."""
    if f.get(b"n", b"").decode() != held.node:
        return False
    head = f.get(b"h", b"")
    if not head:
        return True
    try:
        return bool(json.loads(head)["t"] == held.registered_at)
    except UNREADABLE:
        return False


def missing(
    m: Mirror, fresh: Mapping[Hashable, Entry], local: Callable[[Entry], bool]
) -> dict[Hashable, Entry]:
    """The entries ``m`` holds and the snapshot ``fresh`` lacks, but ``local`` ones
    (a node's own live registrations: it writes those back itself)."""
    return {k: e for k, e in m.entries.items() if k not in fresh and not local(e)}


def deleted(
    missing: Mapping[Hashable, Entry], records: Iterable[tuple[Any, dict[bytes, bytes]]]
) -> dict[Hashable, RegistryEvent]:
    """The events of the first delete record of each ``missing`` registration
    among the stream ``records`` (those past the mirror's position)."""
    out: dict[Hashable, RegistryEvent] = {}
    for _rid, fields in records:
        if fields.get(b"op") not in (b"d", b"R"):
            continue
        try:
            singles = expand_record(0, fields)
        except (KeyError, ValueError):
            continue  # a record nobody can read: the tail skips it too
        for _, f in singles:
            key = _deleted_key(f)
            held = None if key is None else missing.get(key)
            if held is not None and key not in out and _deletes(held, f):
                out[key] = removed_event(held, f)
    return out


def lost(records: Iterable[tuple[Any, dict[bytes, bytes]]], tail_v: int, ver: int) -> bool:
    """Redis lost writes the mirror had applied up to version ``tail_v``: the
    snapshot's counter ``ver`` is below it, or a record past the mirror's stream
    position (``records``) reuses a version at or below it (a restart, a failover,
    an older snapshot: the counter went back). A stream merely trimmed past the
    mirror shows neither: every record past its position is newer."""
    if ver < tail_v:
        return True
    for _rid, fields in records:
        try:
            if int(fields[b"v"]) <= tail_v:
                return True
        except (KeyError, ValueError):
            continue  # a record nobody can read
    return False


def _deleted_key(f: Mapping[bytes, bytes]) -> Hashable | None:
    """The key of the delete record ``f``; None for another record or an unreadable key."""
    if f.get(b"op") != b"d":
        return None
    try:
        return decode_key(f[b"k"])
    except UNREADABLE:
        return None


def lease_holders(
    call: Call, client: Any, k_leases: str, due: Mapping[Hashable, Entry]
) -> dict[str, float]:
    """The owners of the ``due`` entries whose lease in ``k_leases`` has not
    expired (by the server clock), with the seconds their lease has left.

    Race: ``TIME`` and the scores are read in one pipeline, not atomically; a
    lease renewed or reaped between the two reads is judged either way, which is
    what a reading a moment earlier or later would have said."""

    nodes = sorted({e.node for e in due.values()})

    def read() -> list[Any]:
        with client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zmscore(k_leases, nodes)
            return list(pipe.execute())

    (sec, usec), scores = call("reading the leases of vanished entries' owners", read)
    now_ms = sec * 1000 + usec // 1000
    return {
        n: (sc - now_ms) / 1000
        for n, sc in zip(nodes, scores, strict=True)
        if sc is not None and sc >= now_ms
    }


class _Kept:
    """One kept entry: since when (``time.monotonic()``), until when, and whether
    its round was stretched once (see ``Vanished.drop``)."""

    __slots__ = ("entry", "since", "stretched", "until")

    def __init__(self, entry: Entry, since: float, until: float) -> None:
        self.entry = entry
        self.since = since
        self.until = until
        self.stretched = False


class Vanished:
    """The kept entries of one mirror (every method is called holding its lock,
    but ``due_in``, a plain read by the reading thread).

    ``round_s``: the round a kept entry waits for its owner (a node's
    ``lease_ttl`` plus one heartbeat; the default's for an observer)."""

    __slots__ = ("_kept", "round_s")

    def __init__(self, round_s: float) -> None:
        self.round_s = round_s
        self._kept: dict[Hashable, _Kept] = {}

    def resync(
        self,
        m: Mirror,
        missing: Mapping[Hashable, Entry],
        deleted: Mapping[Hashable, RegistryEvent],
        ver: int,
        events: list[RegistryEvent],
        *,
        loss: bool,
    ) -> None:
        """Apply a snapshot's lack of ``missing`` (before its other entries are put):
        remove those ``deleted`` names; keep the others if Redis lost data
        (``loss``, see ``lost``), else remove them as ``"unregistered"`` (their
        delete records were trimmed away unread: the snapshot is the truth, the
        reason unknown; as before)."""
        now = time.monotonic()
        kept: dict[Hashable, _Kept] = {}
        for key, held in missing.items():
            if m.entries.get(key) is not held:
                continue  # changed since missing() looked: the snapshot's turn
            event = deleted.get(key)
            before = self._kept.get(key)
            if event is None and before is not None and before.entry is held:
                # A later resync never extends the round: an unregister Redis lost
                # is masked one round at most.
                kept[key] = before
            elif event is None and loss:
                kept[key] = _Kept(held, now, now + self.round_s)
            else:
                m.remove(key, ver)
                events.append(event or RegistryEvent("unregistered", held, reason="unregistered"))
        self._kept = kept  # those the snapshot holds again are no longer kept

    def due_in(self) -> float | None:
        """Seconds until the first kept entry is due (0 if one is), None if none."""
        if not self._kept:
            return None  # the common case: one look, nothing built
        # Race: without the lock. Only the reading thread (the tail's, the
        # observer's: the one calling this) changes the dict in place (due, drop);
        # a resync on another thread replaces it whole, so this copies one of them.
        kept = list(self._kept.values())
        if not kept:
            return None
        return max(0.0, min(k.until for k in kept) - time.monotonic())

    def due(self, m: Mirror) -> dict[Hashable, Entry]:
        """The kept entries whose round is over and that nothing has settled; those
        settled (a change record of their key was applied) are forgotten."""
        now = time.monotonic()
        out: dict[Hashable, Entry] = {}
        for key, k in list(self._kept.items()):
            if key in m.versions or m.entries.get(key) is not k.entry:
                del self._kept[key]  # the owner's re-assert, or another record of the key
            elif k.until <= now:
                out[key] = k.entry
        return out

    def drop(
        self,
        m: Mirror,
        due: Mapping[Hashable, Entry],
        alive: Mapping[str, float],
        events: list[RegistryEvent],
    ) -> None:
        """Drop the ``due`` entries still kept as ``"down"``; ``alive``: the nodes
        whose lease is held, with the seconds it has left.

        An owner whose lease has more left than the entry has been kept runs a
        longer lease than ``round_s`` assumed (an observer, mixed ``lease_ttl``s):
        the entry waits that much longer, once (so one of the owner's rounds at
        most). Race: a record of the key applied since ``due`` looked (while the
        leases were read) settled it: checked again here. One still on its way
        (an owner re-asserting just now, after a whole round) arrives after the
        drop: a ``registered`` event then, which is what happened."""
        now = time.monotonic()
        for key, held in due.items():
            k = self._kept.get(key)
            if (
                k is None
                or k.entry is not held
                or key in m.versions
                or m.entries.get(key) is not held
            ):
                self._kept.pop(key, None)
                continue
            left = alive.get(held.node)
            if left is not None and not k.stretched and left > now - k.since:
                k.stretched, k.until = True, now + left
                continue
            del self._kept[key]
            down = Down("lease_expired") if left is None else Down("noproc")
            m.remove(key, m.floor)  # no later record is skipped: each is newer
            events.append(RegistryEvent("unregistered", held, reason="down", down=down))
