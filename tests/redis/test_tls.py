"""Redis over TLS (``rediss://``) against real TLS redis-servers and real certificates.

The certificates are made with ``openssl`` (``tests/redis/_tls.py``); each
server listens for TLS only (``--port 0 --tls-port``). What is checked: the
Redis classes and the CLI work with a CA file and with mutual TLS; every
misconfiguration is a typed error naming what to fix (``InvalidConfig`` for
the client's own files and options, ``BackendUnavailable`` for what the
server presents or does), bounded by ``op_timeout``; background threads
survive a certificate rotation to a CA the clients do not trust and recover
once the right certificate is back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation import _redis_conn as rc
from foundation._demo._redis_server import ServerTls
from foundation.errors import BackendUnavailable, FoundationError, InvalidConfig
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.registry._redis import RedisRegistry
from tests.cli._support import ok_json, run_cli
from tests.faults._subprocess import run_scenario
from tests.redis._tls import KEY_PASSWORD, Pki, make_pki, tls_query
from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
OP_TIMEOUT = 20.0
"""Where an answer is due (a handshake, a verification failure): a bound against a
hang only (1 s once: a loaded machine's handshake timed out instead of failing)."""
FROZEN_OP_TIMEOUT = 1.0
"""Where no answer comes (a frozen server): the test waits it out."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server(tls: ServerTls) -> Iterator[RedisServer]:
    with RedisServer(tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[RedisServer]:
    """One-way TLS: the server presents a certificate signed by ``pki.ca``."""
    yield from _server(ServerTls(pki.server_cert, pki.server_key, pki.ca))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[RedisServer]:
    """Mutual TLS: ``--tls-auth-clients yes`` (clients need a certificate of ``pki.ca``)."""
    tls = ServerTls(pki.server_cert, pki.server_key, pki.ca, True, pki.client_cert, pki.client_key)
    yield from _server(tls)


def _ns() -> str:
    return f"tls-{uuid.uuid4().hex[:10]}"


def _url(server: RedisServer, query: str = "", host: str = "127.0.0.1") -> str:
    return f"rediss://{host}:{server.port}/0{query}"


# ------------------------------------------------------------------ it works


def _exercise(url: str) -> None:
    """A RedisRegistry and a RedisFlagStore round trip over ``url``."""
    import threading

    from foundation.liveness import spawn_thread

    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    try:
        with RedisRegistry(url, namespace=_ns(), op_timeout=OP_TIMEOUT) as reg:
            reg.register("job", agent, {"role": "io"})
            entry = reg.lookup("job")
            assert entry is not None
            assert entry.metadata == {"role": "io"}
            status = reg.status()
            assert status.connected
            assert status.last_error is None
        ns = _ns()
        with RedisFlagStore(url, namespace=ns, cache_path=None, timeout=OP_TIMEOUT) as store:
            flags = FeatureFlags([Flag("beta")], store=store)
            flags.enable("beta", by="ops")
            assert flags.enabled("beta") is True
            assert [c.by for c in store.history("beta")] == ["ops"]
            flags.close()
    finally:
        stop.set()
        agent.join(timeout=5)


def test_registry_and_flag_store_work_over_tls_with_a_ca_file(
    tls_server: RedisServer, pki: Pki
) -> None:
    _exercise(_url(tls_server, tls_query(pki.ca)))
    _exercise(_url(tls_server, tls_query(pki.ca), host="localhost"))


def test_registry_and_flag_store_work_over_mutual_tls(mtls_server: RedisServer, pki: Pki) -> None:
    _exercise(_url(mtls_server, tls_query(pki.ca, cert=pki.client_cert, key=pki.client_key)))
    encrypted = tls_query(
        pki.ca, cert=pki.client_cert, key=pki.client_enc_key, ssl_password=KEY_PASSWORD
    )
    _exercise(_url(mtls_server, encrypted))


def test_url_query_keys_take_every_tls_option() -> None:
    keys = rc.url_query_keys()
    for key in (
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_min_version",
        "ssl_ciphers",
    ):
        assert key in keys
        rc.check_url(
            f"rediss://cache:6380/0?{key}=required"
            if key == "ssl_cert_reqs"
            else f"rediss://cache:6380/0?{key}=x"
        )


def test_the_cli_reaches_redis_over_mutual_tls(
    mtls_server: RedisServer, pki: Pki, tmp_path: Path
) -> None:
    url = _url(mtls_server, tls_query(pki.ca, cert=pki.client_cert, key=pki.client_key))
    ns = _ns()
    rows = ok_json(run_cli("agents", "list", "--redis", url, "--namespace", ns, cwd=tmp_path))
    assert rows == []
    store = f"{url}&namespace={ns}"
    with RedisFlagStore(url, namespace=ns, cache_path=None, timeout=OP_TIMEOUT) as st:
        flags = FeatureFlags([Flag("beta")], store=st)
        ok_json(run_cli("flags", "enable", "beta", "--by", "ops", "--store", store, cwd=tmp_path))
        listed = ok_json(run_cli("flags", "list", "--store", store, cwd=tmp_path))
        assert [(r["name"], r["switch"]) for r in listed] == [("beta", True)]
        flags.close()


def test_the_cli_shows_a_tls_failure_as_one_typed_line(
    tls_server: RedisServer, pki: Pki, tmp_path: Path
) -> None:
    url = _url(tls_server, tls_query(pki.other_ca))
    result = run_cli("agents", "list", "--redis", url, "--namespace", _ns(), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "BackendUnavailable" in result.stderr
    assert "TLS certificate verification failed" in result.stderr
    missing = _url(tls_server, "?ssl_ca_certs=/nonexistent/ca.pem")
    result = run_cli("agents", "list", "--redis", missing, "--namespace", _ns(), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "InvalidConfig" in result.stderr
    assert "ssl_ca_certs '/nonexistent/ca.pem' does not exist" in result.stderr


# ------------------------------------------------------------------ misconfigurations


@pytest.fixture(scope="module")
def servers(pki: Pki) -> Iterator[dict[str, RedisServer]]:
    """The odd servers: expired certificate, another host's certificate, plain text."""
    made = {
        "expired": RedisServer(tls=ServerTls(pki.expired_cert, pki.expired_key, pki.ca)),
        "wrong_host": RedisServer(tls=ServerTls(pki.wrong_host_cert, pki.wrong_host_key, pki.ca)),
        "plain": RedisServer(),
    }
    try:
        for server in made.values():
            server.start()
        yield made
    finally:
        for server in made.values():
            server.stop()


def _connect_error(url: str, op_timeout: float = OP_TIMEOUT) -> FoundationError:
    with pytest.raises(FoundationError) as info:
        rc.connect(url, op_timeout=op_timeout).close()
    err = info.value
    assert type(err) in (InvalidConfig, BackendUnavailable)
    assert KEY_PASSWORD not in str(err)
    return err


Case = tuple[str, Callable[[Pki], str], type[FoundationError], str]
CASES: dict[str, Case] = {
    # name: (server, query builder, error type, what the message says)
    "wrong CA": (
        "tls",
        lambda p: tls_query(p.other_ca),
        BackendUnavailable,
        "TLS certificate verification failed (self-signed certificate in certificate chain): "
        "the server's certificate is not signed by a CA the client trusts; give the CA that "
        "signed it as ssl_ca_certs",
    ),
    "no CA (system store)": (
        "tls",
        lambda p: "",
        BackendUnavailable,
        "give the CA that signed it as ssl_ca_certs",
    ),
    "expired server certificate": (
        "expired",
        lambda p: tls_query(p.ca),
        BackendUnavailable,
        "TLS certificate verification failed (certificate has expired): the server's "
        "certificate is outside its validity dates",
    ),
    "hostname mismatch": (
        "wrong_host",
        lambda p: tls_query(p.ca),
        BackendUnavailable,
        "does not name the host of the URL; connect by a name it lists, or set "
        "ssl_check_hostname=false",
    ),
    # Each of the two below reads the server's alert or meets its EOF (a race: see
    # _redis_conn._tls_why); both messages name the client certificate options.
    "no client certificate for mutual TLS": (
        "mtls",
        lambda p: tls_query(p.ca),
        BackendUnavailable,
        "requires a client certificate",
    ),
    "client certificate of another CA": (
        "mtls",
        lambda p: tls_query(p.ca, cert=p.other_cert, key=p.other_key),
        BackendUnavailable,
        "check ssl_certfile and ssl_keyfile",
    ),
    "CA file missing": (
        "tls",
        lambda p: "?ssl_ca_certs=/nonexistent/ca.pem",
        InvalidConfig,
        "TLS configuration: ssl_ca_certs '/nonexistent/ca.pem' does not exist or is not a file",
    ),
    "CA file not PEM": (
        "tls",
        lambda p: tls_query(p.server_key.parent / "ca.srl"),
        InvalidConfig,
        "holds no usable PEM certificate",
    ),
    "client key missing": (
        "mtls",
        lambda p: tls_query(p.ca, cert=p.client_cert, key=Path("/nonexistent/k.pem")),
        InvalidConfig,
        "ssl_keyfile '/nonexistent/k.pem' does not exist",
    ),
    "client key of another certificate": (
        "mtls",
        lambda p: tls_query(p.ca, cert=p.client_cert, key=p.other_key),
        InvalidConfig,
        "the client certificate or key cannot be used",
    ),
    "encrypted key without ssl_password": (
        "mtls",
        lambda p: tls_query(p.ca, cert=p.client_cert, key=p.client_enc_key),
        InvalidConfig,
        "is encrypted: give ssl_password",
    ),
    "encrypted key, wrong ssl_password": (
        "mtls",
        lambda p: tls_query(
            p.ca, cert=p.client_cert, key=p.client_enc_key, ssl_password="not-" + KEY_PASSWORD
        ),
        InvalidConfig,
        "or a wrong ssl_password",
    ),
    "rediss:// to a plain-text port": (
        "plain",
        lambda p: tls_query(p.ca),
        BackendUnavailable,
        "no answer in time to the TLS handshake",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tls_misconfiguration_is_a_typed_error_saying_what_to_fix(
    case: str,
    pki: Pki,
    tls_server: RedisServer,
    mtls_server: RedisServer,
    servers: dict[str, RedisServer],
) -> None:
    where, query, expected, text = CASES[case]
    server = {"tls": tls_server, "mtls": mtls_server, **servers}[where]
    err = _connect_error(_url(server, query(pki)))
    assert type(err) is expected, err
    assert text in str(err)
    assert "unreachable" not in str(err)  # what it said for every one of them before


def test_redis_scheme_to_a_tls_port_fails_at_once_with_a_hint(tls_server: RedisServer) -> None:
    err = _connect_error(f"redis://127.0.0.1:{tls_server.port}/0")
    assert type(err) is BackendUnavailable
    assert "if that port speaks TLS only, the URL needs rediss://" in str(err)


def test_a_tls_server_frozen_mid_handshake_is_a_bounded_backend_unavailable(
    pki: Pki,
) -> None:
    with RedisServer(tls=ServerTls(pki.server_cert, pki.server_key, pki.ca)) as server:
        server.freeze()
        try:
            err = _connect_error(_url(server, tls_query(pki.ca)), FROZEN_OP_TIMEOUT)
        finally:
            server.thaw()
    assert type(err) is BackendUnavailable
    assert "no answer in time to the TLS handshake" in str(err)


def test_the_redis_classes_answer_a_tls_failure_like_connect(
    tls_server: RedisServer, pki: Pki
) -> None:
    url = _url(tls_server, tls_query(pki.other_ca))
    with pytest.raises(BackendUnavailable, match="TLS certificate verification failed"):
        RedisRegistry(url, namespace=_ns(), op_timeout=OP_TIMEOUT)
    with pytest.raises(BackendUnavailable, match="TLS certificate verification failed"):
        RedisFlagStore(url, namespace=_ns(), cache_path=None, timeout=OP_TIMEOUT)
    missing = _url(tls_server, "?ssl_ca_certs=/nonexistent/ca.pem")
    with pytest.raises(InvalidConfig, match=r"ssl_ca_certs '/nonexistent/ca\.pem'"):
        RedisRegistry(missing, namespace=_ns(), op_timeout=OP_TIMEOUT)
    with pytest.raises(InvalidConfig, match=r"ssl_ca_certs '/nonexistent/ca\.pem'"):
        RedisFlagStore(missing, namespace=_ns(), cache_path=None, timeout=OP_TIMEOUT)


# ------------------------------------------------------------------ URL checks


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://cache:6379/0?ssl_ca_certs=/ca.pem", "'ssl_ca_certs' is a TLS option"),
        ("unix:///run/redis.sock?ssl_certfile=/c.pem", "'ssl_certfile' is a TLS option"),
        ("rediss://cache:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
    ],
)
def test_check_url_refuses_tls_options_it_cannot_use(url: str, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why):
        rc.check_url(url)


def test_a_key_password_is_never_shown() -> None:
    url = f"rediss://cache:6380/0?ssl_keyfile=/k.pem&ssl_password={KEY_PASSWORD}"
    assert KEY_PASSWORD not in rc.redact_url(url)
    assert "ssl_password=***" in rc.redact_url(url)
    with pytest.raises(InvalidConfig) as info:
        rc.check_url(url + "&ssl_cert_reqs=maybe")
    assert KEY_PASSWORD not in str(info.value)


def test_an_encrypted_key_without_password_never_prompts_on_a_terminal(
    mtls_server: RedisServer, pki: Pki
) -> None:
    """OpenSSL asks for a key's passphrase on the terminal when no password is given:
    a process with a terminal waited there forever. The URL below is run with a
    pseudo-terminal as stdin/stdout and must end with the typed error."""
    import pty

    url = _url(mtls_server, tls_query(pki.ca, cert=pki.client_cert, key=pki.client_enc_key))
    script = (
        "import sys\n"
        "from foundation import _redis_conn as rc\n"
        "try:\n"
        f"    rc.connect({url!r}, op_timeout=1.0)\n"
        "except Exception as exc:\n"
        "    print('RAISED', type(exc).__name__, exc, file=sys.stderr)\n"
    )
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            start_new_session=True,  # the pty becomes its controlling terminal
        )
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("connect waited for a passphrase on the terminal")
    finally:
        os.close(follower)
        os.close(leader)
    assert b"RAISED InvalidConfig" in err, err
    assert b"is encrypted: give ssl_password" in err


# ------------------------------------------------------------------ background threads


ROTATION = """
from pathlib import Path
from foundation._demo._redis_server import RedisServerProcess, ServerTls
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry

pki = {pki}
good = ServerTls(Path(pki["server_cert"]), Path(pki["server_key"]), Path(pki["ca"]))
rotated = ServerTls(Path(pki["other_cert"]), Path(pki["other_key"]), Path(pki["ca"]))
server = RedisServerProcess(tls=good)
server.start()
url = server.url + "?ssl_ca_certs=" + pki["ca"]
stop = threading.Event()
agent = spawn_thread(stop.wait)
reg = RedisRegistry(url, namespace="rot", op_timeout=0.5, lease_ttl=3.0)
reg.register("job", agent, {{}})
store = RedisFlagStore(url, namespace="rot", cache_path=None, timeout=0.5)
flags = FeatureFlags([Flag("beta")], store=store)
other = RedisFlagStore(url, namespace="rot", cache_path=None, timeout=0.5)
before = library_threads()
print("THREADS", before)

server.tls = rotated  # a certificate of a CA the clients do not trust
server.restart()
verify = "TLS certificate verification failed"
wait_for(lambda: verify in (reg.status().last_error or ""), "the registry's TLS error")
wait_for(lambda: verify in (store.status().last_error or ""), "the flag store's TLS error")
print("REGISTRY_ERROR", reg.status().last_error)
print("STORE_ERROR", store.status().last_error)
assert library_threads() == before, (library_threads(), before)

server.tls = good  # the right certificate is back (the server restarted empty)
server.restart()
wait_for(lambda: reg.status().state == "connected" and reg.lookup("job") is not None,
         "the registry's recovery", timeout=30)
# The other store writes; the listener of `store` must see it.
other_flags = FeatureFlags([Flag("beta")], store=other)
def enabled_elsewhere():
    try:
        other_flags.enable("beta", by="ops")
    except Exception:
        return False
    return True
wait_for(enabled_elsewhere, "a write over TLS again", timeout=30)
wait_for(lambda: flags.enabled("beta"), "the listener's delivery over TLS", timeout=30)
assert library_threads() == before, (library_threads(), before)
for closable in (other_flags, flags, other, store, reg):
    closable.close()
stop.set()
server.stop()
print("OK")
"""


def test_background_threads_survive_a_rotation_to_an_untrusted_cert_and_recover(
    pki: Pki,
) -> None:
    paths = {k: str(v) for k, v in vars(pki).items()}
    result = run_scenario(ROTATION.format(pki=json.dumps(paths)), timeout=120)
    registry_error = result.lines("REGISTRY_ERROR")[0]
    store_error = result.lines("STORE_ERROR")[0]
    for line in (registry_error, store_error):
        assert "TLS certificate verification failed" in line
        assert "give the CA that signed it as ssl_ca_certs" in line
    # An operator sees it in the logs at WARNING (a repeated outage failure is
    # DEBUG; one that turns into a TLS failure is not), from the retrying threads.
    warned = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG WARNING") and "TLS certificate verification failed" in line
    ]
    assert any(" foundation.registry.redis [foundation-redis-" in line for line in warned), warned
    assert any(" foundation.flags [foundation-flags-redis" in line for line in warned), warned


def test_a_tls_file_gone_after_construction_is_backend_unavailable_until_it_is_back(
    tls_server: RedisServer, pki: Pki, tmp_path: Path
) -> None:
    """redis-py loads the files for every new connection: a rotation that rewrites
    them is picked up, and a moment without them is an outage, not a config error."""
    import shutil

    ca = tmp_path / "ca.pem"
    shutil.copy(pki.ca, ca)
    url = _url(tls_server, tls_query(ca))
    client = rc.connect(url, op_timeout=OP_TIMEOUT)
    try:
        ca.unlink()
        client.connection_pool.disconnect()  # the next call opens a new connection
        with (
            pytest.raises(BackendUnavailable, match="a TLS file of the URL is missing"),
            rc.translated(rc.redact_url(url), "reading"),
        ):
            client.ping()
        shutil.copy(pki.ca, ca)
        with rc.translated(rc.redact_url(url), "reading"):
            assert client.ping() is True
    finally:
        client.close()
