"""A ``SQLiteFlagStore`` whose file is deleted or replaced while in use says it is stale.

A tmp reaper deletes the file, or a restore renames a backup over it; another
process opens the path again and changes flags there. This process holds the
old file and never sees those changes, until the store is reopened. The store
logged an ERROR saying so, yet the OpenFeature provider stayed ``READY``, the
admin status said ``degraded: false``, and every change made elsewhere logged
one more ERROR with a traceback (a subscriber's reload failing on the old
file). Now: ``store.stale``, one ``foundation.flags.stale`` event,
``PROVIDER_STALE``, a degraded admin status, one ERROR in all and no
subscriber called. Plain interpreter, default hooks; real files, a real
second process or a second store object.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_COMMON = """
import os, queue, subprocess, sys, tempfile
from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore

d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
stale_events = []
telemetry.attach("foundation.flags.stale", lambda name, data: stale_events.append(dict(data)))

def replace_file():
    if FAULT == "deleted":  # a tmp reaper (the -wal and -shm too); created anew next
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
    elif FAULT == "file-deleted":  # the file alone: its -wal and -shm stay
        os.remove(path)
    else:  # a backup restored in place: renamed over the file
        backup = os.path.join(tempfile.mkdtemp(), "backup.db")
        SQLiteFlagStore(backup).close()
        os.rename(backup, path)
"""

_WRITER = """
WRITER = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as s, FeatureFlags([Flag("beta")], store=s) as f:
    for i in range(20):
        f.set("beta", i % 2 == 1, by="ops")
    print(f.enabled("beta"))
'''

def other_process_writes():
    proc = subprocess.run([sys.executable, "-c", WRITER, path], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
"""

_PROVIDER_AND_ADMIN = """
import http.client, json
from openfeature import api
from openfeature.event import ProviderEvent
from openfeature.provider import ProviderStatus
from foundation.admin import AdminServer
from foundation.openfeature import FoundationProvider

store = SQLiteFlagStore(path)
flags = FeatureFlags([Flag("beta")], store=store)
api.set_provider_and_wait(FoundationProvider(flags))
client = api.get_client()
events = queue.Queue()
for kind in (ProviderEvent.PROVIDER_STALE, ProviderEvent.PROVIDER_ERROR):
    client.add_handler(kind, lambda details, kind=kind: events.put((kind, details)))
server = AdminServer(flags=flags, bind="127.0.0.1:0")
server.start()
host, port = server.url.split("//")[1].rstrip("/").split(":")

def status():
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/status")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body

def degraded_status(deadline=20.0):
    # The admin status once degraded, else None (polled with a deadline).
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        body = status()
        if body["degraded"]:
            return body
        time.sleep(0.02)  # sleep-ok: polling with a deadline
    return None

assert status()["degraded"] is False and status()["flag_store"]["state"] == "local"
assert events.empty()

replace_file()
assert other_process_writes() == "True"  # the fleet switched beta on
# Stale: the old file's answer, as documented (reopen the store to see the new one).
assert client.get_boolean_value("beta", True) is True  # the caller's default: switch off
assert not flags.enabled("beta")
try:
    kind, details = events.get(timeout=20)
except queue.Empty:
    print("PROVIDER still", client.get_provider_status())
else:
    assert kind == ProviderEvent.PROVIDER_STALE, (kind, details)
    assert "deleted or replaced" in (details.message or ""), details
    assert client.get_provider_status() == ProviderStatus.STALE
    assert store.stale and store.stale_since is not None
    assert "deleted or replaced" in store.stale_reason
    assert [e["path"] for e in stale_events] == [path], stale_events
    print("PROVIDER STALE")
body = degraded_status()
if body is None:
    print("ADMIN not degraded:", status())
else:
    block = body["flag_store"]
    assert block["state"] == "stale" and block["stale"] is True, block
    assert block["since"] is not None and "deleted or replaced" in block["last_error"], block
    print("ADMIN DEGRADED")
assert other_process_writes() == "True"  # more changes elsewhere: nothing more here
assert events.empty() and len(stale_events) <= 1, stale_events
api.shutdown()
server.close()
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_replaced_file_makes_the_provider_stale_and_the_admin_status_degraded(
    fault: str,
) -> None:
    result = run_scenario(f"FAULT = {fault!r}\n" + _COMMON + _WRITER + _PROVIDER_AND_ADMIN)
    assert "PROVIDER STALE" in result.stdout.splitlines(), result.stdout
    assert "ADMIN DEGRADED" in result.stdout.splitlines(), result.stdout
    assert result.stderr.count("LOG ERROR") == 1, result.stderr
    assert "LOG ERROR foundation.flags" in result.stderr, result.stderr


_NO_SPAM = """
class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

errors_handler = Errors()
logging.getLogger().addHandler(errors_handler)
errors_logged = lambda: " ".join(errors_handler.messages)
seen = []
if ORDER == "watcher-first":  # the watcher follows the file when it is replaced
    store = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("beta")], store=store)
    store.subscribe(seen.append)
    with SQLiteFlagStore(path) as other, FeatureFlags([Flag("beta")], store=other) as f:
        f.set("beta", True, by="setup")
    wait_for(lambda: flags.enabled("beta"), "the watcher to follow the file")
    seen.clear()
    replace_file()
else:  # replaced before the watcher's first look (it opens the path then)
    store = SQLiteFlagStore(path, poll_interval=1.0)
    flags = FeatureFlags([Flag("beta")], store=store)
    store.subscribe(seen.append)
    replace_file()
# A second store object in this process opens the path anew and changes beta 20 times.
other = SQLiteFlagStore(path)
other_flags = FeatureFlags([Flag("beta")], store=other)
wait_for(lambda: "was deleted or replaced" in errors_logged(), "the store's ERROR")
for i in range(20):
    other_flags.set("beta", i % 2 == 0, by="ops")
time.sleep(1.5)  # sleep-ok: proving that nothing more arrives needs a wait
print("SEEN", len(seen))  # subscriber calls: reloads that fail, or the other file's rows
other_flags.close()
other.close()
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("order", ["watcher-first", "replaced-first"])
@pytest.mark.parametrize("fault", ["deleted", "file-deleted", "replaced"])
def test_changes_made_elsewhere_log_one_error_and_call_no_subscriber(
    fault: str, order: str
) -> None:
    setup = f"FAULT = {fault!r}\nORDER = {order!r}\n"
    result = run_scenario(setup + _COMMON + _NO_SPAM)
    worse = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("LOG WARNING", "LOG ERROR", "LOG CRITICAL"))
    ]
    # The file alone deleted: the second store removes its -wal and -shm left at
    # the path before it creates the file anew (one WARNING naming them).
    leftovers = [line for line in worse if "left over from a deleted database" in line]
    assert len(leftovers) == (fault == "file-deleted"), result.stderr
    worse = [line for line in worse if line not in leftovers]
    assert len(worse) == 1, result.stderr  # the store's own ERROR, nothing per change
    assert worse[0].startswith("LOG ERROR foundation.flags"), result.stderr
    assert "was deleted or replaced while in use" in worse[0], result.stderr
    assert "exception ignored" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "SEEN 0" in result.stdout.splitlines(), result.stdout  # no subscriber called
