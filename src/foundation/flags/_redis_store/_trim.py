"""Retention of the Redis flag store: trimming the history and the migrations stream."""

from __future__ import annotations

import json
import math
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
            for _id, fields in entries[:count]:
                change = self._decode_change(fields, replay)
                if change is not None and (
                    change.flag not in latest or change.at >= latest[change.flag].at
                ):
                    latest[change.flag] = change
            new_base = {name: state.to_json() for name, state in replay.states.items()}
            moved = {
                flag: encode_json(change, None, change.new)  # self-contained: old in full
                for flag, change in latest.items()
                if change.at >= _last_at(lasts.get(flag))
            }
            epoch, restored, trimmed = (x or "" for x in list(before)[1:4])
            done = self._trim_script(
                keys=[self._k_meta, self._k_history, self._k_base, self._k_hlast],
                args=[
                    epoch,
                    restored,
                    trimmed,
                    str(entries[count][0]),
                    json.dumps(new_base),
                    json.dumps(moved),
                ],
            )
        return int(done)
