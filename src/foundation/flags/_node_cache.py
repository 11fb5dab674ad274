"""A node's own copy of a ``RedisFlagStore`` deployment, in a local SQLite file.

What it holds (one file per namespace and Redis URL, see ``default_cache_path``):

- the last committed state, stages and the version they are at (``meta``),
  mirrored from Redis by ``RedisFlagStore`` after each commit it sees;
- the change history and migration history, entry for entry with their Redis
  stream ids, so a restore puts back exactly what was there. A trimmed stream
  (``history_limit``) is mirrored as it is in Redis: the entries from the cut
  on (meta ``trimmed``, the id of the first kept entry) and the *base* (table
  ``base``: each flag's runtime state after the last trimmed entry), which the
  entries' deltas replay from. A trimmed migrations stream likewise: the events
  from meta ``mtrimmed`` on (events are whole records: no base). With each cut,
  what a pending kill switch is still checked against of what the trims dropped:
  per flag its latest trimmed change (table ``history_last``), per plan its latest
  trimmed event (``migrations_last``), as Redis holds them;
- pending kill switches: ``disable`` / ``emergency_rollback`` made while Redis
  was unreachable, waiting to be committed (``PendingKillSwitch``);
- the flag catalogue and the migration plans as last read from Redis (declared
  flags, ``FlagInfo`` JSON; plans, ``plan_to_json``), so a tool can list the
  flags and show a migration from the copy during an outage. They are a read
  cache only: never restored into Redis (applications record them again).

Every method is one SQLite transaction under one lock, so a reader never sees
half of an update. An unusable copy raises ``errors.FlagError``. ``path=None``
keeps the copy in memory only (for the life of the process). Several processes
may share one file (SQLite locking, WAL).

A file that fails while in use (disk full, I/O error, locked by another process
beyond the busy timeout, made read-only, corrupted) does not fail the store:
the copy moves into memory with what it could still read (a WARNING under
``foundation.flags``), and every ``RETRY_FILE_AFTER`` seconds a write tries the
file again, writing the whole copy back to it (an INFO line once it succeeds).
Meanwhile the copy, pending kill switches included, lasts only as long as the
process (``close`` tries the file once more), as with a directory that cannot be
written at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from foundation._redis_conn import redact_url
from foundation.errors import FlagError, InvalidFlagValue, bounded_repr
from foundation.flags._hashing import sha256
from foundation.flags._store import FlagChange, FlagState, MigrationEvent, _loads

if TYPE_CHECKING:
    # Imported where used: only a Redis flag store's node cache needs them, and
    # `import foundation` stays cheap.
    import sqlite3
    from pathlib import Path

__all__ = ["NodeCache", "PendingKillSwitch", "Snapshot", "default_cache_path", "stream_key"]

log = logging.getLogger("foundation.flags")

T = TypeVar("T")

RETRY_FILE_AFTER = 30.0
"""Seconds a copy that fell back to memory waits before a write tries its file again."""
_BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock on the file
_TABLES = (
    "meta", "states", "stages", "history", "migrations", "pending", "catalogue", "plans", "base",
    "history_last", "migrations_last", "plan_flags",
)  # fmt: skip
# Read caches of Redis hashes: their value column.
_KEPT = {"catalogue": "info", "plans": "plan", "plan_flags": "seen"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages (plan TEXT PRIMARY KEY, stage INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    ms INTEGER NOT NULL, seq INTEGER NOT NULL, fields TEXT NOT NULL, PRIMARY KEY (ms, seq));
CREATE TABLE IF NOT EXISTS migrations (
    ms INTEGER NOT NULL, seq INTEGER NOT NULL, fields TEXT NOT NULL, PRIMARY KEY (ms, seq));
CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue (name TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plans (name TEXT PRIMARY KEY, plan TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history_last (name TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrations_last (plan TEXT PRIMARY KEY, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan_flags (name TEXT PRIMARY KEY, seen TEXT NOT NULL);
"""
# base, history_last, migrations_last and plan_flags were added without a schema change: older
# versions ignore them, and opening an older file creates them empty (IF NOT EXISTS).

Entry = tuple[str, dict[str, str]]
"""A stream entry: its id (``"<ms>-<seq>"``) and its fields."""


