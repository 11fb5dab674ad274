"""SQLiteFlagStore: the embedded durable store, shareable by processes on one machine.

Connections, one per role, so no role waits on another's lock in this process:

- the *writer* runs every write as one ``BEGIN IMMEDIATE`` transaction with
  ``synchronous=FULL`` (a committed change is durable before the call returns);
- the *reader* answers ``load_states``, ``history`` and the migration reads.
  The file is in WAL mode, so a read never waits for a writer, here or in
  another process;
- the *watcher* (a thread started on the first ``subscribe``) follows other
  connections' commits.

Waiting for the write lock. SQLite's own busy handler sleeps 1, 2, 5, 10 ... up
to 100 ms between attempts, so a process whose neighbour writes flat out
rarely finds the lock free when it looks, and its writes (a kill switch among
them) queued for tens of milliseconds or more. The writer connection
therefore has no busy handler; ``BEGIN IMMEDIATE`` is retried every 0.05-0.4 ms
(jittered; 0.5-2 ms once it has waited 20 ms) until ``busy_timeout``.

Following other processes. The watcher polls ``PRAGMA data_version`` (no
lock; about 0.1 ms of CPU per wake-up here): every ``poll_interval`` seconds
(default 0.02, ~1 % of a core) when idle, every ``FAST_POLL`` seconds for
``HOT_FOR`` seconds after another connection's change, so a stream of changes
is followed closely. When the version moved it reads only the history rows
after the last one it saw (by rowid, one autocommit statement: a WAL read
transaction as short as the query, never waiting on a writer) and hands those
written by other connections to the subscribers in one batch. A row holds the
change only (a delta, see ``_history``): the watcher replays every row, its own
included, from the states of the snapshot it started at, so subscribers get
whole ``FlagChange`` records; a row it cannot rebuild makes it start again from
a fresh snapshot and tell subscribers to reload (``[]``). Polling was
chosen over a side channel (socket, FIFO next to the file): it needs no extra
files, sees writers that do not cooperate (another version, the sqlite3
shell), and its cost is bounded by the interval. The first subscriber is
reported every row after the last ``load_states()`` snapshot (a commit between
its load and its subscribe is not skipped); a later one is first told to
reload (an empty batch), since the watcher may already be past its load.

Errors: a file SQLite cannot use as it is (a full disk, read-only, an I/O
error, corrupt: ``_FILE_TROUBLE``), or one deleted or replaced while in use,
raises ``errors.FlagStoreUnavailable`` (a ``FlagError`` and a
``BackendUnavailable``: the admin API answers 503, the command line exits 69);
a file that is not SQLite, a newer schema, or another SQLite error (an SQL
error: maybe a defect of ours) raises ``errors.FlagError``; a write lock held
by other connections for longer than ``busy_timeout`` raises
``errors.BackendUnavailable`` (the backend could not be reached within its
time bound). Either way nothing was written, and a failed write is logged
(WARNING, ``foundation.flags``) with what SQLite said (disk full, read-only...).
Opening a file that already holds the schema writes nothing, so a store opens
(and reads) while another process holds the write lock.

The file deleted or replaced (renamed over) while in use, or its -wal or -shm
file deleted (a cleanup, a tmp reaper): this store's connections still hold
the old file, which no other process sees any more. The store is then *stale*
for good (``stale``, ``stale_since``, ``stale_reason``), as noticed by the
watcher (within ``poll_interval``) or by a write: it logs one ERROR, the
watcher delivers the commits of the old file it had not read yet (see
``_drain_old_file``), emits the ``foundation.flags.stale`` telemetry event (data:
``path``, ``error``; an OpenFeature provider then emits ``PROVIDER_STALE``, and the
admin status says the store is degraded) and stops following the file: subscribers
are called no more (nothing is logged per change made elsewhere). A write
raises ``errors.FlagStoreUnavailable`` instead of landing there; reads answer from the
old file (in a process that also opened the new one they may fail with
``FlagError``; ``FeatureFlags`` serves what it last read). Reopen the store
(restart the process) to use the new one. (The commits of a deleted -wal not
yet copied into the file are lost: SQLite keeps them nowhere else.) The path
is resolved once, at construction: every connection, the watcher's included,
opens that file whatever ``os.chdir()`` comes later, and through a symlink the
-wal and -shm checked are those beside the file it points to (where SQLite
keeps them); the link pointed elsewhere replaces the file.

A store creating its file (missing or empty) removes the -wal and -shm a deleted
one left at the path, under an ``flock`` on ``<file>.lock``, there meanwhile
(see ``_creating``).

A process opening the store on a full disk fails (``FlagStoreUnavailable``, "is the disk
full?"), even to read: WAL mode must grow the -shm file first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from foundation import _fork, telemetry
from foundation._listeners import check_listener, unsubscriber
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FlagError,
    FlagStoreUnavailable,
    FoundationError,
    InvalidConfig,
    bounded_repr,
)
from foundation.flags._history import Replay, encode_json, rebase
from foundation.flags._store import (
    DEFAULT_HISTORY_LIMIT,
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    MigrationEvent,
    StoreTransaction,
    SubscriberMarks,
    _loads,
    catalogue_entries,
    check_history_limit,
    check_key,
    check_put,
    check_put_migration,
    current_writer,
    events_to_keep,
    log_trim,
    plan_flag_entries,
    plan_from_json,
    plan_to_json,
    report_callback_error,
    trim_slack,
)

if TYPE_CHECKING:
    # sqlite3, uuid and random are imported where used: only a SQLite store needs
    # them, and `import foundation` stays cheap.
    import sqlite3

    from foundation.flags._migration import MigrationPlan

__all__ = ["SQLiteFlagStore", "stale_files"]

log = logging.getLogger("foundation.flags")

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
CREATE TABLE IF NOT EXISTS flag_catalogue (name TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migration_plan (name TEXT PRIMARY KEY, plan TEXT NOT NULL);
"""
_CREATE_PLAN_FLAG = """CREATE TABLE IF NOT EXISTS migration_plan_flag (
    plan TEXT NOT NULL, flag TEXT NOT NULL, stage INTEGER NOT NULL,
    PRIMARY KEY (plan, flag, stage))"""
# flag_catalogue and migration_plan were added without a schema change: older
# versions ignore them, and opening an older file creates them (IF NOT EXISTS).
# migration_plan_flag (_CREATE_PLAN_FLAG) too, but it is created by the first
# record_plan, not at opening: a file from before it opens read-only all the same
# (read as empty).
_ADD_PLAN_FLAG = "INSERT OR IGNORE INTO migration_plan_flag (plan, flag, stage) VALUES (?, ?, ?)"

FAST_POLL = 0.002
"""Seconds between ``data_version`` polls while changes are flowing."""
HOT_FOR = 1.0
"""Seconds after another connection's last change during which the watcher polls every
``FAST_POLL``."""
_LOCK_RETRY = (0.00005, 0.0004)
"""Bounds of the jittered pause between two attempts at the write lock (seconds)..."""
_LOCK_RETRY_SLOW = (0.0005, 0.002)
"""... and after ``_LOCK_PATIENCE`` seconds of waiting (a long holder: spend less CPU)."""
_LOCK_PATIENCE = 0.02


def _is_read_only(exc: sqlite3.Error) -> bool:
    return str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_READONLY")


_FILE_TROUBLE = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_NOLFS",
    "SQLITE_PROTOCOL",
    "SQLITE_CORRUPT",
)
"""SQLite's error codes (and extended codes: prefixes) for a file that cannot be used
as it is (disk, permissions, I/O, damage): ``FlagStoreUnavailable``. Any other error
stays ``FlagError``: a file that is not SQLite at all (``SQLITE_NOTADB``: the wrong
file, a setting to fix), an SQL error or a constraint (maybe a defect of our own)."""


