"""A node's own copy of a ``RedisFlagStore`` deployment, in a local SQLite file.

What it holds (one file per namespace and Redis URL, see ``default_cache_path``):

- the last committed state, stages and the version they are at (``meta``),
  mirrored from Redis by ``RedisFlagStore`` after each commit it sees;
- the whole change history and migration history, entry for entry with their
  Redis stream ids, so a restore puts back exactly what was there;
- pending kill switches: ``disable`` / ``emergency_rollback`` made while Redis
  was unreachable, waiting to be committed (``PendingKillSwitch``);
- the flag catalogue as last read from Redis (declared flags, ``FlagInfo`` JSON),
  so a tool can list the flags from the copy during an outage. It is a read
  cache only: never restored into Redis (applications record it again).

Every method is one SQLite transaction under one lock, so a reader never sees
half of an update. An unusable copy raises ``errors.FlagError``. ``path=None``
keeps the copy in memory only (for the life of the process). Several processes
may share one file (SQLite locking, WAL).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

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
"""

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


class Snapshot:
    """A consistent read of the Redis side (one ``MULTI``), to mirror into the cache.

    ``full``: replace the cached history with ``history``/``migrations``;
    otherwise they are entries after the cache's last ones, to append. (A
    plain class: a private record, so ``import foundation`` builds no
    dataclass for it; see ``foundation._public``.)
    """

    __slots__ = ("epoch", "full", "history", "migrations", "stages", "states", "version")

    def __init__(  # noqa: PLR0917 - one field each
        self,
        version: int,
        epoch: str | None,
        states: dict[str, str],
        stages: dict[str, int],
        history: list[Entry],
        migrations: list[Entry],
        full: bool,
    ) -> None:
        self.version = version
        self.epoch = epoch
        self.states = states
        self.stages = stages
        self.history = history
        self.migrations = migrations
        self.full = full


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

    Raises ``sqlite3.Error`` / ``OSError`` on an unusable file (the store
    decides what to do about it).

    Example:
        >>> cache = NodeCache(None)
        >>> cache.version, cache.has_data()
        (0, False)
        >>> cache.close()
    """

    def __init__(self, path: Path | None) -> None:
        import sqlite3

        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by the store's threads, serialised by _lock;
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            check_same_thread=False,
            isolation_level=None,
            timeout=5.0,
        )
        try:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM meta").fetchone()
        except BaseException:
            self._db.close()
            raise

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

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._guard(), self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._guard(), self._lock:
            return self._db.execute(sql, args).fetchall()

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

    def migrations(self) -> list[Entry]:
        return self._entries("migrations")

    def _entries(self, table: str) -> list[Entry]:
        rows = self._read(f"SELECT ms, seq, fields FROM {table} ORDER BY ms, seq")
        with self._guard():
            return [(f"{ms}-{seq}", _loads(fields)) for ms, seq, fields in rows]

    def catalogue(self) -> dict[str, str]:
        """The flag catalogue as last kept (``set_catalogue``): name -> FlagInfo JSON."""
        return {str(n): str(i) for n, i in self._read("SELECT name, info FROM catalogue")}

    def last_ids(self) -> tuple[str | None, str | None]:
        """The ids of the last cached history and migration entries (None: none)."""
        out: list[str | None] = []
        for table in ("history", "migrations"):
            rows = self._read(f"SELECT ms, seq FROM {table} ORDER BY ms DESC, seq DESC LIMIT 1")
            out.append(f"{rows[0][0]}-{rows[0][1]}" if rows else None)
        return out[0], out[1]

    def pending(self) -> list[PendingKillSwitch]:
        """Pending kill switches, oldest first."""
        rows = self._read("SELECT id, op FROM pending ORDER BY id")
        with self._guard():
            return [PendingKillSwitch.from_json(int(i), str(op)) for i, op in rows]

    # ---------------------------------------------------------------- writes

    def apply(self, snap: Snapshot) -> None:
        """Mirror ``snap`` (one SQLite transaction: never half of it)."""
        with self._write() as db:
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
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(snap.version),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('synced', '1')")
            if snap.epoch is None:
                db.execute("DELETE FROM meta WHERE key = 'epoch'")
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (snap.epoch,))

    def set_catalogue(self, entries: dict[str, str]) -> None:
        """Replace the kept catalogue with ``entries`` (name -> FlagInfo JSON)."""
        with self._write() as db:
            db.execute("DELETE FROM catalogue")
            db.executemany("INSERT INTO catalogue VALUES (?, ?)", entries.items())

    def add_pending(self, op: PendingKillSwitch) -> int:
        """Record ``op`` durably (its ``id`` is ignored); returns the id given."""
        with self._write() as db:
            cursor = db.execute("INSERT INTO pending (op) VALUES (?)", (op.to_json(),))
            return int(cursor.lastrowid or 0)

    def remove_pending(self, op_id: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pending WHERE id = ?", (op_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