def stream_key(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)`` (stream ids sort by this)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def default_cache_path(namespace: str, url: str) -> Path:
    """Where a node keeps its copy by default.

    The directory is ``$FOUNDATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/foundation``,
    else ``~/.cache/foundation``; the file is named after the namespace and a
    hash of the namespace and the redacted URL, so two deployments never share
    a file and a password change does not lose the copy.

    Example:
        >>> p = default_cache_path("shop", "redis://cache:6379/0")
        >>> p.name.startswith("flags-shop-"), p.suffix
        (True, '.sqlite3')
    """
    from pathlib import Path

    base = os.environ.get("FOUNDATION_CACHE_DIR")
    if base:
        directory = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        directory = (Path(xdg) if xdg else Path.home() / ".cache") / "foundation"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", namespace)[:40]
    # Hashed in its redacted form: no password in any input, and a new password
    # finds the same copy.
    digest = sha256(f"{namespace}\0{redact_url(url)}".encode()).hexdigest()[:12]
    return directory / f"flags-{slug}-{digest}.sqlite3"


KEEP = "keep"
"""``Snapshot.mtrimmed`` when the snapshot did not read it (a commit mirrored from its
own transaction): the copy keeps its own (never a stream id: those hold a ``-``)."""


class Snapshot:
    """A consistent read of the Redis side (one ``MULTI``), to mirror into the cache.

    ``full``: replace the cached history with ``history``/``migrations``;
    otherwise they are entries after the cache's last ones, to append.
    ``trimmed``/``base``: the id of the first entry the stream kept and the base
    (flag -> state JSON) its deltas replay from; ``base`` None: as the cache has
    them (a commit mirrored from the transaction), else entries before
    ``trimmed`` leave the cache and ``base`` replaces its own. ``mtrimmed``: the
    id of the first event the migrations stream kept after its last trim (None:
    never trimmed; ``KEEP``: not read, as the cache has it). ``hlast`` / ``mlast``:
    the latest trimmed change per flag (record JSON) / event per plan (event JSON),
    read with the cut they belong to (None: not read, as the cache has them). (A
    plain class: a private record, so ``import foundation`` builds no
    dataclass for it; see ``foundation._public``.)
    """

    __slots__ = (
        "base",
        "epoch",
        "full",
        "history",
        "hlast",
        "migrations",
        "mlast",
        "mtrimmed",
        "stages",
        "states",
        "trimmed",
        "version",
    )

    def __init__(  # noqa: PLR0917 - one field each
        self,
        version: int,
        epoch: str | None,
        states: dict[str, str],
        stages: dict[str, int],
        history: list[Entry],
        migrations: list[Entry],
        full: bool,
        *,
        base: dict[str, str] | None = None,
        trimmed: str | None = None,
        mtrimmed: str | None = KEEP,
        hlast: dict[str, str] | None = None,
        mlast: dict[str, str] | None = None,
    ) -> None:
        self.version = version
        self.epoch = epoch
        self.states = states
        self.stages = stages
        self.history = history
        self.migrations = migrations
        self.full = full
        self.base = base
        self.trimmed = trimmed
        self.mtrimmed = mtrimmed
        self.hlast = hlast
        self.mlast = mlast


