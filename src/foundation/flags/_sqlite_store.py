"""SQLiteFlagStore: the embedded durable store, shareable by processes on one machine.

The file is in WAL mode (readers never block the writer), every write is one
``BEGIN IMMEDIATE`` transaction (writers queue on SQLite's write lock for up to
``busy_timeout`` seconds, across processes), and ``synchronous=FULL`` makes a
committed change durable before the call returns.

Changes made by other processes reach subscribers through a watcher thread
(started on the first ``subscribe``) that polls ``PRAGMA data_version`` every
``poll_interval`` seconds (default 0.05): a poll costs microseconds and needs no
lock, and a change is seen within one interval.

Errors: a file that is not a flag store (corrupt, not SQLite, unreadable,
newer schema) raises ``errors.FlagError``; a write lock held by another
connection for longer than ``busy_timeout`` raises ``errors.BackendUnavailable``
(the backend could not be reached within its time bound). Either way nothing
was written.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

from foundation.errors import BackendUnavailable, FlagError
from foundation.flags._store import (
    FlagChange,
    FlagState,
    FlagStore,
    MigrationEvent,
    StoreTransaction,
    report_callback_error,
)

__all__ = ["SQLiteFlagStore"]

T = TypeVar("T")

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS foundation_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flag_state (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flag_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, flag TEXT NOT NULL,
    origin TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS flag_history_flag ON flag_history (flag, id);
CREATE TABLE IF NOT EXISTS migration_stage (plan TEXT PRIMARY KEY, stage INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS migration_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, record TEXT NOT NULL);
"""


