"""The admin server tells a TLS failure of Redis: ``/api/status`` names it, bounded.

A certificate rotation to a CA the clients do not trust leaves the service (a
``RedisRegistry``, a ``RedisFlagStore``, ``FeatureFlags`` and an
``AdminServer`` in its own interpreter with the default hooks, see
``test_degraded_status``) disconnected. Its ``status().last_error`` reads
"Redis at URL failed while OP: TLS certificate verification failed (...):
what to fix". The URL of a TLS client carries its file paths; cut at its end
only, the error the API shows (at most ``ERROR_LIMIT`` characters) could be the
URL alone. Real TLS redis-server, real certificates (``tests/redis/_tls.py``),
real HTTP. The page's banner is checked in ``test_tls_status_browser.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation._demo._redis_server import ServerTls
from foundation.admin._status import ERROR_LIMIT
from tests.admin.test_degraded_status import Service
from tests.redis._tls import Pki, make_pki, tls_query
from tests.redis_support import RedisServer

VERIFY = "TLS certificate verification failed"
UNTRUSTED = "give the CA that signed it as ssl_ca_certs"


class TlsRedis(RedisServer):
    """A TLS-only redis-server whose ``url`` carries the clients' TLS options."""

    def __init__(self, tls: ServerTls, query: str) -> None:
        super().__init__(tls=tls)
        self.query = query

    @property
    def url(self) -> str:
        return super().url + self.query


def good(pki: Pki) -> ServerTls:
    """The server's certificate of the CA the clients trust."""
    return ServerTls(pki.server_cert, pki.server_key, pki.ca)


def rotated(pki: Pki) -> ServerTls:
    """A certificate of another CA (a rotation the clients were not told about)."""
    return ServerTls(pki.other_cert, pki.other_key, pki.ca)


def both_failed(text: str) -> Callable[[dict[str, Any]], bool]:
    """The registry disconnected and the flag store stale, both with ``text`` in the error."""

    def ok(s: dict[str, Any]) -> bool:
        r, f = s["registry"], s["flag_store"]
        return (
            r["state"] == "disconnected"
            and f["state"] == "stale"
            and text in (r["last_error"] or "")
            and text in (f["last_error"] or "")
        )

    return ok


@pytest.fixture
def deep_pki(tmp_path: Path) -> Pki:
    """Certificates where deployments keep them: a long directory (the URL is long)."""
    d = tmp_path / "var" / "lib" / "foundation" / "secrets" / "redis-tls" / "current"
    d.mkdir(parents=True)
    return make_pki(d)


@pytest.fixture
def tls_service(deep_pki: Pki) -> Iterator[tuple[TlsRedis, Service]]:
    """The service over mutual-TLS options (CA, client certificate and key in the URL)."""
    query = tls_query(deep_pki.ca, cert=deep_pki.client_cert, key=deep_pki.client_key)
    server = TlsRedis(good(deep_pki), query)
    server.start()
    try:
        assert len(server.url) > ERROR_LIMIT  # the case: the URL alone fills the limit
        svc = Service(server, "registry", False)
        try:
            yield server, svc
        finally:
            svc.kill()
    finally:
        server.stop()


def test_api_status_names_the_tls_failure_after_a_rotation(
    tls_service: tuple[TlsRedis, Service], deep_pki: Pki
) -> None:
    server, svc = tls_service
    up = svc.wait_status("the first states", lambda s: not s["degraded"])
    assert up["registry"]["state"] == "connected"

    server.tls = rotated(deep_pki)
    server.restart()
    down = svc.wait_status("the TLS failure in /api/status", both_failed(VERIFY))
    assert down["degraded"] is True
    assert down["registry"]["degraded"] is True
    assert down["flag_store"]["degraded"] is True
    for part in (down["registry"], down["flag_store"]):
        error = part["last_error"]
        assert len(error) <= ERROR_LIMIT, error
        assert error.startswith("Redis at rediss://127.0.0.1:"), error
        assert UNTRUSTED in error, error  # what to fix survives the bound
        assert str(deep_pki.client_key) not in error  # the query went first
        assert "Error 1 connecting" not in error  # redis-py's repeat of the reason went

    # A write that needs Redis fails with the reason (the 503's message is whole).
    r = svc.http.post("api/flags/search/enable", json={"reason": "rotation"})
    assert (r.status_code, r.json()["error"]) == (503, "BackendUnavailable"), r.text
    assert VERIFY in r.json()["message"]
    assert UNTRUSTED in r.json()["message"]
    # The flag answer's store block is the same bounded report.
    store = svc.get("api/flags")["store"]
    assert VERIFY in store["last_error"]
    assert len(store["last_error"]) <= ERROR_LIMIT

    # The right certificate is back: the service recovers, the report clears.
    server.tls = good(deep_pki)
    server.restart()
    svc.wait_status("the recovery", lambda s: not s["degraded"])
    _, err = svc.finish()
    assert VERIFY in err  # the service's log said it too (foundation.* at WARNING)


def test_the_bound_keeps_what_to_fix() -> None:
    """``_bounded`` on the shapes of the errors: a TLS one keeps its advice, the
    rest is cut at its end as before; ``error_cause`` is what a retry keeps."""
    from foundation.admin._status import _bounded, error_cause

    host = "redis-0.redis-headless.payments-prod.svc.cluster.local"
    mismatch = (
        f"Redis at rediss://{host}:6380/0?ssl_ca_certs=/etc/redis/ca.pem failed while "
        f"renewing the lease: TLS certificate verification failed (hostname mismatch, "
        f"certificate is not valid for '{host}'.): the server's certificate does not name "
        "the host of the URL; connect by a name it lists, or set ssl_check_hostname=false: "
        f"Error 1 connecting to {host}:6380. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: Hostname mismatch"
    )
    shown = _bounded(mismatch)
    assert shown is not None
    assert len(shown) <= ERROR_LIMIT
    assert shown.startswith("Redis at rediss://redis-0.")
    assert "TLS certificate verification failed (hostname mismatch" in shown
    assert "the server's certificate does not name the host of the URL" in shown
    assert "Error 1 connecting" not in shown

    plain = "Redis at redis://h:1/0 failed while reading: unreachable: " + "x" * 400
    assert _bounded(plain) == plain[: ERROR_LIMIT - 1] + "\u2026"
    assert _bounded("short") == "short"
    assert _bounded(None) is None

    assert error_cause(mismatch) == error_cause(mismatch.replace("renewing the lease", "x"))
    assert error_cause(mismatch) != error_cause(plain)
    assert error_cause("no answer in time") == "no answer in time"
    assert error_cause(None) is None