@dataclass(frozen=True, slots=True)
class PendingKillSwitch:
    """A kill switch recorded while Redis was unreachable, not yet committed.

    ``changes`` are the flag changes as the node applied them locally (each
    turns a switch off), ``stored`` the runtime state each flag was given,
    ``events`` the ``emergency_rollback`` migration events (stage 0); ``at``,
    ``by`` and ``reason`` say when, who and why; ``id`` orders them.
    """

    id: int
    changes: tuple[FlagChange, ...]
    stored: dict[str, FlagState]
    events: tuple[MigrationEvent, ...]
    at: float
    by: str | None
    reason: str | None

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(self.stored)

    @property
    def plans(self) -> tuple[str, ...]:
        return tuple(e.plan for e in self.events)

    def to_json(self) -> str:
        return json.dumps(
            {
                "changes": [c.to_dict() for c in self.changes],
                "stored": {n: s.to_dict() for n, s in self.stored.items()},
                "events": [e.to_dict() for e in self.events],
                "at": self.at,
                "by": self.by,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_json(cls, op_id: int, text: str) -> PendingKillSwitch:
        data = _loads(text)  # corrupt JSON (too deep included): InvalidFlagValue
        try:
            return cls(
                op_id,
                tuple(FlagChange.from_dict(c) for c in data["changes"]),
                {n: FlagState.from_dict(s) for n, s in data["stored"].items()},
                tuple(MigrationEvent.from_dict(e) for e in data["events"]),
                float(data["at"]),
                data.get("by"),
                data.get("reason"),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidFlagValue(
                f"malformed pending kill switch {op_id} in the node copy: {bounded_repr(data)}"
            ) from exc

    def overlay(self, states: dict[str, FlagState]) -> None:
        """Apply this kill switch to ``states`` (runtime states by name) in place."""
        for name, stored in self.stored.items():
            current = states.get(name)
            states[name] = stored if current is None else _off(current)


def _off(state: FlagState) -> FlagState:
    """``state`` switched off, nothing else changed (assignments and split too: what
    the commit of the kill switch writes, see ``_redis_store._replay_switch_off``)."""
    return replace(state, switch=False)


class NodeCache:
    """The node's copy (see the module docs); ``path=None`` keeps it in memory.

    The constructor raises ``sqlite3.Error`` / ``OSError`` on an unusable file (the
    store decides what to do about it); a file failing later moves the copy into
    memory (see the module docs).

    Example:
        >>> cache = NodeCache(None)
        >>> cache.version, cache.has_data()
        (0, False)
        >>> cache.close()
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # As SQLite resolves it at open: a later os.chdir() moves no file.
        self._where = None if path is None else path.absolute()
        self._lock = threading.Lock()
        # One connection shared by the store's threads, serialised by _lock: the
        # file's, or an in-memory one (path None, or the file failed: _to_memory).
        self._db = self._open(path, timeout=_BUSY_TIMEOUT)
        self._identity = _identity(self._where)  # the file _db holds (see _write)
        # While the copy of a file lives in memory: when the file failed, and when
        # a write tries the file again (monotonic).
        self._in_memory_since: float | None = None
        self._retry_at = 0.0
        # The pending kill switches (id, JSON) the copy held when it moved into
        # memory (see _write_back).
        self._base_pending: frozenset[tuple[int, str]] = frozenset()
        # Pending ids a write-back renumbered (old -> new; see _write_back): a replay
        # that read one before removes it under its new id (remove_pending).
        self._renumbered: dict[int, int] = {}
        # Called (under the copy's lock: keep it short) once a memory copy was written
        # back to its file: pending kill switches may have come back (_write_back), and
        # the store commits or drops them at once instead of overlaying them until its
        # next resync (RedisFlagStore sets it to ask its listener for a replay).
        self.on_write_back: Callable[[], None] | None = None

    @staticmethod
    def _open(path: Path | None, *, timeout: float) -> sqlite3.Connection:
        import sqlite3

        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            check_same_thread=False,
            isolation_level=None,
            timeout=timeout,
        )
        try:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM meta").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """An unusable copy (I/O error, corrupt rows) is a FlagError, never sqlite's own."""
        import sqlite3

        try:
            yield
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, FlagError):
                raise
            raise FlagError(f"node copy {self.path or '(memory)'} is unusable: {exc!r}") from exc

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body`` in one write transaction; on the memory copy if the file fails."""
        with self._guard(), self._lock:
            if self._in_memory_since is None and _identity(self._where) != self._identity:
                # The file deleted or replaced under us: a write would land in a file
                # no process will read again. Keep the copy in memory and write it,
                # whole, to whatever file is at the path now (or later).
                self._fall_back(FileNotFoundError(f"{self.path} was deleted or replaced"))
                self._retry_at = time.monotonic()
            if self._in_memory_since is not None and time.monotonic() >= self._retry_at:
                self._back_to_file()
            try:
                return _transaction(self._db, body)
            except Exception as exc:
                if not self._fall_back(exc):
                    raise
            return _transaction(self._db, body)  # nothing of it was written to the file

    def _read_in_one(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body(db)`` in one read transaction; again in memory if the file failed."""
        with self._guard(), self._lock:
            try:
                return _read_transaction(self._db, body)
            except Exception as exc:
                if not self._fall_back(exc):
                    raise
            return _read_transaction(self._db, body)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._guard(), self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except Exception as exc:
                if not self._fall_back(exc):
                    raise
            return self._db.execute(sql, args).fetchall()

    def _fall_back(self, exc: Exception) -> bool:
        """Move the copy into memory if ``exc`` is the file failing (caller holds _lock)."""
        import sqlite3

        # Only the file's faults (I/O, full, locked, read-only, corrupt), never
        # a constraint or programming error of ours (also DatabaseError subclasses).
        fault = isinstance(exc, sqlite3.OperationalError | FileNotFoundError) or (
            type(exc) is sqlite3.DatabaseError
        )
        if not fault or self.path is None or self._in_memory_since is not None:
            return False
        memory = self._open(None, timeout=0.0)
        try:
            _copy_tables(self._db, memory)
            kept = "the copy as last read from it"
        except sqlite3.Error:  # unreadable too: start empty (the store reads Redis in full)
            memory.close()
            memory = self._open(None, timeout=0.0)
            kept = "an empty copy (the file is unreadable)"
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = memory
        self._base_pending = frozenset(memory.execute("SELECT id, op FROM pending"))
        self._in_memory_since = time.monotonic()
        self._retry_at = self._in_memory_since + RETRY_FILE_AFTER
        log.warning(
            "node copy %s failed (%s); keeping %s in memory, not durable until the file "
            "can be written again (retried every %gs)",
            self.path, exc, kept, RETRY_FILE_AFTER,
        )  # fmt: skip
        return True

    def _back_to_file(self) -> None:
        """Write the memory copy back to the file, whole, and use the file again (or keep
        waiting). Caller holds _lock."""
        import sqlite3

        self._retry_at = time.monotonic() + RETRY_FILE_AFTER
        where = self._where
        try:
            try:
                if where is not None:  # its directory deleted too (a cleaner): made again
                    where.parent.mkdir(parents=True, exist_ok=True)
                seen = _identity(where)
                # No busy wait: a file still locked by another process is retried later.
                db = self._open(where, timeout=0.0)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) or where is None:
                    raise
                # Race: another process sharing the file found it unreadable too and
                # already put a new one there (its copy written back): not moved aside.
                if _identity(where) != seen:
                    raise
                # Not a database any more (corrupt, truncated): kept for a post-mortem,
                # as at start (see RedisFlagStore), and a new file takes the copy.
                aside = where.with_name(f"{where.name}.corrupt-{int(time.time())}")
                log.warning("node copy %s is unreadable (%s); moved to %s", self.path, exc, aside)
                where.rename(aside)
                db = self._open(where, timeout=0.0)
        except (sqlite3.Error, OSError) as exc:
            log.debug("node copy %s still unusable: %s", self.path, exc)
            return
        try:
            renumbered = _transaction(
                db, lambda target: _write_back(self._db, target, self._base_pending)
            )
            # The retry opened without a busy wait; from now on this is the copy's
            # connection, and a write of another process sharing the file is waited
            # for again (not a new fall-back to memory).
            db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT * 1000)}")
        except sqlite3.Error as exc:
            db.close()
            log.debug("node copy %s still unusable: %s", self.path, exc)
            return
        self._db.close()
        self._db = db
        self._identity = _identity(self._where)
        self._in_memory_since = None
        self._base_pending = frozenset()
        self._renumbered.update(renumbered)
        log.info("node copy %s is written to its file again", self.path)
        if self.on_write_back is not None:
            self.on_write_back()

    @property
    def in_memory(self) -> bool:
        """True while the copy of a file lives in memory because the file failed."""
        return self._in_memory_since is not None

    def _meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # ----------------------------------------------------------------- reads

    @property
    def version(self) -> int:
        """The version (committed transactions) of the copy; 0 if never synced."""
        raw = self._meta("version")
        with self._guard():
            return int(raw or 0)

    @property
    def epoch(self) -> str | None:
        """The deployment's epoch the copy belongs to (None: unknown)."""
        return self._meta("epoch")

    def has_data(self) -> bool:
        """True once the copy holds anything: a synced version, state or pending op."""
        rows = self._read(
            "SELECT (SELECT count(*) FROM meta WHERE key = 'synced')"
            " + (SELECT count(*) FROM states) + (SELECT count(*) FROM pending)"
        )
        return bool(rows[0][0])

    def states(self) -> dict[str, str]:
        return {str(n): str(s) for n, s in self._read("SELECT name, state FROM states")}

    def stages(self) -> dict[str, int]:
        return {str(p): int(s) for p, s in self._read("SELECT plan, stage FROM stages")}

    def history(self) -> list[Entry]:
        return self._entries("history")

    @property
    def trimmed(self) -> str | None:
        """The id of the first entry the mirrored stream kept after a trim (None: never)."""
        return self._meta("trimmed")

    @property
    def mtrimmed(self) -> str | None:
        """The id of the first event the mirrored migrations stream kept after a trim."""
        return self._meta("mtrimmed")

    def history_with_base(self) -> tuple[dict[str, str], str | None, list[Entry]]:
        """(base, ``trimmed``, history entries) from one read: entries replay from the base.

        Race: another process sharing the file mirroring a trim between two reads;
        one read transaction keeps the three consistent.
        """

        def body(db: sqlite3.Connection) -> tuple[dict[str, str], str | None, list[Entry]]:
            base = {str(n): str(t) for n, t in db.execute("SELECT name, state FROM base")}
            row = db.execute("SELECT value FROM meta WHERE key = 'trimmed'").fetchone()
            rows = db.execute("SELECT ms, seq, fields FROM history ORDER BY ms, seq")
            entries = [(f"{ms}-{seq}", _loads(fields)) for ms, seq, fields in rows]
            return base, None if row is None else str(row[0]), entries

        return self._read_in_one(body)

    def migrations(self) -> list[Entry]:
        return self._entries("migrations")

    def lasts(self) -> tuple[dict[str, str], dict[str, str]]:
        """(flag -> its latest trimmed change, plan -> its latest trimmed event), one read."""

        def body(db: sqlite3.Connection) -> tuple[dict[str, str], dict[str, str]]:
            rows = db.execute("SELECT name, record FROM history_last")
            hlast = {str(n): str(r) for n, r in rows}
            rows = db.execute("SELECT plan, event FROM migrations_last")
            return hlast, {str(p): str(e) for p, e in rows}

        return self._read_in_one(body)

    def _entries(self, table: str) -> list[Entry]:
        rows = self._read(f"SELECT ms, seq, fields FROM {table} ORDER BY ms, seq")
        with self._guard():
            return [(f"{ms}-{seq}", _loads(fields)) for ms, seq, fields in rows]

    def catalogue(self) -> dict[str, str]:
        """The flag catalogue as last kept (``set_catalogue``): name -> FlagInfo JSON."""
        return self._kept("catalogue")

    def plans(self) -> dict[str, str]:
        """The migration plans as last kept (``set_plans``): name -> plan JSON."""
        return self._kept("plans")

    def plan_flags(self) -> dict[str, str]:
        """The migration plan flags as last kept (``set_plan_flags``): Redis' hash."""
        return self._kept("plan_flags")

    def _kept(self, table: str) -> dict[str, str]:
        rows = self._read(f"SELECT name, {_KEPT[table]} FROM {table}")
        return {str(name): str(value) for name, value in rows}

    def last_ids(self) -> tuple[str | None, str | None]:
        """The ids of the last cached history and migration entries (None: none)."""
        return self._read_in_one(_last_ids)

    def holdings(self) -> tuple[int, str | None, int, int, bool, bool]:
        """(version, epoch, flag states, stages, any history entry, any migration
        event) in ONE statement (one snapshot: never the counts of another version
        than the one returned): what a write compares Redis with (see
        ``RedisFlagStore._run_and_queue``)."""
        rows = self._read(
            "SELECT (SELECT value FROM meta WHERE key = 'version'),"
            " (SELECT value FROM meta WHERE key = 'epoch'),"
            " (SELECT count(*) FROM states), (SELECT count(*) FROM stages),"
            " EXISTS (SELECT 1 FROM history), EXISTS (SELECT 1 FROM migrations)"
        )
        version, epoch, states, stages, history, migrations = rows[0]
        with self._guard():
            return (
                int(version or 0),
                None if epoch is None else str(epoch),
                int(states),
                int(stages),
                bool(history),
                bool(migrations),
            )

    def pending(self) -> list[PendingKillSwitch]:
        """Pending kill switches, oldest first."""
        rows = self._read("SELECT id, op FROM pending ORDER BY id")
        with self._guard():
            return [PendingKillSwitch.from_json(int(i), str(op)) for i, op in rows]

    # ---------------------------------------------------------------- writes

    def apply(
        self, snap: Snapshot, *, only_from: tuple[int, tuple[str | None, str | None]] | None = None
    ) -> bool:
        """Mirror ``snap`` (one SQLite transaction: never half of it); False if the copy
        already mirrors a later version of the same deployment (left as it is), or,
        with ``only_from`` (a version and the last entry ids, see ``last_ids``), if
        the copy is not at exactly that version, ids and ``snap``'s epoch."""

        def body(db: sqlite3.Connection) -> bool:
            # Race: another process sharing the file read Redis after us and wrote
            # a newer snapshot between our read of Redis and this write. Writing
            # ours would set the copy's version back (until the next refresh), and
            # a restore from it would take Redis back. Compare-and-set: the check
            # runs in this BEGIN IMMEDIATE transaction, which holds the file's write
            # lock, so no write of another process lands between check and write
            # (``only_from``'s check too: see RedisFlagStore._keep_told).
            epoch, version = _mirror_version(db)
            if epoch == snap.epoch and version > snap.version:
                return False
            if only_from is not None and (epoch, version, _last_ids(db)) != (
                snap.epoch,
                *only_from,
            ):
                return False
            db.execute("DELETE FROM states")
            db.executemany("INSERT INTO states VALUES (?, ?)", snap.states.items())
            db.execute("DELETE FROM stages")
            db.executemany("INSERT INTO stages VALUES (?, ?)", snap.stages.items())
            for table, entries in (("history", snap.history), ("migrations", snap.migrations)):
                if snap.full:
                    db.execute(f"DELETE FROM {table}")
                db.executemany(
                    f"INSERT OR IGNORE INTO {table} VALUES (?, ?, ?)",
                    [(*stream_key(i), json.dumps(f)) for i, f in entries],
                )
            _mirror_trim(db, snap)
            _mirror_events_trim(db, snap)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(snap.version),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('synced', '1')")
            if snap.epoch is None:
                db.execute("DELETE FROM meta WHERE key = 'epoch'")
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (snap.epoch,))
            return True

        return self._write(body)

    def set_catalogue(self, entries: dict[str, str]) -> None:
        """Replace the kept catalogue with ``entries`` (name -> FlagInfo JSON)."""
        self._keep("catalogue", entries)

    def set_plans(self, entries: dict[str, str]) -> None:
        """Replace the kept migration plans with ``entries`` (name -> plan JSON)."""
        self._keep("plans", entries)

    def set_plan_flags(self, entries: dict[str, str]) -> None:
        """Replace the kept migration plan flags with ``entries`` (Redis' hash)."""
        self._keep("plan_flags", entries)

    def _keep(self, table: str, entries: dict[str, str]) -> None:
        def body(db: sqlite3.Connection) -> None:
            db.execute(f"DELETE FROM {table}")
            db.executemany(f"INSERT INTO {table} VALUES (?, ?)", entries.items())

        self._write(body)

    def add_pending(self, op: PendingKillSwitch) -> int:
        """Record ``op`` durably (its ``id`` is ignored); returns the id given.

        Ids grow with time and carry random low bits (``_pending_id``): ordered
        oldest first like the autoincrement ids of earlier versions (all smaller),
        and distinct across the processes sharing the file while they write to it.
        A copy in memory numbers its own without seeing the file: another process
        may give one the same id (same microsecond, same random bits). The
        write-back then renumbers ours (``_write_back``), and removal checks the
        content too (``remove_pending``), so a clash never removes the wrong one.
        """
        text = op.to_json()
        insert = "INSERT INTO pending (id, op) VALUES (?, ?)"

        def body(db: sqlite3.Connection) -> int:
            (top,) = db.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()
            op_id = _pending_id(int(top))
            db.execute(insert, (op_id, text))
            return op_id

        return self._write(body)

    def keep_pending(self, op: PendingKillSwitch) -> int:
        """``add_pending``, unless a pending row already records ``op`` (its id aside):
        then that row's id. Checked and written in one transaction (race: another
        process sharing the file keeping the same kill switch at once)."""
        text = op.to_json()

        def body(db: sqlite3.Connection) -> int:
            for op_id, row in db.execute("SELECT id, op FROM pending ORDER BY id"):
                if _records(str(row), replace(op, id=int(op_id))):
                    return int(op_id)
            (top,) = db.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()
            op_id = _pending_id(int(top))
            db.execute("INSERT INTO pending (id, op) VALUES (?, ?)", (op_id, text))
            return op_id

        return self._write(body)

    def remove_pending(self, op: PendingKillSwitch) -> bool:
        """Remove ``op`` (as read by ``pending()``); False if it is not there any more.

        By id AND content: the row under ``op.id`` is removed only if it records
        ``op``. Race: a write-back between the read and this call may have
        renumbered ``op`` (its id clashed with another process's kill switch,
        which now holds the old id): ``op`` is then removed under its new id, and
        the other one, never committed, stays.
        """

        def body(db: sqlite3.Connection) -> bool:
            for op_id in self._ids_of(op.id):
                row = db.execute("SELECT op FROM pending WHERE id = ?", (op_id,)).fetchone()
                if row is not None and _records(row[0], op):
                    db.execute("DELETE FROM pending WHERE id = ?", (op_id,))
                    return True
            return False

        return self._write(body)

    def _ids_of(self, op_id: int) -> list[int]:
        """``op_id`` and the ids write-backs renumbered it to since (under _lock)."""
        ids = [op_id]
        while ids[-1] in self._renumbered and len(ids) <= len(self._renumbered):
            ids.append(self._renumbered[ids[-1]])
        return ids

    def close(self) -> None:
        with self._lock:
            if self._in_memory_since is not None:
                # Last chance for what the memory copy holds (pending kill switches):
                # the file may work again before the next retry was due.
                self._back_to_file()
            self._db.close()