class _Txn(StoreTransaction):
    def __init__(self, conn: sqlite3.Connection, origin: str) -> None:
        self._conn = conn
        self._origin = origin

    def get(self, name: str) -> FlagState | None:
        row = self._conn.execute("SELECT state FROM flag_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else FlagState.from_json(row[0])

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        if state is None:
            self._conn.execute("DELETE FROM flag_state WHERE name = ?", (name,))
        else:
            self._conn.execute(
                "INSERT OR REPLACE INTO flag_state (name, state) VALUES (?, ?)",
                (name, state.to_json()),
            )
        self._conn.execute(
            "INSERT INTO flag_history (flag, origin, record) VALUES (?, ?, ?)",
            (name, self._origin, change.to_json()),
        )

    def migration_stage(self, plan: str) -> int:
        row = self._conn.execute(
            "SELECT stage FROM migration_stage WHERE plan = ?", (plan,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO migration_stage (plan, stage) VALUES (?, ?)", (plan, stage)
        )
        self._conn.execute(
            "INSERT INTO migration_history (plan, record) VALUES (?, ?)", (plan, event.to_json())
        )


class SQLiteFlagStore(FlagStore):
    """Flag state, history and migration stages in one SQLite file.

    Several processes may open the same file; their writes are serialised by
    SQLite and each sees the others' changes (subscribers within
    ``poll_interval``). Thread-safe; ``close()`` stops the watcher thread.

    Example:
        >>> import tempfile, os
        >>> from foundation.flags import FeatureFlags, Flag
        >>> path = os.path.join(tempfile.mkdtemp(), "flags.db")
        >>> with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as f:
        ...     f.enable("beta", by="ana")
        >>> with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as f:
        ...     f.enabled("beta"), f.history()[0].by
        (True, 'ana')
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._origin = uuid.uuid4().hex  # tells our own history rows from others'
        self._lock = threading.Lock()
        self._closed = False
        self._callbacks: tuple[Callable[[list[FlagChange]], None], ...] = ()
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_id = 0
        self._conn = self._connect()
        try:
            with self._errors("opening"):
                self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(statement)
                row = self._conn.execute(
                    "SELECT value FROM foundation_meta WHERE key = 'schema'"
                ).fetchone()
                if row is None:
                    self._conn.execute(
                        "INSERT INTO foundation_meta (key, value) VALUES ('schema', ?)",
                        (SCHEMA_VERSION,),
                    )
                elif row[0] != SCHEMA_VERSION:
                    raise FlagError(
                        f"{self.path!r} uses flag store schema {row[0]!r}; "
                        f"this version of Foundation reads schema {SCHEMA_VERSION!r}"
                    )
                self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise FlagError(f"cannot open flag store {self.path!r}: {exc}") from exc

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                raise BackendUnavailable(
                    f"flag store {self.path!r} stayed locked by another connection for "
                    f"more than busy_timeout={self.busy_timeout}s while {doing}"
                ) from exc
            raise FlagError(f"flag store {self.path!r} failed while {doing}: {exc}") from exc
        except sqlite3.Error as exc:
            raise FlagError(
                f"{self.path!r} is not a usable flag store (corrupt or not SQLite?) "
                f"while {doing}: {exc}"
            ) from exc

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with suppress(sqlite3.Error):  # the transaction is gone either way
                self._conn.execute("ROLLBACK")

    def _check_open(self) -> None:
        if self._closed:
            raise FlagError(f"flag store {self.path!r} is closed")

    # --------------------------------------------------------------- contract

    def load_states(self) -> dict[str, FlagState]:
        with self._lock, self._errors("loading flag states"):
            self._check_open()
            rows = self._conn.execute("SELECT name, state FROM flag_state").fetchall()
        return {name: FlagState.from_json(text) for name, text in rows}

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        with self._lock, self._errors("writing"):
            self._check_open()
            # IMMEDIATE takes the write lock now, so reads inside fn cannot go
            # stale before COMMIT: other processes' writers wait for us.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(_Txn(self._conn, self._origin))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return result

    def history(self, flag: str | None = None) -> list[FlagChange]:
        with self._lock, self._errors("reading history"):
            self._check_open()
            if flag is None:
                rows = self._conn.execute("SELECT record FROM flag_history ORDER BY id").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT record FROM flag_history WHERE flag = ? ORDER BY id", (flag,)
                ).fetchall()
        return [FlagChange.from_json(r[0]) for r in rows]

    def migration_stage(self, plan: str) -> int:
        with self._lock, self._errors("reading a migration stage"):
            self._check_open()
            return _Txn(self._conn, self._origin).migration_stage(plan)

    def migration_history(self, plan: str) -> list[MigrationEvent]:
        with self._lock, self._errors("reading migration history"):
            self._check_open()
            rows = self._conn.execute(
                "SELECT record FROM migration_history WHERE plan = ? ORDER BY id", (plan,)
            ).fetchall()
        return [MigrationEvent.from_json(r[0]) for r in rows]

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        with self._lock:
            self._check_open()
            if self._watcher is None:
                with self._errors("subscribing"):
                    row = self._conn.execute("SELECT max(id) FROM flag_history").fetchone()
                # Changes committed before this point are in the subscriber's own
                # load; the watcher reports only rows after it.
                self._last_id = row[0] or 0
                self._watcher = threading.Thread(
                    target=self._watch, name=f"foundation-sqlite-flags:{self.path}", daemon=True
                )
                self._watcher.start()
            self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            watcher = self._watcher
        if watcher is not None:
            watcher.join()
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteFlagStore({self.path!r})"

    # ---------------------------------------------------------------- watcher

    def _watch(self) -> None:
        """Poll ``data_version``; hand other connections' new history rows to callbacks."""
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            version = None
            while not self._stop.wait(self.poll_interval):
                try:
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                    if current == version:
                        continue
                    version = current
                    # Writers are serialised and ids are assigned inside the write
                    # transaction, so ids commit in increasing order: no row with a
                    # smaller id can appear after we have read a larger one.
                    rows = conn.execute(
                        "SELECT id, origin, record FROM flag_history WHERE id > ? ORDER BY id",
                        (self._last_id,),
                    ).fetchall()
                except sqlite3.Error:
                    version = None  # transient (for example a file being replaced): retry
                    continue
                if not rows:
                    continue
                self._last_id = rows[-1][0]
                remote = [r[2] for r in rows if r[1] != self._origin]
                if remote:
                    try:
                        changes = [FlagChange.from_json(text) for text in remote]
                    except FlagError:
                        changes = []  # unreadable records: still tell subscribers to reload
                    self._deliver(changes)
        finally:
            conn.close()

    def _deliver(self, changes: list[FlagChange]) -> None:
        for callback in self._callbacks:
            try:
                callback(changes)
            except Exception as exc:
                report_callback_error(exc, callback)
