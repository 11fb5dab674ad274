"""Lone surrogates: refused in request bodies, rendered (escaped) in every answer.

A lone surrogate (``"\\ud800"``) is valid JSON but not valid Unicode: UTF-8
cannot encode it. The admin refuses one in any text of a write body before
anything is written, and renders every answer as ASCII JSON, so a string an
older version persisted still reads back (as the same escape) everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.admin._json import render_json
from foundation.flags import FeatureFlags, Flag, FlagChange, FlagState, MemoryFlagStore
from tests.admin.test_api import event_stream, next_event

OPS = "ana:ana-secret"
ANA = {"Authorization": "Bearer ana-secret"}
BAD = "\ud800"  # a lone high surrogate
BAD2 = "\udc80"  # a lone low surrogate


def declared() -> list[Flag]:
    return [
        Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
        Flag("beta", description="the beta"),
    ]


@pytest.fixture
def fresh() -> Iterator[tuple[FeatureFlags, AdminServer]]:
    flags = FeatureFlags(declared())
    try:
        with AdminServer(flags=flags, token=OPS, bind="127.0.0.1:0") as server:
            yield flags, server
    finally:
        flags.close()


def post(server: AdminServer, path: str, raw: str) -> httpx.Response:
    """POST a raw JSON text (json= in httpx would refuse to encode a lone surrogate)."""
    return httpx.post(
        server.url + path,
        content=raw.encode("ascii"),
        headers={**ANA, "Content-Type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("api/flags/color/assign", '{"actor": "\\ud800", "variant": "blue"}'),
        ("api/flags/color/assign", '{"actor": "bob", "variant": "blue", "reason": "x\\udc80"}'),
        ("api/flags/color/assign", '{"actor": "bob", "variant": "bl\\ud800ue"}'),
        ("api/flags/color/deny", '{"actor": "\\ud800"}'),
        ("api/flags/beta/allow", '{"actor": "a\\udfffb"}'),
        ("api/flags/beta/deny", '{"actor": "bob", "reason": "\\ud800"}'),
        ("api/flags/beta/enable", '{"reason": "\\ud800"}'),
        ("api/flags/color/split", '{"split": {"\\ud800": 100}}'),
        ("api/flags/beta/disable", '{"confirm": "beta", "reason": ["\\udc80"]}'),
    ],
)
def test_a_lone_surrogate_in_a_write_body_is_refused_before_anything_is_written(
    fresh: tuple[FeatureFlags, AdminServer], path: str, raw: str
) -> None:
    flags, server = fresh
    before = {n: flags.state(n) for n in flags.names}
    r = post(server, path, raw)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "InvalidBody"
    assert "surrogate" in r.json()["message"]
    assert {n: flags.state(n) for n in flags.names} == before
    assert flags.history() == []
    # A proper surrogate pair is one valid character: accepted.
    r = post(server, "api/flags/color/assign", '{"actor": "\\ud83d\\ude00", "variant": "blue"}')
    assert r.status_code == 200, r.text
    assert r.json()["assign"] == {"\U0001f600": "blue"}
    assert flags.evaluate("color", "\U0001f600").variant == "blue"


def persisted() -> MemoryFlagStore:
    """A store an older version wrote: surrogates in actors, by and reason, state and history."""
    store = MemoryFlagStore()
    state = FlagState(True, assign={BAD: "blue"}, deny=frozenset({BAD2}))
    boolean = FlagState(True, allow=frozenset({BAD}))

    def write(tx: Any) -> None:
        tx.put("color", state, FlagChange("color", FlagState(False), state, by=BAD2, reason=BAD))
        tx.put("beta", boolean, FlagChange("beta", FlagState(False), boolean, by="old", reason="x"))

    store.transaction(write)
    return store


def test_surrogates_already_stored_render_in_every_read() -> None:
    store = persisted()
    flags = FeatureFlags(declared(), store=store)
    try:
        assert flags.state("color").assign == {BAD: "blue"}  # the setting under test
        with (
            AdminServer(flags=flags, token=OPS, bind="127.0.0.1:0") as server,
            httpx.Client(base_url=server.url, headers=ANA, timeout=30) as c,
        ):
            r = c.get("api/flags")
            assert r.status_code == 200, r.text
            color = next(f for f in r.json()["flags"] if f["name"] == "color")
            # The escape round-trips: the client decodes the very string stored.
            assert color["assign"] == {BAD: "blue"}
            assert color["deny"] == [BAD2]
            assert r.content.isascii()
            r = c.get("api/flags/beta")
            assert (r.status_code, r.json()["allow"]) == (200, [BAD])
            r = c.get("api/history")
            assert r.status_code == 200, r.text
            change = next(ch for ch in r.json()["changes"] if ch["flag"] == "color")
            assert (change["by"], change["reason"]) == (BAD2, BAD)
            r = c.get("api/flags/color/evaluate", params={"actor": "x"})
            assert r.status_code == 200, r.text
            # The event stream: a new write carries the stored assignment in old and new.
            with event_stream(server.url, ANA) as events:
                r = c.post("api/flags/color/split", json={"split": {"blue": 100}})
                assert r.status_code == 200, r.text
                assert r.json()["assign"] == {BAD: "blue"}
                event = next_event(events, "flag", lambda d: d["flag"] == "color")
                assert event["old"]["assign"] == {BAD: "blue"}
                assert event["new"]["split"] == {"blue": 100.0}
            # OFREP, single and bulk, for the stored actor and another.
            for actor in (BAD, "someone"):
                raw = render_json({"context": {"targetingKey": actor}})
                r = c.post("ofrep/v1/evaluate/flags/color", content=raw)
                assert r.status_code == 200, r.text
                assert r.json()["variant"] == "blue"
                r = c.post("ofrep/v1/evaluate/flags", content=raw)
                assert r.status_code == 200, r.text
                assert {f["key"] for f in r.json()["flags"]} == {"color", "beta"}
    finally:
        flags.close()


def test_render_json_is_ascii_and_round_trips_any_string() -> None:
    value = {"a": BAD, BAD2: ["é", "\U0001f600", "x\ud800y"]}
    raw = render_json(value)
    assert raw.isascii()
    assert json.loads(raw) == value
    with pytest.raises(ValueError):
        render_json({"n": float("nan")})
