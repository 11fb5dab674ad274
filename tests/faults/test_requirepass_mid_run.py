"""A password set on the server while the clients run (``requirepass``), outside pytest.

The clients' URL gives no password. Their cut connections reconnect and are
refused (``NOAUTH``): the nodes go ``degraded``, the store ``stale``, the
``foundation`` command exits 69. Each says the server requires a password the
URL does not give; before, they said "the server refused the credentials
(check the URL's user and password)" of credentials the URL never gave. Once
the password is taken off again, everything recovers by itself; no thread dies.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_REQUIREPASS = (
    REGISTRY_PAIR
    + """
import os, subprocess, tempfile
from foundation import FeatureFlags, Flag, RedisFlagStore, errors

NEEDS = "the server requires a password and the URL gives none"
try:
    a, b = open_nodes("m", lease_ttl=3.0, op_timeout=1.0)
    store = RedisFlagStore(server.url, namespace="f", timeout=1.0,
                           cache_path=os.path.join(tempfile.mkdtemp(), "copy.db"))
    opened.append(store)
    flags = FeatureFlags([Flag("beta")], store=store)
    a.register("a1", spawn_thread(stop.wait), {})
    threads = library_threads()
    raw.config_set("requirepass", "s3cret")
    admin = redis_py.Redis.from_url(server.url.replace("//", "//:s3cret@"), decode_responses=True)
    admin.client_kill_filter(_type="normal", skipme=True)
    wait_for(lambda: NEEDS in (a.status().last_error or ""), "node a's error")
    wait_for(lambda: store.status().stale and NEEDS in (store.status().last_error or ""),
             "the store's error")
    try:
        b.register("b1", spawn_thread(stop.wait), {})
        raise AssertionError("registered on a server that refuses the login")
    except errors.BackendUnavailable as exc:
        print("REGISTER", exc)
        assert NEEDS in str(exc), exc
    try:
        RedisRegistry(server.url, namespace="m", node="c", op_timeout=1.0)
        raise AssertionError("a node started on a server that refuses the login")
    except errors.BackendUnavailable as exc:
        print("START", exc)
        assert NEEDS in str(exc), exc
    listed = subprocess.run(
        [sys.executable, "-m", "foundation.cli", "agents", "list",
         "--redis", server.url, "--namespace", "m"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    print("CLI", listed.returncode, listed.stderr.strip())
    assert listed.returncode == 69 and NEEDS in listed.stderr, listed
    assert "Traceback" not in listed.stderr, listed.stderr
    admin.config_set("requirepass", "")
    wait_for(lambda: a.status().state == "connected" and b.status().state == "connected",
             "the nodes to recover")
    wait_for(lambda: not store.status().stale, "the store to recover")
    b.register("b1", spawn_thread(stop.wait), {})
    wait_for(lambda: a.lookup("b1") is not None, "node a to see b1")
    flags.enable("beta", by="ops")
    assert library_threads() == threads, (threads, library_threads())
    flags.close()
    print("OK")
"""
    + CLOSE_ALL
)


def test_a_password_required_mid_run_says_the_url_gives_none_and_recovers() -> None:
    result = run_scenario(_REQUIREPASS, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
    assert "refused the credentials" not in result.stdout, result.stdout
