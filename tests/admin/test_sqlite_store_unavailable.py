"""Admin writes on a ``SQLiteFlagStore`` that cannot take them answer 503, not 500.

The store's file deleted, renamed over, or its ``-wal`` deleted while in use
makes the store stale (a documented state: ``/api/status`` says so), and every
write is refused until it is reopened. Each admin write (a flag write, the
kill switch, the migration's emergency rollback and rollback) answered
``500 {"error": "FlagError"}`` and logged an ERROR with a traceback per
request, as for a defect of the server's own. Now the store raises
``FlagStoreUnavailable`` (a ``FlagError`` and a ``BackendUnavailable``): 503
with the store's message, no traceback, nothing changed. A file the store
cannot write (a full disk, here the file size limit) answers the same, and the
``foundation`` command exits 69 for it, as for any unavailable backend.

Plain interpreter, default hooks (``run_scenario``); real files, a real server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults._subprocess import Result, _log_line, run_scenario

_SERVE = """
import http.client, json, os, resource, signal, tempfile
from foundation import errors
from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage

d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
store = SQLiteFlagStore(path)
flags = FeatureFlags([Flag("beta"), Flag("kill_me")], store=store)
migration = Migration(flags, MigrationPlan([Stage(1, "one", ["kill_me"])], name="p"))
migration.advance(by="ops")
flags.enable("beta", by="ops")  # the -wal holds commits

if FAULT == "deleted":
    os.remove(path)
elif FAULT == "wal":
    os.remove(path + "-wal")
elif FAULT == "replaced":  # a backup restored in place: renamed over the file
    backup = os.path.join(tempfile.mkdtemp(), "backup.db")
    SQLiteFlagStore(backup).close()
    os.rename(backup, path)
else:  # the file size limit: writes fail as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 20_000, resource.RLIM_INFINITY))
    for i in range(300):  # until the file cannot grow
        try:
            flags.allow("beta", "user-" + "x" * 500 + str(i), by="ana")
        except errors.FlagError:
            break
    else:
        raise AssertionError("the file size limit never bit")

def snapshot():
    return (
        {n: flags.state(n) for n in ("beta", "kill_me")},
        len(store.history()),
        len(migration.history()),
        migration.status().stage,
    )

before = snapshot()
server = AdminServer(flags=flags, migration=migration, token="ana:s3cret", bind="127.0.0.1:0")
server.start()
host, port = server.url.split("//")[1].rstrip("/").split(":")

def call(method, route, body=None):
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, route, body=None if body is None else json.dumps(body).encode(),
                 headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
    answer = conn.getresponse()
    data = json.loads(answer.read())
    conn.close()
    return answer.status, data

big = "user-" + "y" * 2000
for route, body in (
    ("/api/flags/beta/allow", {"actor": big}),
    ("/api/flags/kill_me/disable", {"confirm": "kill_me"}),
    ("/api/migration/emergency", {"reason": "incident " + "z" * 2000, "confirm": 1}),
    ("/api/migration/rollback", {"stage": 0, "reason": "r" * 2000}),
):
    status, data = call("POST", route, body)
    print("ANSWER", json.dumps([route, status, data]), flush=True)