def _transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(db)`` in one ``BEGIN IMMEDIATE`` transaction: all of it or (rolled back) none."""
    import sqlite3

    try:
        # Race: a Ctrl-C is raised at the first check after BEGIN's execute()
        # returned (its own end). With the BEGIN before the try, nothing rolled
        # back: the copy stayed in that transaction, every later BEGIN failed
        # "within a transaction", and the store's listener, finding its copy
        # "unusable", stopped following Redis (another node's kill switch was
        # never applied). Inside the try, the ROLLBACK below ends it.
        db.execute("BEGIN IMMEDIATE")
        result = body(db)
        db.execute("COMMIT")  # may fail too (disk full): rolled back below
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the transaction is gone either way
                db.execute("ROLLBACK")
        raise
    return result


def _read_transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(db)`` in one read transaction: one snapshot of the file."""
    import sqlite3

    try:
        db.execute("BEGIN")  # inside the try: see _transaction's race
        return body(db)
    finally:
        with contextlib.suppress(sqlite3.Error):  # a read transaction: nothing to keep
            db.execute("ROLLBACK")


def _mirror_trim(db: sqlite3.Connection, snap: Snapshot) -> None:
    """Mirror the stream's trim into the copy (inside ``apply``'s transaction).

    The copy stays what Redis held at ``snap``: its base and the entries from
    ``snap.trimmed`` on. A snapshot without a base (a commit mirrored from the
    transaction: no trim in it) leaves the copy's own, which still matches its
    entries. A full snapshot of an untrimmed stream empties the base.
    """
    if snap.base is None:
        return
    row = db.execute("SELECT value FROM meta WHERE key = 'trimmed'").fetchone()
    current = None if row is None else str(row[0])
    if not snap.full and current == snap.trimmed:
        return  # the same cut: the same base (a base is what the entries before it left)
    if (
        not snap.full
        and current is not None
        and (snap.trimmed is None or stream_key(snap.trimmed) < stream_key(current))
    ):
        # Race: another process sharing the file read Redis after us, past a trim
        # that landed after our read (a trim changes no version, so apply's version
        # check lets our older read through), and mirrored it first. Its cut and
        # base stand: ours would pair the older base with entries the file no
        # longer holds before its cut, and replay them wrong. (An incremental
        # snapshot never moves the cut back: a copy whose cut is newer than
        # Redis' is refreshed whole, see RedisFlagStore._copy_since.)
        return
    db.execute("DELETE FROM base")
    db.executemany("INSERT INTO base VALUES (?, ?)", snap.base.items())
    if snap.hlast is not None:  # read with the base: the same cut
        db.execute("DELETE FROM history_last")
        db.executemany("INSERT INTO history_last VALUES (?, ?)", snap.hlast.items())
    if snap.trimmed is None:
        db.execute("DELETE FROM meta WHERE key = 'trimmed'")
        return
    ms, seq = stream_key(snap.trimmed)
    db.execute("DELETE FROM history WHERE ms < ? OR (ms = ? AND seq < ?)", (ms, ms, seq))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('trimmed', ?)", (snap.trimmed,))


