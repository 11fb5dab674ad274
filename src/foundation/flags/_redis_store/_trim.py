"""Retention of the Redis flag store: trimming the history and the migrations stream."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

from foundation.errors import BackendUnavailable, FlagError
from foundation.flags._history import Replay, encode_json
from foundation.flags._redis_store._copy import _NodeCopy
from foundation.flags._redis_store._shared import _META, log
from foundation.flags._store import FlagChange, events_to_keep, log_trim, trim_slack


def _last_at(text: str | None) -> float:
    """The ``at`` of a latest-trimmed record (``{ns}:flags:history:last``); -inf for none
    (or one that does not read: the trim replaces it)."""
    if text is None:
        return -math.inf
    try:
        at = json.loads(text)["at"]
        return float(at) if isinstance(at, int | float) else -math.inf
    except (ValueError, TypeError, KeyError, RecursionError):
        return -math.inf


def _flag_of(text: str | None) -> str | None:
    """The flag of history record ``text`` (None if it does not read)."""
    try:
        data = json.loads(text or "")
    except (ValueError, RecursionError):
        return None
    flag = data.get("flag") if isinstance(data, dict) else None
    return flag if isinstance(flag, str) else None


class _Trims(_NodeCopy):
    """Trims the two streams after a commit (never failing it)."""

    def _trim_if_due(self, length: Any) -> None:
        """Trim the history if ``length`` (its XLEN after our commit) is over
        ``history_limit + trim_slack``. Never fails the commit: a trim that cannot
        be done (Redis gone, an unreadable entry) logs, and a later commit retries."""
        limit = self.history_limit
        if limit is None or int(length) <= limit + trim_slack(limit):
            return
        if int(length) < self._next_trim_at:
            return  # the last attempt failed: retry once the stream grew by trim_slack
        try:
            dropped = self._trim(int(length) - limit, limit)
        except (BackendUnavailable, FlagError) as exc:
            self._next_trim_at = int(length) + trim_slack(limit)
            log.warning("flag store %r: history not trimmed (%s)", self.namespace, exc)
            return
        self._next_trim_at = 0
        if dropped > 0:
            self._trims += 1
            log_trim(self, dropped, limit, self._trims)

    def _trim_events_if_due(self, length: Any) -> None:
        """Trim the migrations stream to ``history_limit`` if ``length`` (its XLEN after
        our commit) is over ``history_limit + trim_slack``; never fails the commit
        (as ``_trim_if_due``). Race: another node trimming too: each cuts to its own
        limit (the smallest wins), never below it, and commits only append."""
        keep = events_to_keep(int(length), self.history_limit)
        if keep is None or int(length) < self._next_event_trim_at:
            return
        try:
            with self._translated("trimming the migration history"):
                self._ensure_clients()
                dropped = int(
                    self._trim_events_script(
                        keys=[self._k_meta, self._k_migrations, self._k_mlast], args=[keep]
                    )
                )
        except (BackendUnavailable, FlagError) as exc:
            self._next_event_trim_at = int(length) + trim_slack(keep)
            log.warning("flag store %r: migration history not trimmed (%s)", self.namespace, exc)
            return
        self._next_event_trim_at = 0
        if dropped > 0:
            self._event_trims += 1
            log_trim(self, dropped, keep, self._event_trims, "migration history")

    def _trim(self, most: int, limit: int) -> int:
        """Drop the oldest history entries into the base down to ``limit`` entries, at
        most ``most`` of them (see the module docs, "Retention"); the entries
        dropped (0: someone else trimmed meanwhile).

        How many is counted again here, from an ``XLEN`` read with the entries:
        Race: another node trimming between our EXEC (whose XLEN made the trim
        due) and these reads. Counted from that XLEN, both would drop a trim's
        worth: the stream fell to ``limit - trim_slack`` and history() lost
        records it must keep. Commits landing meanwhile only append after the
        entries read (they can only make us keep more); a trim or a restore
        landing between these reads and the script moves ``trimmed`` or
        ``restored``, which the script checks before it writes anything. The
        ``last`` hash read here is written only by trims and restores, so that
        check covers it too: its update (each dropped flag's latest change, kept
        where it is at least as late as the one there) is never based on a stale read.
        """
        client = self._ensure_clients()
        with self._translated("trimming the flag history"):
            with client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._k_meta, *_META)
                pipe.hgetall(self._k_base)
                pipe.hgetall(self._k_hlast)
                pipe.xrange(self._k_history, count=most + 1)
                pipe.xlen(self._k_history)
                pipe.hmget(self._k_meta, *_META)
                before, base, lasts, entries, length, after = pipe.execute()
            # Race: a trim or restore between the reads (a commit is harmless: it
            # appends): the base and the entries may be of two cuts. Leave it to
            # the next commit.
            if list(before)[1:4] != list(after)[1:4]:
                return 0
            if int(length) <= limit + trim_slack(limit):
                return 0  # another node trimmed since our EXEC: not due any more
            count = min(int(length) - limit, len(entries) - 1)
            if count <= 0:
                return 0
            replay = Replay(self._feed_states(base))
            latest: dict[str, FlagChange] = {}  # per flag, its latest change dropped
            lost: set[str] = set()  # flags whose base was lost (evicted): see _decode_kept
            for _id, fields in entries[:count]:
                change = self._decode_kept(fields, replay, before[3], lost)
                if change is not None and (
                    change.flag not in latest or change.at >= latest[change.flag].at
                ):
                    latest[change.flag] = change
            new_base = {name: state.to_json() for name, state in replay.states.items()}
            if lost:
                seeded, unbased = self._rebased(
                    client, lost, new_base.keys(), list(before), str(entries[count][0])
                )
                new_base.update(seeded)
            else:
                unbased = set()
            moved = {
                flag: encode_json(change, None, change.new)  # self-contained: old in full
                for flag, change in latest.items()
                if change.at >= _last_at(lasts.get(flag))
            }
            epoch, restored, trimmed = (x or "" for x in list(before)[1:4])
            # (A flag whose base was lost keeps its older `last` record: its dropped
            # changes cannot be read.)
            done = self._trim_script(
                keys=[self._k_meta, self._k_history, self._k_base, self._k_hlast],
                args=[
                    epoch,
                    restored,
                    trimmed,
                    str(entries[count][0]),
                    json.dumps(new_base),
                    json.dumps(moved),
                    json.dumps(sorted(unbased)),
                ],
            )
        return int(done)

    def _rebased(
        self,
        client: Any,
        lost: set[str],
        based: Collection[str],
        before: list[Any],
        first_kept: str,
    ) -> tuple[dict[str, str], set[str]]:
        """(base to add, flags to mark ``unbased``) after a loss of the base: ``lost``,
        the flags whose dropped entries could not be read (see ``_decode_kept``);
        ``based``, those the new base holds. A flag of ``{ns}:flags:state`` with no
        entry from ``first_kept`` on, not in ``based`` (its base lost with the rest,
        whatever this trim dropped), gets its state there: its state at the cut
        (its last change is cut). One with kept entries (they may not read) is
        marked in meta's ``unbased``: its next commit writes its record whole
        (``old`` in full, see ``_queue_writes``), from which its later entries
        replay again. Rare: only after such a loss (it reads the rest of the stream).

        Race: a commit between these reads and ``before``'s: meta (its version
        too) is read around them and must be ``before``; else every one is
        marked (a whole record is never wrong). A commit after them appends
        after the entries read: its delta replays from the state read here.
        """
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k_meta, *_META)
            pipe.hgetall(self._k_state)
            pipe.xrange(self._k_history, min=first_kept)
            pipe.hmget(self._k_meta, *_META)
            first, states, kept, after = pipe.execute()
        if list(first) != before or list(after) != before:
            return {}, lost
        still = {_flag_of(fields.get("change")) for _id, fields in kept}
        unbased = (lost | states.keys()) - set(based)
        return {f: states[f] for f in unbased - still if f in states}, unbased & still