def _error_type(exc: sqlite3.Error) -> type[FlagError]:
    """``FlagStoreUnavailable`` for SQLite's ``exc`` on a file it cannot use
    (``_FILE_TROUBLE``), else ``FlagError``."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return FlagStoreUnavailable if name.startswith(_FILE_TROUBLE) else FlagError


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


_HEAD_AND_TAIL = "SELECT (SELECT min(id) FROM flag_history), (SELECT max(id) FROM flag_history)"
_EVENTS_HEAD_AND_TAIL = (
    "SELECT (SELECT min(id) FROM migration_history), (SELECT max(id) FROM migration_history)"
)


_SIDE_FILES = ("", "-wal", "-shm")
"""Suffixes of the files a store in WAL mode holds: the database, its -wal and -shm."""


def _what_moved(suffix: str) -> str:
    """How a log line or error names the file of ``_SIDE_FILES`` that moved."""
    return f" (its {suffix} file, which SQLite keeps next to it)" if suffix else ""


def _has_content(path: str) -> bool:
    """Whether ``path`` is there with at least one byte (a database, not one being made)."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _explain(exc: sqlite3.Error) -> str:
    """SQLite's message, its error code and what it likely means for an operator."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if name.startswith("SQLITE_FULL") or name == "SQLITE_IOERR_WRITE":
        hint = "; is the disk full or the file size limit reached?"
    elif name == "SQLITE_IOERR_SHMSIZE":  # growing the -shm file: even a read needs it
        hint = (
            "; is the disk full? (WAL mode needs room for the -shm file next to it, even "
            "to read: a process cannot open the store on a full disk)"
        )
    elif name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        hint = (
            "; can this process write the file and its directory? (WAL mode keeps "
            "-wal and -shm files next to it)"
        )
    elif name == "SQLITE_IOERR_SHORT_READ":
        hint = (
            "; is its -shm file left over from a deleted database that other processes "
            "still hold? (stop them; or, if no process uses this file, delete its -wal "
            "and -shm)"
        )
    else:
        hint = ""
    return f"{exc} ({name}){hint}"


class _Txn(StoreTransaction):
    def __init__(self, conn: sqlite3.Connection, origin: str) -> None:
        self._conn = conn
        self._origin = origin
        # Runtime states read or written in this transaction (it holds the write lock).
        self._states: dict[str, FlagState | None] = {}
        self.wrote = False  # a history row was added: the store may trim (see _trim)
        self.wrote_events = False  # a migration event was added (see _trim_migrations)

    def get(self, name: str) -> FlagState | None:
        check_key(name, "flag name")
        if name not in self._states:
            row = self._conn.execute(
                "SELECT state FROM flag_state WHERE name = ?", (name,)
            ).fetchone()
            self._states[name] = None if row is None else FlagState.from_json(row[0])
        return self._states[name]

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        check_put(name, state, change)  # before any statement: bad input writes nothing
        # The record is a delta of the runtime state this put replaces (see _history);
        # whole when the history holds no row of the flag (all trimmed, see _trim).
        before = self.get(name)
        if before is not None and not self._has_rows(name):
            before = None
        record = encode_json(change, before, state)
        self.wrote = True
        self._states[name] = state
        if state is None:
            self._conn.execute("DELETE FROM flag_state WHERE name = ?", (name,))
        else:
            self._conn.execute(
                "INSERT OR REPLACE INTO flag_state (name, state) VALUES (?, ?)",
                (name, state.to_json()),
            )
        self._conn.execute(
            "INSERT INTO flag_history (flag, origin, record) VALUES (?, ?, ?)",
            (name, self._origin, record),
        )

    def _has_rows(self, name: str) -> bool:
        """Whether the history holds a row of ``name`` (the (flag, id) index: O(log n))."""
        sql = "SELECT 1 FROM flag_history WHERE flag = ? LIMIT 1"
        return self._conn.execute(sql, (name,)).fetchone() is not None

    def migration_stage(self, plan: str) -> int:
        check_key(plan, "plan name")
        row = self._conn.execute(
            "SELECT stage FROM migration_stage WHERE plan = ?", (plan,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        check_put_migration(plan, stage, event)
        self._conn.execute(
            "INSERT OR REPLACE INTO migration_stage (plan, stage) VALUES (?, ?)", (plan, stage)
        )
        self._conn.execute(
            "INSERT INTO migration_history (plan, record) VALUES (?, ?)", (plan, event.to_json())
        )
        self.wrote_events = True


class SQLiteFlagStore(FlagStore):
    """Flag state, history and migration stages in one SQLite file.

    Several processes may open the same file; their writes are serialised by
    SQLite and each sees the others' changes (subscribers within
    ``poll_interval`` when idle, within ``FAST_POLL`` while changes flow).
    ``history_limit``: the history keeps the last that many rows of all flags
    together (at most 10 % more between trims; None: all; see ``_history``), and
    the migration history as many events of all plans together; each
    process trims with its own limit, so the smallest one in use wins.
    Thread-safe; ``close()`` stops the watcher thread. ``busy_timeout`` (seconds, at
    least 0) and ``poll_interval`` (seconds, above 0) are finite numbers up to
    ``threading.TIMEOUT_MAX``; a bad one, or a path that is not a ``str``/``PathLike``
    (or holds a NUL), is ``errors.InvalidConfig``.

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

    #: ``close()`` ran to its end: watcher joined, connections closed.
    _released = False
    #: Inherited across fork(): closed in the child (see ``_inherited_by_fork``).
    _forked = False
    # The kind of the last write failure logged, until a write succeeds (per store:
    # set on the instance by _log_write_failure).
    _failing_writes: tuple[type[FoundationError], bool] | None = None
    # The file found deleted or replaced ("" or its "-wal" or "-shm", see _moved) and
    # when: set on the instance once, under _read_lock, by the watcher or a write
    # (the store is stale for good, see _mark_stale).
    _moved_what: str | None = None
    _stale_since: float | None = None
    _stale_reported = False  # the watcher emitted foundation.flags.stale (its own flag)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.02,
        history_limit: int | None = DEFAULT_HISTORY_LIMIT,
    ) -> None:
        import uuid

        self.history_limit = check_history_limit(history_limit)
        self._trims = 0  # trims this store made (the first is logged at INFO)
        self._next_trim_at = 0  # after a failed trim: the history id to try again at
        self._event_trims = 0  # trims of the migration history (the same rule, apart)
        self._next_event_trim_at = 0  # ... and the migration_history id to try again at

        try:
            self.path = os.fspath(path)
        except TypeError:
            raise InvalidConfig(
                f"a flag store path is a str or PathLike, not {bounded_repr(path)}"
            ) from None
        if not isinstance(self.path, str) or "\0" in self.path:
            raise InvalidConfig(f"not a usable flag store path: {bounded_repr(self.path)}")
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            # The store's writer, reader and watcher are separate connections: each
            # would get a database of its own, and nothing written would be read.
            raise InvalidConfig(
                f"a SQLiteFlagStore needs a file, not {bounded_repr(self.path)} (its "
                "connections would not share an in-memory database): use MemoryFlagStore"
            )
        self._shown = bounded_repr(self.path)  # messages stay short, whatever the path
        # Fixed at construction, so a later os.chdir() moves no file: every
        # connection opens _real_path (the file SQLite resolves, symlinks
        # followed, with its -wal and -shm beside it), and the stale check stats
        # _abs_path (a symlink pointed elsewhere replaces the file) and the side
        # files beside _real_path.
        self._abs_path = os.path.abspath(self.path)
        self._real_path = os.path.realpath(self.path)
        for what, value, least in (
            ("busy_timeout", busy_timeout, 0.0),
            ("poll_interval", poll_interval, 1e-6),
        ):
            # NaN would retry a busy lock forever; 0 or less would poll in a hot loop.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not least <= value <= threading.TIMEOUT_MAX
            ):
                raise InvalidConfig(
                    f"{what} must be a number of seconds in {least:g}.."
                    f"{threading.TIMEOUT_MAX:g}, not {bounded_repr(value)}"
                )
        self.busy_timeout = float(busy_timeout)
        self.poll_interval = float(poll_interval)
        self._origin = uuid.uuid4().hex  # tells our own history rows from others'
        self._lock = threading.Lock()  # the writer connection, _closed, _watcher, _callbacks
        # The reader connection, _loaded_upto and _catch_up: never held while
        # waiting for SQLite's write lock, so the watcher may take it.
        self._read_lock = threading.Lock()
        self._closed = False
        self._callbacks: tuple[Callable[[list[FlagChange]], None], ...] = ()
        self._marks = SubscriberMarks()  # names a row's writing subscriber (_row_origin)
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._loaded_upto: int | None = None  # history id of the last load_states() snapshot
        self._loaded_states: dict[str, FlagState] = {}  # ... and its runtime states
        self._catch_up: tuple[Callable[[list[FlagChange]], None], ...] = ()  # owed a reload
        # Watcher state, touched only by the watcher thread once it runs.
        self._last_id = 0
        self._feed = Replay()  # runtime states as of _last_id: the base of the next deltas
        self._version: int | None = None
        self._hot_until = 0.0
        self._watch_failing = False  # the watcher has logged that it cannot read the file
        # A write found the writer read-only: open it again first (see _reopen_if_read_only).
        self._writer_read_only = False
        # No busy handler on the writer: _begin() retries the write lock itself.
        self._conn = self._open_writer()
        try:
            # The files our connections hold (the database, its -wal and -shm), to
            # notice one deleted or replaced. Race: a rename over the path during
            # this open. Taken once the writer has written or read the file (in WAL
            # mode it then holds the -wal and -shm too), and compared once the
            # reader is open: a change in between is refused. (One before the
            # writer's own open is not seen: Python's sqlite3 does not expose the
            # file it holds.) None for a file not there (yet): not checked.
            self._identity = self._file_identity()
            # Never creating the file: one deleted since is refused, not made anew.
            self._reader = self._connect(timeout=busy_timeout, existing=True)
            if self._identity != self._file_identity():
                self._reader.close()
                raise FlagError(f"flag store {self._shown} was replaced while opening")
        except BaseException:
            self._conn.close()
            raise
        _opened(self)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O.

        The child has no watcher thread (it served the fork-time state for
        ever), its rows carried this store's origin (the parent's watcher
        dropped them as its own), and SQLite forbids a connection opened
        before fork(). Every call raises ``Closed`` naming fork(); ``close()``
        does nothing (``_released``) and the connections are never closed
        here (``keep``: a close may checkpoint the parent's WAL). New locks:
        a parent thread may have held one at the fork.
        """
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._callbacks = self._catch_up = ()
        self._closed = self._forked = self._released = True
        _fork.keep(self._conn, self._reader)

    def _open_writer(self) -> sqlite3.Connection:
        """The writer, connected and set up (``_create``). A file with content is
        opened as it is (never created: ``existing``); one not there or empty is
        created under the creation lock, leftovers removed first (``_creating``)."""
        if _has_content(self._real_path):
            try:
                return self._set_up(self._connect(timeout=0.0, existing=True))
            except FlagError:
                if _has_content(self._real_path):
                    raise
                # Race: deleted since it was looked at: created like a new one.
        with self._creating():
            return self._set_up(self._connect(timeout=0.0))

    def _set_up(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """``conn`` as the writer, after ``_create``; closed if that fails."""
        self._conn = conn
        try:
            self._create()
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _creating(self) -> Iterator[None]:
        """Held while this store creates its file (missing or empty): the creation
        lock, and the -wal and -shm of a deleted database removed first.

        An operator's ``rm flags.db`` while processes hold it leaves its -wal and
        -shm at the path (SQLite removes them only when its last connection
        closes, and not at all for a deleted file). A new store then made its new
        file share that -shm with the old processes: SQLite trusted the old
        wal-index and failed (SQLITE_IOERR_SHORT_READ), leaving a 4096-byte file,
        in every new process until the last old one exited. SQLite never uses a
        -wal or -shm without its database file (it deletes a -wal beside an empty
        one itself), so they are removed here; the old processes keep theirs
        (open files) and are stale (``_moved``).

        Race: two processes creating the file at once: the second must not remove
        the first one's fresh -wal and -shm (its commits). Every creator holds an
        exclusive ``flock`` on ``<file>.lock`` (see ``_creation_lock``; removed
        after) from the check to the end of ``_create``, when the file has
        content (WAL mode writes page 1 before it makes the -wal): under the lock a
        missing or empty file is one nobody is creating. A store opening a file
        with content never creates one (``mode=rw``), so no file appears unlocked.
        (Versions before this lock, and other programs, create without it.)
        Without a lock to be had (no ``flock``, a lock file that cannot be
        made), leftovers are not removed: ``FlagError`` names them, nothing made.
        """
        fd = self._creation_lock()
        if fd is None:
            leftovers = self._leftovers()
            if leftovers:
                raise FlagError(
                    f"{self._leftover_text(leftovers)}; they cannot be removed safely "
                    f"here (no lock on {self._real_path}.lock): stop the processes "
                    "that still hold the deleted file, or delete them, then open it again"
                )
            yield
            return
        try:
            self._remove_leftovers()
            yield
        finally:
            # Removed while held, then released: a waiter on it re-checks the path
            # (_creation_lock), so no lock file is left beside the database.
            with suppress(OSError):
                os.unlink(self._real_path + ".lock")
            os.close(fd)  # releases the flock

    def _creation_lock(self) -> int | None:
        """An fd holding the exclusive flock on ``<file>.lock`` (waited for up to
        ``busy_timeout``), or None if no lock can be had here.

        Race: the holder removes the lock file before it releases it (``_creating``),
        so a waiter may get the lock of a file no longer at the path while a newcomer
        locks a new one: the lock counts only if the path still names the file
        locked, else it is tried again."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            fd = self._try_creation_lock()
            if fd is None or fd >= 0:
                return fd
            if time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"flag store {self._shown}: another process held {self._real_path}"
                    f".lock (creating the file) for more than busy_timeout={self.busy_timeout}s"
                )
            self._pause(deadline, patient=True)

    def _try_creation_lock(self) -> int | None:
        """One attempt of ``_creation_lock``: the fd, -1 (held elsewhere, or a lock
        file removed meanwhile: try again), or None (no lock to be had here)."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            return None
        lock_path = self._real_path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held, there = os.fstat(fd), os.stat(lock_path)
        except BlockingIOError:
            os.close(fd)
            return -1
        except FileNotFoundError:  # removed by the holder we waited for
            os.close(fd)
            return -1
        except OSError:  # flock not supported here (some network filesystems)
            os.close(fd)
            return None
        if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
            os.close(fd)
            return -1
        return fd

    def _leftovers(self) -> list[str]:
        """The -wal and -shm at the path, if the file is missing or empty (else none)."""
        if _has_content(self._real_path):
            return []
        return [s for s in ("-wal", "-shm") if os.path.lexists(self._real_path + s)]

    def _leftover_text(self, leftovers: list[str]) -> str:
        names = " and ".join(self._real_path + s for s in leftovers)
        return (
            f"flag store {self._shown}: {names} left over from a deleted database (still "
            "held open by stores, in other processes say, which are stale; SQLite never "
            "uses them without their database file)"
        )

    def _remove_leftovers(self) -> None:
        """Remove ``_leftovers`` (under the creation lock); one WARNING if any."""
        leftovers = self._leftovers()
        try:
            for suffix in leftovers:
                with suppress(FileNotFoundError):
                    os.unlink(self._real_path + suffix)
        except OSError as exc:
            raise FlagError(
                f"{self._leftover_text(leftovers)}; they cannot be removed ({exc}): delete "
                "them, or stop the processes that still hold the deleted file"
            ) from None
        if leftovers:
            log.warning("%s: removed them to create the file anew", self._leftover_text(leftovers))

    def _connect(self, *, timeout: float, existing: bool = False) -> sqlite3.Connection:
        """A connection to the file; ``existing``: never create it (``mode=rw``)."""
        import sqlite3

        target = self._real_path
        if existing:  # SQLite's URI: "%", "?" and "#" escaped (no import: see the OOM tests)
            escaped = self._real_path.replace("%", "%25")
            target = "file:" + escaped.replace("?", "%3f").replace("#", "%23") + "?mode=rw"
        try:
            return sqlite3.connect(
                target,
                timeout=timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # each connection is guarded by its own lock
                uri=existing,
            )
        except sqlite3.Error as exc:
            # A path SQLite cannot open at all (no such directory, a directory):
            # a setting to fix, not trouble to wait out: FlagError, as before.
            cantopen = str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_CANTOPEN")
            error = FlagError if cantopen else _error_type(exc)
            raise error(f"cannot open flag store {self._shown}: {exc}") from exc

    def _create(self) -> None:
        """WAL mode and the schema, in one write transaction (retried while busy)."""
        with self._errors("opening"):
            mode = self._switch_to_wal()
            if mode != "wal":
                # WAL refused (a filesystem without shared memory): COMMIT may then
                # wait for readers, so let SQLite's busy handler cover the whole write.
                self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._conn.execute("PRAGMA synchronous=FULL")
            if mode == "wal" and self._has_schema():
                return  # nothing to write: no wait for a write lock another process holds
            try:
                self._begin()  # inside the try: see transaction()'s race
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
                        f"{self._shown} uses flag store schema {row[0]!r}; "
                        f"this version of Foundation reads schema {SCHEMA_VERSION!r}"
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _has_schema(self) -> bool:
        """True if the file holds every table and index of this schema version (a read:
        in WAL mode it never waits for a writer)."""
        wanted = {
            statement.split("EXISTS", 1)[1].split()[0]
            for statement in _SCHEMA.split(";")
            if "EXISTS" in statement
        }
        names = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master")}
        if not wanted <= names:
            return False
        row = self._conn.execute(
            "SELECT value FROM foundation_meta WHERE key = 'schema'"
        ).fetchone()
        return row is not None and row[0] == SCHEMA_VERSION

    def _file_identity(self) -> tuple[tuple[int, int] | None, ...]:
        """(device, inode) of the file at ``path`` now (a symlink followed as it
        points now), then of the -wal and -shm files (``_SIDE_FILES``) beside the
        file it resolved to at construction, where SQLite keeps them; None for
        one that is not there."""
        found: list[tuple[int, int] | None] = []
        for suffix in _SIDE_FILES:
            try:
                st = os.stat(self._real_path + suffix if suffix else self._abs_path)
            except OSError:
                found.append(None)
            else:
                found.append((st.st_dev, st.st_ino))
        return tuple(found)

    def _moved(self) -> str | None:
        """Which file our connections hold was deleted or replaced since the store
        opened ("" for the database itself, else "-wal" or "-shm"); None: none.

        The -wal and -shm files matter as much as the database: once deleted (an
        operator's cleanup, a tmp reaper), this process's commits go to a -wal no
        new connection opens, and are lost when it exits, while another process
        makes new ones. SQLite itself removes them only when the last connection
        to the database closes (checkpoint, then unlink under an exclusive lock,
        which our open connections' shared lock denies to any other process), and
        reuses the same files otherwise (a checkpoint truncates or rewinds the
        -wal in place): so while this store is open, a change is never SQLite's.
        A file absent at open (not WAL mode, say) is not checked.
        """
        for suffix, was, now in zip(
            _SIDE_FILES, self._identity, self._file_identity(), strict=True
        ):
            if was is not None and was != now:
                return suffix
        return None

    def _check_file(self) -> None:
        """Refuse to write into a file that was deleted or replaced under us (no other
        process would ever see the write): FlagStoreUnavailable, nothing written.

        Race: a file deleted between this check and the commit still takes that
        one write (SQLite offers no way to tell); the next write (or the watcher)
        notices it, logs the ERROR and refuses."""
        moved = self._moved_for_good()
        if moved is not None:
            raise FlagStoreUnavailable(
                f"flag store {self._shown}{_what_moved(moved)} was deleted or replaced while "
                "in use; nothing was written (reopen the store, for example restart the "
                "process)"
            )

    def _moved_for_good(self) -> str | None:
        """``_moved``, sticky: once a file was found moved, the store is stale for good
        (marked and logged by ``_mark_stale``; no more stat calls), even if it is put back."""
        if self._moved_what is not None:
            return self._moved_what
        moved = self._moved()
        if moved is not None:
            self._mark_stale(moved)
        return moved

    def _mark_stale(self, moved: str) -> None:
        # Race: a writer and the watcher noticing at once; the read lock makes the
        # check-and-set one step, so the ERROR is logged once.
        with self._read_lock:
            first = self._moved_what is None
            if first:  # _moved_what first: a `stale` store always has its reason
                self._moved_what, self._stale_since = moved, time.time()
        if first:
            log.error("%s", self.stale_reason)

    @property
    def stale(self) -> bool:
        """True once this store found its file (or the file's -wal or -shm) deleted or
        replaced while in use: it holds the old file, which no other process sees;
        other processes' changes are not seen and writes are refused, until the store
        is reopened (see the module's doc). Noticed by the watcher (within
        ``poll_interval``) or a write; reading it does no I/O."""
        return self._stale_since is not None

    @property
    def stale_since(self) -> float | None:
        """Wall-clock time (``time.time()``) the store went ``stale``, else None."""
        return self._stale_since

    @property
    def stale_reason(self) -> str | None:
        """Why the store is ``stale`` (its ERROR line), else None."""
        moved = self._moved_what
        if moved is None:
            return None
        return (
            f"flag store {self._shown}{_what_moved(moved)} was deleted or replaced while in "
            "use: this process holds the old file, which no other process sees; writes are "
            "refused and reads are stale until the store is reopened (restart the process)"
        )

    def _switch_to_wal(self) -> str:
        """The journal mode after asking for WAL (retried while busy, until ``busy_timeout``)."""
        import sqlite3

        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                # Switching a new file to WAL needs every other connection out
                # of it: two processes opening one new file race here, and
                # SQLite answers "locked" at once, so retry like the write lock.
                mode: str = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                return mode
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            self._pause(deadline)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE`` on the writer, retrying a busy lock until ``busy_timeout``.

        Short jittered pauses instead of SQLite's growing ones: a neighbour
        that writes flat out frees the lock between two of its transactions
        for well under a millisecond, and only a frequent attempt catches that.
        """
        import sqlite3

        start = time.monotonic()
        deadline = start + self.busy_timeout
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise  # _errors() makes a busy one BackendUnavailable
            self._pause(deadline, patient=time.monotonic() - start > _LOCK_PATIENCE)

    @staticmethod
    def _pause(deadline: float, *, patient: bool = False) -> None:
        import random

        pause = random.uniform(*(_LOCK_RETRY_SLOW if patient else _LOCK_RETRY))
        # sleep-ok: waiting for another process's write lock; SQLite offers no wake-up.
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    @contextmanager
    def _errors(self, doing: str, *, write: bool = False) -> Iterator[None]:
        import sqlite3

        try:
            yield
        except sqlite3.Error as exc:
            error = self._store_error(exc, doing)
            if write:  # the caller gets the error; the operator a line in the log
                self._write_refused(exc, error)
            raise error from exc
        else:
            if write and self._failing_writes is not None:
                self._failing_writes = None
                log.info("flag store %s takes writes again", self._shown)

    def _store_error(self, exc: sqlite3.Error, doing: str) -> FoundationError:
        """The library error for SQLite's ``exc`` while ``doing``."""
        import sqlite3

        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return BackendUnavailable(
                f"flag store {self._shown} stayed locked by another connection for "
                f"more than busy_timeout={self.busy_timeout}s while {doing}"
            )
        error = _error_type(exc)
        if isinstance(exc, sqlite3.OperationalError):
            return error(f"flag store {self._shown} failed while {doing}: {_explain(exc)}")
        return error(
            f"{self._shown} is not a usable flag store (corrupt or not SQLite?) "
            f"while {doing}: {_explain(exc)}"
        )

    def _write_refused(self, exc: sqlite3.Error, error: FoundationError) -> None:
        """Log a refused write: one WARNING per kind of failure until a write
        succeeds (then one INFO line), the repeats at DEBUG: a caller retrying
        (AutoRollback at every interval while another process holds the lock)
        must not flood the log. (Unlocked: two threads failing at once may both
        log a WARNING; it is a log line.)"""
        read_only = _is_read_only(exc)
        self._writer_read_only = self._writer_read_only or read_only
        # A read-only -wal or -shm stays so after the file's own mode is fixed:
        # the operator needs to see all three.
        modes = f" (file modes: {self._file_modes()})" if read_only else ""
        kind = (type(error), read_only)
        repeat = kind == self._failing_writes
        self._failing_writes = kind
        level = logging.DEBUG if repeat else logging.WARNING
        log.log(level, "%s; nothing was written%s", error, modes)

    def _file_modes(self) -> str:
        """Permission bits and owner of the file and its -wal and -shm, for a log line."""
        found = []
        for suffix in _SIDE_FILES:
            try:
                st = os.stat(self._real_path + suffix)
            except OSError:
                continue
            found.append(f"{suffix or 'file'} {st.st_mode & 0o7777:04o} uid {st.st_uid}")
        return ", ".join(found) or "none found"

    def _begin_writing(self) -> None:
        """``_begin``, on a writer opened again first if a write found it read-only
        (the caller holds ``_lock``).

        Once reopened, the writer may find the -wal file still read-only: SQLite
        gave the -wal and -shm the database's mode when it created them, and the
        operator made only the database writable again. SQLite then opens the
        -wal read-only, and gives it the database's mode as it does (when this
        process owns it): one more reopen, in this same call, writes. Without it
        the first write after the repair, an emergency rollback say, failed.
        """
        import sqlite3

        reopened = self._reopen_if_read_only()
        try:
            self._begin()
        except sqlite3.OperationalError as exc:
            if not (reopened and _is_read_only(exc)):
                raise
            self._writer_read_only = True
            self._reopen_if_read_only()
            self._begin()  # read-only again: the caller's _errors() says so, with the modes

    def _reopen_if_read_only(self) -> bool:
        """Open the writer again if a write found it read-only (the caller holds ``_lock``);
        True if it did.

        SQLite opens a file this process may not write read-only, and that
        connection refuses every write for good: without a new one, the store
        would go on refusing writes (the kill switch included) after an operator
        fixed the file's permissions, until the process restarts. (Not enough when
        the -shm file was read-only too: SQLite shares its mapping between a
        process's connections, so the reader and watcher keep it read-only.)
        """
        if not self._writer_read_only:
            return False
        # Race: the file deleted or replaced since the caller's _check_file: mode=rw
        # never creates one at the path, and the check below refuses a replacement.
        old, self._conn = self._conn, self._connect(timeout=0.0, existing=True)
        old.close()
        self._writer_read_only = False  # a write that fails again sets it again
        self._check_file()
        self._create()  # the writer's pragmas; the schema is there: nothing is written
        return True

    def _rollback(self) -> None:
        import sqlite3

        if self._conn.in_transaction:
            with suppress(sqlite3.Error):  # the transaction is gone either way
                self._conn.execute("ROLLBACK")

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise _fork.forked_closed("SQLiteFlagStore")
            raise Closed(f"flag store {self._shown} is closed")

    # --------------------------------------------------------------- contract

    def load_states(self) -> dict[str, FlagState]:
        # One read transaction on the reader: one WAL snapshot, never half a
        # write, and no wait for a write in progress here or in another process.
        with self._read_lock, self._errors("loading flag states"):
            self._check_open()
            top, states = _snapshot(self._reader)
            # Where this snapshot ends in the history: a watcher started by a
            # later subscribe() reports from here, not from "now" (see subscribe).
            self._loaded_upto, self._loaded_states = top, states
        return dict(states)

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        with self._lock:
            with self._errors("writing", write=True):
                self._check_open()
                self._check_file()
                # IMMEDIATE takes the write lock now, so reads inside fn cannot go
                # stale before COMMIT: other processes' writers wait for us.
                try:
                    # Race: a Ctrl-C is raised at the first check after BEGIN's
                    # execute() returned (its own end). With the BEGIN before the
                    # try, nothing rolled back: the writer stayed in that
                    # transaction, holding SQLite's write lock (other processes'
                    # writes waited out busy_timeout), and every later BEGIN
                    # failed "within a transaction": the store took no write
                    # again, the kill switch included. _rollback() ends it (and
                    # does nothing if the BEGIN did not run).
                    self._begin_writing()
                    txn = _Txn(self._conn, self._row_origin())
                    result = fn(txn)
                    due = (txn.wrote and self._trim_due()) or (
                        txn.wrote_events and self._events_trim_due()
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            if due:
                # After the COMMIT, in a transaction of its own: a trim rewrites
                # rows, so it needs room a commit alone may not (a full disk, the
                # file size limit); it must never fail or undo the commit.
                self._trim_after_commit()
            return result

    def _row_origin(self) -> str:
        """The ``origin`` of the history rows this transaction writes (caller holds
        ``_lock``): the store's, and the subscriber writing (``writing_as``), if any,
        which the watcher then does not tell (see ``_deliver_remote``).

        Other processes compare the whole text with their own origin: to them it
        is another store's row, whichever suffix it carries.
        """
        mark = self._marks.of(current_writer(self._callbacks))
        return f"{self._origin}.{mark}" if mark else self._origin

    def _trim_due(self) -> bool:
        """Whether the history is over ``history_limit + trim_slack`` (in the write
        transaction, on every commit). Ids are never reused (AUTOINCREMENT) and rows
        go only from the head, so ``max - min + 1`` counts them in O(log n)."""
        limit = self.history_limit
        if limit is None:
            return False
        # Two scalar subqueries: each is one B-tree descent. `SELECT min(id), max(id)`
        # in one query defeats SQLite's min/max optimisation and scans every row.
        low, high = self._conn.execute(_HEAD_AND_TAIL).fetchone()
        if high is None or high - low + 1 <= limit + trim_slack(limit):
            return False
        # After a failed attempt: retry once trim_slack more rows came.
        return bool(high >= self._next_trim_at)

    def _trim_after_commit(self) -> None:
        """``_trim`` in its own write transaction; a failure (disk full, a busy lock,
        I/O error) rolls the trim back whole, logs a WARNING and leaves the commit
        as it is: a later commit tries again. Caller holds ``_lock``."""
        import sqlite3

        try:
            try:
                self._begin()  # inside the try: see transaction()'s race
                self._trim()
                self._trim_migrations()
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            limit = self.history_limit or 0
            with suppress(sqlite3.Error):
                top = self._conn.execute("SELECT max(id) FROM flag_history").fetchone()[0]
                self._next_trim_at = (top or 0) + trim_slack(limit)
                top = self._conn.execute("SELECT max(id) FROM migration_history").fetchone()[0]
                self._next_event_trim_at = (top or 0) + trim_slack(limit)
            log.warning(
                "flag store %s: history not trimmed (the commit went through): %s",
                self._shown, _explain(exc),
            )  # fmt: skip

    def _trim(self) -> None:
        """Drop the oldest history rows down to ``history_limit`` once over it by
        ``trim_slack`` (in a write transaction of its own, see ``transaction``).

        Each flag that loses rows gets its first kept row rewritten whole
        (``_history.rebase``): the history still starts with whole records, as
        every version reads it. The rows go first, so the rewrite reuses their pages.
        Race: another process trimming too. Both trim inside a write transaction
        (``BEGIN IMMEDIATE``): the second one reads the first one's result (and
        finds nothing to do). A watcher that had not read the dropped rows yet
        notices (``_poll``).
        """
        limit = self.history_limit
        if limit is None or not self._trim_due():
            return
        high = self._conn.execute("SELECT max(id) FROM flag_history").fetchone()[0]
        found = self._conn.execute(
            "SELECT id FROM flag_history ORDER BY id DESC LIMIT 1 OFFSET ?", (limit - 1,)
        ).fetchone()
        if found is None:  # fewer rows than ids (deleted behind the store's back)
            self._next_trim_at = high + trim_slack(limit)
            return
        cut = found[0]
        rows = self._conn.execute(
            "SELECT flag, record FROM flag_history WHERE id < ? ORDER BY id", (cut,)
        ).fetchall()
        try:
            first_kept = self._first_kept({flag for flag, _ in rows}, cut)
            fixes = rebase(
                (_loads(text) for _, text in rows),
                {flag: record for flag, (_, record) in first_kept.items()},
                exact=False,
            )
        except FlagError as exc:  # rows this store cannot replay: keep them all
            self._next_trim_at = high + trim_slack(limit)
            log.warning("flag store %s: history not trimmed: %s", self._shown, exc)
            return
        self._conn.execute("DELETE FROM flag_history WHERE id < ?", (cut,))
        self._conn.executemany(
            "UPDATE flag_history SET record = ? WHERE id = ?",
            [(json.dumps(fixed), first_kept[flag][0]) for flag, fixed in fixes.items()],
        )
        self._trims += 1
        log_trim(self, len(rows), limit, self._trims)

    def _events_trim_due(self) -> bool:
        """``_trim_due`` of the migration history (its own count, the same rule)."""
        low, high = self._conn.execute(_EVENTS_HEAD_AND_TAIL).fetchone()
        if high is None or events_to_keep(high - low + 1, self.history_limit) is None:
            return False
        return bool(high >= self._next_event_trim_at)

    def _trim_migrations(self) -> None:
        """Drop the oldest migration events down to ``history_limit`` once over it by
        ``trim_slack`` (in ``_trim_after_commit``'s transaction). Events are whole
        records, so nothing is rewritten; stages live in ``migration_stage``.
        Race: another process trimming too: both hold the write lock in turn, and
        the second counts again and finds nothing due."""
        limit = self.history_limit
        if limit is None or not self._events_trim_due():
            return
        found = self._conn.execute(
            "SELECT id FROM migration_history ORDER BY id DESC LIMIT 1 OFFSET ?", (limit - 1,)
        ).fetchone()
        if found is None:  # fewer rows than ids (deleted behind the store's back)
            high = self._conn.execute("SELECT max(id) FROM migration_history").fetchone()[0]
            self._next_event_trim_at = (high or 0) + trim_slack(limit)
            return
        dropped = self._conn.execute(
            "DELETE FROM migration_history WHERE id < ?", (found[0],)
        ).rowcount
        self._next_event_trim_at = 0
        self._event_trims += 1
        log_trim(self, dropped, limit, self._event_trims, "migration history")

    def _first_kept(self, flags: set[str], cut: int) -> dict[str, tuple[int, dict[str, Any]]]:
        """By flag: (id, record) of its first row from id ``cut`` on, if any."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for flag in flags:
            row = self._conn.execute(
                "SELECT id, record FROM flag_history WHERE flag = ? AND id >= ? "
                "ORDER BY id LIMIT 1",
                (flag, cut),
            ).fetchone()
            if row is not None:
                out[flag] = (row[0], _loads(row[1]))
        return out

    def history(self, flag: str | None = None) -> list[FlagChange]:
        with self._read_lock, self._errors("reading history"):
            self._check_open()
            if flag is not None:
                check_key(flag, "flag name")
            if flag is None:
                rows = self._reader.execute(
                    "SELECT record FROM flag_history ORDER BY id"
                ).fetchall()
            else:  # the (flag, id) index: only this flag's rows
                rows = self._reader.execute(
                    "SELECT record FROM flag_history WHERE flag = ? ORDER BY id", (flag,)
                ).fetchall()
        # Records are deltas: replayed in order from the flag's first (see _history).
        replay = Replay()
        return [c for c in (replay.feed_json(r[0]) for r in rows) if c is not None]

    def migration_stage(self, plan: str) -> int:
        with self._read_lock, self._errors("reading a migration stage"):
            self._check_open()
            check_key(plan, "plan name")
            return _Txn(self._reader, self._origin).migration_stage(plan)

    def migration_history(self, plan: str) -> list[MigrationEvent]:
        with self._read_lock, self._errors("reading migration history"):
            self._check_open()
            check_key(plan, "plan name")
            rows = self._reader.execute(
                "SELECT record FROM migration_history WHERE plan = ? ORDER BY id", (plan,)
            ).fetchall()
        return [MigrationEvent.from_json(r[0]) for r in rows]

    def record_catalogue(self, flags: Iterable[FlagInfo]) -> None:
        self._check_open()
        entries = {n: i.to_json() for n, i in catalogue_entries(flags).items()}
        self._record("flag_catalogue", "info", entries, "recording the flag catalogue")

    def catalogue(self) -> dict[str, FlagInfo]:
        rows = self._read_table("flag_catalogue", "info", "reading the flag catalogue")
        return {name: FlagInfo.from_json(text) for name, text in rows.items()}

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        self._check_open()
        check_key(name, "plan name")
        text = plan_to_json(plan)  # refuses what is not a plan
        wanted = set(plan_flag_entries(name, plan))

        def add_flags(conn: sqlite3.Connection) -> None:
            # In the write transaction, before the plan record is replaced: this plan's
            # flags and those of the plan recorded now (an older library's record adds
            # none), add-only. The table is created here on a file from before it.
            conn.execute(_CREATE_PLAN_FLAG)
            rows = set(wanted)
            row = conn.execute("SELECT plan FROM migration_plan WHERE name = ?", (name,)).fetchone()
            try:
                rows.update(plan_flag_entries(name, plan_from_json(row[0])) if row else ())
            except Exception as exc:  # a corrupt record: this plan's flags all the same
                log.warning("migration plan %r: recorded plan unreadable: %s", name, exc)
            conn.executemany(_ADD_PLAN_FLAG, [(name, f, n) for f, n in sorted(rows)])

        try:
            known = {(f, n) for f, n in self._plan_flag_rows(name)}
        except FlagError:  # unreadable: write them (add-only) all the same
            known = set()
        self._record(
            "migration_plan",
            "plan",
            {name: text},
            "recording a plan",
            also=add_flags,
            force=not wanted <= known,
        )

    def plans(self) -> dict[str, MigrationPlan]:
        rows = self._read_table("migration_plan", "plan", "reading migration plans")
        return {name: plan_from_json(text) for name, text in rows.items()}

    def plan_flags(self, name: str) -> dict[str, int]:
        check_key(name, "plan name")
        found: dict[str, int] = {}
        for flag, stage in self._plan_flag_rows(name):
            found[flag] = max(stage, found.get(flag, 0))
        return found

    def _plan_flag_rows(self, name: str) -> list[tuple[str, int]]:
        """(flag, stage) rows of plan ``name``; none on a file from before the table
        (opened read-only, it is never created); a malformed row is skipped (WARNING)."""
        import sqlite3

        with self._read_lock, self._errors("reading migration plan flags"):
            self._check_open()
            try:
                rows = self._reader.execute(
                    "SELECT flag, stage FROM migration_plan_flag WHERE plan = ?", (name,)
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                rows = []
        good = [(f, n) for f, n in rows if isinstance(f, str) and type(n) is int]
        if len(good) < len(rows):
            log.warning(
                "migration plan %r: %d malformed plan flag rows skipped",
                name,
                len(rows) - len(good),
            )
        return good

    def _read_table(self, table: str, column: str, doing: str) -> dict[str, str]:
        with self._read_lock, self._errors(doing):
            self._check_open()
            rows = self._reader.execute(f"SELECT name, {column} FROM {table}").fetchall()
        return dict(rows)

    def _record(
        self,
        table: str,
        column: str,
        entries: dict[str, str],
        doing: str,
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
        force: bool = False,
    ) -> None:
        """Upsert ``entries`` into ``table``, after ``also(connection)`` in the same
        transaction; no write at all, unless ``force``, when every entry is there
        already (every process that starts records its declarations: most find them
        recorded)."""
        if not force and (
            not entries or self._read_table(table, column, doing).items() >= entries.items()
        ):
            return
        with self._lock, self._errors(doing, write=True):
            self._check_open()
            self._check_file()
            try:
                self._begin_writing()  # inside the try: see transaction()'s race
                if also is not None:
                    also(self._conn)
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {table} (name, {column}) VALUES (?, ?)",
                    list(entries.items()),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        try:
            check_listener(callback)
        except TypeError:  # Closed first, before the argument is judged
            self._check_open()
            raise
        with self._lock:
            self._check_open()
            first = self._watcher is None
            if first:
                with self._read_lock, self._errors("subscribing"):
                    top, states = _snapshot(self._reader)
                    loaded, loaded_states = self._loaded_upto, self._loaded_states
                # Race: a subscriber loads, then subscribes; another process may
                # commit in between. Start after the last load_states() snapshot
                # (when there was one), so that commit is reported, not skipped;
                # rows already in the load may be reported again (at least once).
                # The watcher replays deltas from the states of the snapshot it starts at.
                if loaded is not None and loaded < top:
                    top, states = loaded, loaded_states
                self._last_id, self._feed = top, Replay(states)
            # Registered before the watcher can deliver anything meant for it.
            self._callbacks = (*self._callbacks, callback)
            self._marks.add(callback)
            if first:
                watcher = threading.Thread(
                    target=self._watch, name=f"foundation-sqlite-flags:{self.path}", daemon=True
                )
                try:
                    watcher.start()
                except RuntimeError as exc:  # the thread limit: subscribe nothing, retry later
                    self._callbacks = self._callbacks[:-1]  # the one added above
                    raise BackendUnavailable(
                        f"flag store {self._shown} cannot start its watcher thread: {exc}"
                    ) from exc
                self._watcher = watcher
            else:
                # The running watcher may already be past this subscriber's load:
                # it tells the newcomer "reload" once (an empty batch) to close that gap.
                with self._read_lock:
                    self._catch_up = (*self._catch_up, callback)

        remove = unsubscriber(self, "_callbacks", self._lock, callback)

        def unsubscribe() -> None:
            remove()
            with self._lock:  # after: a mark goes with the callback's last subscription
                self._marks.remove(callback, self._callbacks)

        return unsubscribe

    def close(self) -> None:
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before the end left the
        # watcher running or the connections (the file's fds) open for good.
        # So only a close() run to its end (_released) makes the next one
        # return; the others do every step again (each is idempotent: setting
        # the event, joining an ended thread, closing a closed connection).
        with self._lock:
            if self._released:
                return
            self._closed = True
            self._stop.set()
            watcher = self._watcher
        # close() from a subscriber's callback runs on the watcher: it cannot
        # join itself (RuntimeError, and the store was left half-closed). It
        # releases the connections here all the same: the watcher uses only its
        # own (closed by _watch on its way out), and it exits once the callback
        # returns (_stop is set; _deliver_remote calls no other subscriber).
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()
        with self._lock, self._read_lock:
            self._conn.close()
            self._reader.close()
        self._released = True

    def __repr__(self) -> str:
        return f"SQLiteFlagStore({self._shown})"

    # ---------------------------------------------------------------- watcher

    def _watch(self) -> None:
        """Poll ``data_version``; hand other connections' new history rows to callbacks."""
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._interval()):
                try:
                    # Opened in the loop: a failure to open is retried too. Never creating
                    # the file (mode=rw): a file deleted before this first open was made
                    # anew empty here, without the creation lock (see _creating).
                    if conn is None and self._moved_for_good() is None:
                        conn = self._connect(timeout=self.busy_timeout, existing=True)
                    self._poll(conn)
                except BaseException as exc:  # the watcher outlives anything: report, go on
                    report_callback_error(exc, self, "SQLite flag store watcher")
                    if isinstance(exc, Exception):  # our own defect: pause, never spin hot
                        self._stop.wait(0.1)
        finally:
            if conn is not None:
                conn.close()

    def _interval(self) -> float:
        """Fast while changes flow (a kill switch follows a burst), ``poll_interval`` when idle."""
        if time.monotonic() < self._hot_until:
            return min(FAST_POLL, self.poll_interval)
        return self.poll_interval

    def _poll(self, conn: sqlite3.Connection | None) -> None:
        """One step of the watcher: read rows committed since the last step, deliver others'
        (``conn`` None: the file moved before the watcher opened it)."""
        import sqlite3

        if self._moved_for_good() is not None or conn is None:
            # The one at the path is not this store's, and the old file is drained
            # once: follow neither after (a reload would fail or read the old file).
            if not self._stale_reported:
                self._drain_old_file()
            self._report_stale()
            return
        if self._catch_up:
            self._deliver_catch_up()
        try:
            current = conn.execute("PRAGMA data_version").fetchone()[0]
            if current == self._version:
                return
            self._version = current
            # Only the rows after the last one seen, in one autocommit statement:
            # a WAL read transaction as short as the query, never waiting on a
            # writer. Writers are serialised and ids are assigned inside the write
            # transaction, so ids commit in increasing order: no row with a
            # smaller id can appear after we have read a larger one.
            rows = conn.execute(
                "SELECT id, origin, record FROM flag_history WHERE id > ? ORDER BY id",
                (self._last_id,),
            ).fetchall()
            if self._watch_failing:
                self._watch_failing = False
                log.info("flag store %s: the watcher reads the file again", self._shown)
        except sqlite3.Error as exc:
            self._version = None  # transient (for example a file being replaced): retry
            if not self._watch_failing:  # once per episode, not once per poll
                self._watch_failing = True
                log.warning(
                    "flag store %s: the watcher cannot read the file (%s); other processes' "
                    "changes are not followed until it can (retrying)",
                    self._shown, _explain(exc),
                )  # fmt: skip
            return
        if not rows:
            return
        if rows[0][0] > self._last_id + 1:
            # Race: a writer trimmed rows this watcher had not read yet (more than
            # history_limit rows since its last step). Ids are never reused and only
            # a trim deletes rows, so a gap is such a trim: the replayed states miss
            # those rows. Start again from a snapshot; subscribers reload.
            self._reset_feed(conn)
            self._hot_until = time.monotonic() + HOT_FOR
            self._deliver([])
            return
        self._last_id = rows[-1][0]
        self._deliver_remote(rows, conn)

    def _drain_old_file(self) -> None:
        """Deliver the old file's commits the watcher has not read yet (once, as the
        store goes stale), read with the reader: it holds the old file (checked at
        open), where the watcher's connection may hold the new one.

        Race: another process commits (a kill switch) and the file is deleted or
        replaced within one poll: the watcher noticed the move before it read that
        commit, so subscribers never heard it and ``FeatureFlags`` served the state
        before it for good, though the old file it still reads holds it. A commit
        to the old file after this drain (a process yet to notice, see
        ``_check_file``'s race) is not followed."""
        import sqlite3

        try:
            with self._read_lock:
                if self._closed:
                    return
                rows = self._reader.execute(
                    "SELECT id, origin, record FROM flag_history WHERE id > ? ORDER BY id",
                    (self._last_id,),
                ).fetchall()
        except sqlite3.Error:  # the old file unreadable too: nothing more to tell
            return
        if rows and rows[0][0] > self._last_id + 1:  # trimmed past (see _poll): reload
            self._deliver([])
        elif rows:
            self._last_id = rows[-1][0]
            self._deliver_remote(rows, None)

    def _report_stale(self) -> None:
        """Emit ``foundation.flags.stale`` once (the watcher's: no lock held, as listeners
        may call the store)."""
        if not self._stale_reported:
            self._stale_reported = True
            telemetry.emit(
                "foundation.flags.stale", {"path": self.path, "error": self.stale_reason}
            )

    def _deliver_catch_up(self) -> None:
        """Call each subscriber waiting for its first step (``_catch_up``) with no changes."""
        with self._read_lock:
            fresh, self._catch_up = self._catch_up, ()
        for callback in fresh:
            if callback in self._callbacks:  # not unsubscribed meanwhile
                self._call(callback, [])

    def _deliver_remote(
        self, rows: list[tuple[int, str, str]], conn: sqlite3.Connection | None
    ) -> None:
        """Deliver the changes of ``rows`` (id, origin, record) to the subscribers:
        every change to every subscriber but the one that wrote it (``_row_origin``).

        Several FeatureFlags may share this store object: each must hear the
        others' writes (a kill switch among them), and only the writer knows its
        own already. Every row is replayed: each is the base of the next delta.
        """
        own = self._origin + "."
        batch: list[tuple[str, FlagChange]] = []  # (writing subscriber or "", change)
        try:
            for _id, origin, text in rows:
                change = self._feed.feed_json(text)
                if change is not None:
                    writer = origin[len(own) :] if origin.startswith(own) else ""
                    batch.append((writer, change))
        except FlagError:
            # Unreadable records: the replayed states are no longer known. Start
            # again from a snapshot, and tell subscribers to reload (which covers
            # every row up to that snapshot, so none is skipped unreported).
            # No conn: the last drain of a stale store (the feed is not used again).
            if conn is not None:
                self._reset_feed(conn)
            self._hot_until = time.monotonic() + HOT_FOR
            self._deliver([])
            return
        if not batch:
            return
        self._hot_until = time.monotonic() + HOT_FOR
        # Races: the watcher is the one thread delivering, rows in id (= commit)
        # order, so each subscriber hears commits in commit order. The subscribers
        # are read now: one that subscribed after a commit hears it too (it was
        # told to reload anyway); one unsubscribed is not called. A writer is
        # named by its mark, never reused (``SubscriberMarks``): only it is skipped.
        for callback in self._callbacks:
            if self._closed:  # close() from a callback: the others are not called
                return
            me = self._marks.of(callback)
            changes = [change for writer, change in batch if not writer or writer != me]
            if changes:  # never [] here: that means "reload"
                self._call(callback, changes)

    def _reset_feed(self, conn: sqlite3.Connection) -> None:
        import sqlite3

        try:
            top, states = _snapshot(conn)
        except (sqlite3.Error, FlagError):
            states, top = {}, self._last_id  # unknown: later deltas may fail and land here again
        self._last_id, self._feed = max(top, self._last_id), Replay(states)

    def _deliver(self, changes: list[FlagChange]) -> None:
        for callback in self._callbacks:
            if self._closed:  # close() from a callback: the others are not called
                return
            self._call(callback, changes)

    @staticmethod
    def _call(callback: Callable[[list[FlagChange]], None], changes: list[FlagChange]) -> None:
        try:
            callback(changes)
        except BaseException as exc:  # SystemExit too: it would end the watcher thread
            report_callback_error(exc, callback)


# The stores of this process, for the gauge foundation_flag_store_stale read at
# collection (foundation.metrics): no I/O, no store lock. Unlocked in a forked
# child, as RedisFlagStore's (a scrape in a parent thread at the fork).
_live_lock = threading.Lock()
_fork.unlock_after_fork(_live_lock)
_live: weakref.WeakSet[SQLiteFlagStore] = weakref.WeakSet()


def _opened(store: SQLiteFlagStore) -> None:
    """A store just opened: closed in a forked child (``_inherited_by_fork``), and
    listed for the stale gauge (``stale_files``; only once opened)."""
    _fork.track(store)
    with _live_lock:
        _live.add(store)


def stale_files() -> dict[str, bool]:
    """Per file (its absolute path), whether an open ``SQLiteFlagStore`` of this
    process on it is ``stale`` (its file deleted or replaced while in use: writes
    refused until reopened). A closed store (a forked child's too) is absent."""
    with _live_lock:  # a store added meanwhile must not break the iteration
        stores = list(_live)
    found: dict[str, bool] = {}
    for store in stores:
        if not store._closed:  # Race: one closing meanwhile reports its last value once more
            found[store._abs_path] = found.get(store._abs_path, False) or store.stale
    return found


def _snapshot(conn: sqlite3.Connection) -> tuple[int, dict[str, FlagState]]:
    """(last history id, every runtime state) from one read transaction on ``conn``:
    a WAL snapshot, never half a write, and no wait for a writer."""
    import sqlite3

    try:
        # Inside the try (see transaction()'s race): else a Ctrl-C as BEGIN
        # returned left the reader in a read transaction for good (each later
        # BEGIN failed, and its snapshot held the WAL back). ROLLBACK with no
        # transaction is an sqlite3.Error: suppressed.
        conn.execute("BEGIN")
        rows = conn.execute("SELECT name, state FROM flag_state").fetchall()
        top = conn.execute("SELECT max(id) FROM flag_history").fetchone()[0]
    finally:
        with suppress(sqlite3.Error):  # a read transaction: nothing to keep
            conn.execute("ROLLBACK")
    return top or 0, {name: FlagState.from_json(text) for name, text in rows}
