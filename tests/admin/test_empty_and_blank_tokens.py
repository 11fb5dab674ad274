"""A token configuration that holds no usable token is refused where it would open
the admin API to anyone.

Was: the "a non-loopback bind needs a token" check was ``token is None``, so
``AdminServer(token=[] | {} | (), bind="0.0.0.0:0")`` served every read to anyone
(writes off); a mounted app (``create_app``, ``public_reads=False``) without a
token answered every read too, though documented as needing the token; and a
blank operator name (``"   :s"``, the ``by`` of its writes) or a blank secret
(``"ana:   "``) was accepted. Real uvicorn servers on free loopback ports.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from foundation.admin import AdminServer, create_app, parse_tokens, serve
from foundation.errors import InvalidConfig
from foundation.flags import FeatureFlags, Flag
from tests.admin._uvicorn import serving

JSON = {"Content-Type": "application/json"}
EMPTY: list[Any] = [[], {}, (), set(), iter(()), (t for t in ())]
EMPTY_IDS = ["list", "dict", "tuple", "set", "iterator", "generator"]
READS = ["api/flags", "api/flags/beta", "api/status", "metrics"]


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    f = FeatureFlags([Flag("beta")])
    f.enable("beta", by="ana")
    try:
        yield f
    finally:
        f.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _admin_threads() -> int:
    return sum(t.name == "foundation-admin" for t in threading.enumerate())


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("token", EMPTY, ids=EMPTY_IDS)
def test_an_empty_token_off_loopback_is_refused_before_anything_starts(
    flags: FeatureFlags, token: Any
) -> None:
    port = _free_port()
    threads = _admin_threads()
    with pytest.raises(InvalidConfig, match=r"non-loopback '0\.0\.0\.0' without a token"):
        AdminServer(flags=flags, token=token, bind=f"0.0.0.0:{port}")
    assert _nothing_listens(port)
    assert _admin_threads() == threads


@pytest.mark.parametrize("token", [[], {}, ()], ids=["list", "dict", "tuple"])
def test_serve_refuses_an_empty_token_off_loopback(flags: FeatureFlags, token: Any) -> None:
    port = _free_port()
    ready: list[str] = []
    with pytest.raises(InvalidConfig, match="without a token"):
        serve(flags=flags, token=token, bind=f"0.0.0.0:{port}", on_ready=ready.append)
    assert ready == []
    assert _nothing_listens(port)


def _answers(url: str) -> list[tuple[str, int, Any]]:
    with httpx.Client(base_url=url, timeout=30) as c:
        out = [(path, c.get(path).status_code, None) for path in READS]
        who = c.get("api/whoami").json()
        out.append(("whoami", 200, (who["token_configured"], who["writes"])))
        w = c.post("api/flags/beta/clear", json={}, headers=JSON)
        out.append(("write", w.status_code, w.json()["error"]))
    return out


@pytest.mark.parametrize("token", [[], {}, ()], ids=["list", "dict", "tuple"])
def test_an_empty_token_on_loopback_is_no_token(flags: FeatureFlags, token: Any) -> None:
    """Documented: on loopback an empty list or mapping is ``None``: reads open, writes off."""
    with AdminServer(flags=flags, bind="127.0.0.1:0") as bare:
        expected = _answers(bare.url)
    assert expected == [
        *[(path, 200, None) for path in READS],
        ("whoami", 200, (False, False)),
        ("write", 403, "ReadOnly"),
    ]
    with AdminServer(flags=flags, token=token, bind="127.0.0.1:0") as server:
        assert _answers(server.url) == expected


def test_an_iterator_token_off_loopback_is_read_once_and_works(flags: FeatureFlags) -> None:
    token = (t for t in ["ana:s3cret"])
    with AdminServer(flags=flags, token=token, bind="0.0.0.0:0") as server:
        port = server.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.get("api/flags").status_code == 401
            bearer = {"Authorization": "Bearer s3cret"}
            assert c.get("api/flags", headers=bearer).status_code == 200
            r = c.post("api/flags/beta/clear", json={}, headers={**bearer, **JSON})
            assert r.status_code == 200, r.text


@pytest.mark.parametrize("token", [None, [], {}], ids=["none", "list", "dict"])
def test_a_mounted_app_without_a_token_keeps_reads_closed(flags: FeatureFlags, token: Any) -> None:
    """``public_reads=False`` (the default) with no token: every read is a 401 saying
    why (was: every read open to anyone); ``public_reads=True`` opens them."""
    with (
        serving(create_app(flags=flags, token=token)) as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        for path in [*READS, "api/whoami", "ofrep/v1/evaluate/flags"]:
            r = c.get(path) if "ofrep" not in path else c.post(path, json={"context": {}})
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert "none is configured" in c.get("api/flags").text
        assert c.get("healthz").json() == {"ok": True}
    with (
        serving(create_app(flags=flags, token=token, public_reads=True)) as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        assert [c.get(path).status_code for path in READS] == [200] * len(READS)


BLANK = [
    ("   :s3cret", "token #1: the operator name is blank"),
    (":s3cret", "token #1: the operator name is blank"),
    (["ana:a-secret", "\t:b-secret"], "token #2: the operator name is blank"),
    ({"  ": "s3cret"}, "token #1: the operator name is blank"),
    ("ana:", "token #1: the secret of operator 'ana' is blank"),
    ("ana:   ", "token #1: the secret of operator 'ana' is blank"),
    ("   ", "token #1: the secret of operator 'admin' is blank"),
    ({"ana": "\t "}, "token #1: the secret of operator 'ana' is blank"),
    (["ana:a-secret", "bo: b-secret "], "token #2: the secret of operator 'bo' starts or ends"),
    ("ana:s3cr\ud800t", "token #1: the secret of operator 'ana' must be printable ASCII"),
    ("ana:caf\u00e9", "token #1: the secret of operator 'ana' must be printable ASCII"),
    ("ana:a\x00b", "token #1: the secret of operator 'ana' must be printable ASCII"),
    ("an\ud800a:s3cret", "token #1: the operator name 'an\\ud800a' is not valid Unicode"),
]


@pytest.mark.parametrize(("token", "message"), BLANK, ids=[repr(t) for t, _ in BLANK])
@pytest.mark.parametrize("bind", ["127.0.0.1:0", "0.0.0.0:0"])
def test_a_blank_operator_name_or_secret_is_refused_at_startup(
    flags: FeatureFlags, token: Any, message: str, bind: str
) -> None:
    threads = _admin_threads()
    with pytest.raises(InvalidConfig) as info:
        AdminServer(flags=flags, token=token, bind=bind)
    assert str(info.value).startswith(message), str(info.value)
    assert not any(s in str(info.value) for s in ("s3cret", "a-secret", "b-secret"))
    assert _admin_threads() == threads
    tail = re.escape(message.split(": ", 1)[1])
    with pytest.raises(InvalidConfig, match=tail):
        parse_tokens(token)
    with pytest.raises(InvalidConfig, match=tail):
        create_app(flags=flags, token=token)