def _mirror_events_trim(db: sqlite3.Connection, snap: Snapshot) -> None:
    """Mirror the migrations stream's trim (inside ``apply``'s transaction): the copy
    keeps the events from ``snap.mtrimmed`` on, as Redis does.

    Race: another process sharing the file mirrored a later cut first (a trim
    changes no version, so ``apply`` lets our older read through): an incremental
    snapshot never moves the cut back, it drops below the later of the two. A
    full snapshot is what Redis holds, its cut included."""
    if snap.mtrimmed == KEEP:
        return
    row = db.execute("SELECT value FROM meta WHERE key = 'mtrimmed'").fetchone()
    cut = snap.mtrimmed
    if (
        not snap.full
        and row is not None
        and (cut is None or stream_key(cut) < stream_key(str(row[0])))
    ):
        cut = str(row[0])  # (and the file's migrations_last, of that cut, stays)
    elif snap.mlast is not None:  # read with snap's cut, which the copy takes
        db.execute("DELETE FROM migrations_last")
        db.executemany("INSERT INTO migrations_last VALUES (?, ?)", snap.mlast.items())
    if cut is None:
        db.execute("DELETE FROM meta WHERE key = 'mtrimmed'")
        return
    ms, seq = stream_key(cut)
    db.execute("DELETE FROM migrations WHERE ms < ? OR (ms = ? AND seq < ?)", (ms, ms, seq))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('mtrimmed', ?)", (cut,))