assert snapshot() == before, (snapshot(), before)
status, data = call("GET", "/api/status")
print("STATUS", json.dumps(data["flag_store"]), flush=True)
server.close()
flags.close()
store.close()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
print("OK")
"""


def _answers(result: Result) -> list[tuple[str, int, dict[str, str]]]:
    return [tuple(json.loads(line.split(" ", 1)[1])) for line in result.lines("ANSWER ")]  # type: ignore[misc]


def _records(stderr: str) -> list[tuple[str, str]]:
    """(logger, level) of every log record the scenario wrote."""
    found = []
    for line in stderr.splitlines():
        record = _log_line(line)
        if record and record[0]:
            found.append(record)
    return found


@pytest.mark.parametrize("fault", ["deleted", "replaced", "wal", "disk_full"])
def test_admin_writes_on_a_store_that_cannot_take_them_answer_503(fault: str) -> None:
    result = run_scenario(f"FAULT = {fault!r}\n" + _SERVE)
    answers = _answers(result)
    assert len(answers) == 4, result.stdout
    for route, status, body in answers:
        assert status == 503, (route, status, body)
        assert body["error"] == "FlagStoreUnavailable", (route, body)
        if fault == "disk_full":
            assert "is the disk full" in body["message"], (route, body)
        else:
            assert "deleted or replaced while in use" in body["message"], (route, body)
            assert "nothing was written" in body["message"], (route, body)
    # A documented backend state, not a defect: no ERROR (nor traceback) per request.
    records = _records(result.stderr)
    assert ("foundation.admin", "ERROR") not in records, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "LOG| " not in result.stderr, result.stderr  # no record carried a traceback
    if fault == "disk_full":
        assert ("foundation.flags", "ERROR") not in records, result.stderr
    else:  # the store says it once, itself; the status says stale
        assert records.count(("foundation.flags", "ERROR")) == 1, result.stderr
        (line,) = result.lines("STATUS ")
        assert json.loads(line.split(" ", 1)[1])["state"] == "stale", line


_CLI = """
import os, resource, signal, subprocess, sys, tempfile
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore

d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
    flags.enable("beta", by="ops")
# Room for the file and its 32 kB -shm, not for the write's -wal frames.
size = max([32768] + [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)]) + 8192

def limited():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

proc = subprocess.run(
    [sys.executable, "-m", "foundation.cli", "--store", "sqlite:///" + path, "flags", "allow",
     "beta", "user-" + "x" * 100_000, "--by", "ana"],
    capture_output=True, text=True, timeout=60, preexec_fn=limited, check=False,
)
print("EXIT", proc.returncode, flush=True)
print("STDERR", proc.stderr.strip().replace(chr(10), " | "), flush=True)
with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
    print("ALLOWED", sorted(flags.state("beta").allow), flush=True)
print("OK")
"""


def test_the_command_exits_69_when_the_store_file_cannot_take_the_write(tmp_path: Path) -> None:
    result = run_scenario(_CLI)
    (exit_line,) = result.lines("EXIT ")
    (stderr_line,) = result.lines("STDERR ")
    assert exit_line == "EXIT 69", result.stdout
    assert stderr_line.startswith("STDERR FlagStoreUnavailable: "), result.stdout
    assert "is the disk full" in stderr_line, result.stdout
    assert " | " not in stderr_line, result.stdout  # one line, no traceback
    assert result.lines("ALLOWED ") == ["ALLOWED []"], result.stdout  # nothing written


def test_which_sqlite_errors_mean_the_file_cannot_be_used(tmp_path: Path) -> None:
    """The file's condition (here read-only) is ``FlagStoreUnavailable``; a file that
    is not SQLite at all (the wrong file) and an SQL error (a defect) stay ``FlagError``."""
    import sqlite3

    from foundation.errors import FlagError, FlagStoreUnavailable
    from foundation.flags._sqlite_store import _error_type

    db = tmp_path / "a.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    read_only = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 1000)
    other = sqlite3.connect(junk)
    try:
        with pytest.raises(sqlite3.OperationalError) as refused:
            read_only.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError) as typo:
            read_only.execute("SELEC 1")
        with pytest.raises(sqlite3.DatabaseError) as not_sqlite:
            other.execute("SELECT * FROM sqlite_master")
    finally:
        read_only.close()
        other.close()
    assert _error_type(refused.value) is FlagStoreUnavailable
    assert _error_type(typo.value) is FlagError
    assert _error_type(not_sqlite.value) is FlagError


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_a_path_sqlite_cannot_open_is_a_setting_to_fix_not_unavailable(
    tmp_path: Path, where: str
) -> None:
    # SQLITE_CANTOPEN at open: no retry can help (the review: it was
    # FlagStoreUnavailable, 503 / exit 69, "retry later").
    from foundation import errors
    from foundation.flags import SQLiteFlagStore

    path = tmp_path / "no-such-dir" / "flags.db" if where == "missing directory" else tmp_path
    with pytest.raises(errors.FlagError, match="cannot open flag store") as caught:
        SQLiteFlagStore(path)
    assert not isinstance(caught.value, errors.BackendUnavailable)