def _records(text: str, op: PendingKillSwitch) -> bool:
    """True if ``text`` (a pending row's JSON) records ``op`` (its id aside)."""
    try:
        return PendingKillSwitch.from_json(op.id, text) == op
    except InvalidFlagValue:  # a malformed row records nothing we read
        return False


def _pending_id(top: int) -> int:
    """A new pending id above ``top``: microseconds since the epoch, shifted, with 10
    random low bits (below 2**63 until the year 2255)."""
    random_bits = int.from_bytes(os.urandom(2), "big") & 0x3FF  # (no `secrets`: import cost)
    return max((time.time_ns() // 1000) << 10 | random_bits, top + 1)


def _last_ids(db: sqlite3.Connection) -> tuple[str | None, str | None]:
    """The ids of the copy's last history and migration entries (None: none)."""
    out: list[str | None] = []
    for table in ("history", "migrations"):
        row = db.execute(
            f"SELECT ms, seq FROM {table} ORDER BY ms DESC, seq DESC LIMIT 1"
        ).fetchone()
        out.append(None if row is None else f"{row[0]}-{row[1]}")
    return out[0], out[1]


def _mirror_version(db: sqlite3.Connection) -> tuple[str | None, int]:
    """(epoch, version) of the Redis state a copy mirrors."""
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'version')"))
    version = meta.get("version")
    return meta.get("epoch"), int(version) if version and version.isdigit() else -1


def _write_back(
    memory: sqlite3.Connection,
    file: sqlite3.Connection,
    base: frozenset[tuple[int, str]] = frozenset(),
) -> dict[int, int]:
    """The memory copy written back to its file, which other processes may share
    and may have written meanwhile (inside ``file``'s write transaction).

    The mirror of Redis (every table but ``pending``) is replaced by the memory
    copy's, unless the file's mirrors a later version of the same epoch, or the
    memory copy's epoch is unknown (it started empty, the file unreadable at the
    fall-back): then the file's stays. Pending kill switches are the UNION of both,
    so none recorded by another process is lost, less those of ``base`` (the rows
    the copy held when it moved into memory) that the memory copy dropped since:
    this process committed (or superseded) them, and they leave the file too (by
    id AND content: another process's kill switch under a reused id stays).
    One that another process committed meanwhile (dropped from the file only)
    comes back: the store replays at once (``on_write_back``) and drops it again,
    as already committed or superseded, with its log line. Two kill switches under
    one id (a copy in memory numbers its own without seeing the file, see
    ``add_pending``): the memory one takes a new id. Returns the ids renumbered
    (old -> new).
    """
    mine, theirs = _mirror_version(memory), _mirror_version(file)
    # An empty memory copy (no epoch, version -1) never wipes the file's mirror.
    file_is_newer = mine[0] in (theirs[0], None) and theirs[1] > mine[1]
    if not file_is_newer:
        _copy_tables(memory, file, [t for t in _TABLES if t != "pending"])
    rows = memory.execute("SELECT id, op FROM pending ORDER BY id").fetchall()
    # Race: the replay commits a pending op, then drops it (remove_pending) from the
    # memory copy; the file still holds it. Without this, the write-back would put it
    # back and every process sharing the file would overlay the switch-off again.
    # Race: meanwhile another process committed it too and dropped it, and a third
    # wrote back its own kill switch under the same id: by id AND content, that one
    # (never committed) stays.
    done = base - set(rows)
    file.executemany("DELETE FROM pending WHERE id = ? AND op = ?", sorted(done))
    return _merge_pending(rows, file)


def _merge_pending(rows: list[tuple[int, str]], file: sqlite3.Connection) -> dict[int, int]:
    """Add the memory copy's pending ``rows`` the file lacks; returns the ids renumbered."""
    have = dict(file.execute("SELECT id, op FROM pending"))
    renumbered: dict[int, int] = {}
    for op_id, text in rows:
        if have.get(op_id) == text:
            continue
        new_id = op_id
        if op_id in have:  # the clash: another kill switch holds the id (add_pending)
            new_id = renumbered[op_id] = _pending_id(max(have))
            log.info(
                "node copy: pending kill switch %d clashed with another process's; now %d",
                op_id, new_id,
            )  # fmt: skip
        file.execute("INSERT INTO pending (id, op) VALUES (?, ?)", (new_id, text))
        have[new_id] = text
    return renumbered


def _copy_tables(
    source: sqlite3.Connection, target: sqlite3.Connection, tables: Iterable[str] = _TABLES
) -> None:
    """Replace every table of ``target`` with ``source``'s rows (one read of ``source``)."""
    import sqlite3

    try:
        source.execute("BEGIN")  # one snapshot of the source (in the try: _transaction's race)
        rows_of = {t: source.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    finally:
        with contextlib.suppress(sqlite3.Error):  # a read transaction: nothing to keep
            source.execute("ROLLBACK")
    for table, rows in rows_of.items():
        target.execute(f"DELETE FROM {table}")
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            target.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)


def _identity(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` now; None if there is none."""
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_dev, st.st_ino)
