"""The Redis server's clock moves under the leases (docs/redis.md, "Leases").

Lease deadlines and ``{ns}:lastbeat`` are server times. A server restarted on
a host whose clock is behind (or a clock stepped back) dates ``lastbeat`` and
every deadline in its future: a dead node's entries were served for the skew
plus ``lease_ttl``. A clock that jumps ahead (or an old snapshot, whose last
heartbeat is old) looks like a long global outage, and the WARNING said so.

The clock move is made in the data, atomically (one script shifting
``lastbeat`` and every deadline by the skew): the state a real clock move
leaves, relative to the server's time now.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer

SKEW_MS = 300_000

_SHIFT = """
local last = redis.call('GET', KEYS[1])
if last then redis.call('SET', KEYS[1], tonumber(last) + tonumber(ARGV[1])) end
local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  redis.call('ZADD', KEYS[2], tonumber(all[i + 1]) + tonumber(ARGV[1]), all[i])
end
return #all / 2
"""


def _shift(server: RedisServer, ns: str, ms: int) -> None:
    """Date ``lastbeat`` and every lease deadline ``ms`` later (< 0: earlier)."""
    n = server.command("EVAL", _SHIFT, "2", f"{{{ns}}}:lastbeat", f"{{{ns}}}:leases", str(ms))
    assert n >= 1


def test_a_server_clock_behind_does_not_keep_a_dead_nodes_entries(
    redis_server: RedisServer,
    make_registry: MakeRegistry,
    make_node: Any,
    ns: str,
    agents: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="foundation.registry.redis")
    a = make_registry(lease_ttl=1.0)
    a.register("a", agents())
    d: NodeProcess = make_node(redis_server.url, ttl=1.0)
    assert a.wait_for_version(d.call("register", key="d")["written"])
    d.kill()  # dies without closing: its lease must run out
    # Every time stored was set by a clock 300 s ahead of the server's now.
    _shift(redis_server, ns, SKEW_MS)
    assert wait_until(lambda: a.lookup("d") is None, timeout=15), "the dead node was reaped"
    e = a.lookup("a")
    assert e is not None  # the live node was not reaped
    assert e.node == a.node
    assert a.status().state == "connected"
    moved = [r for r in caplog.records if "clock went back" in r.getMessage()]
    assert moved, caplog.text


def test_a_server_clock_ahead_is_not_called_a_global_outage(
    redis_server: RedisServer,
    make_registry: MakeRegistry,
    ns: str,
    agents: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="foundation.registry.redis")
    # A grace of 7.5 s (a beat every 5 s): a loaded machine's stall is no gap of
    # its own (with 1 s, one was healed and counted before the shift's, and the
    # test looked for the shift's WARNING too early).
    a = make_registry(lease_ttl=60.0, heartbeat=5.0)
    a.register("a", agents())
    # The node heartbeated (its lease is there), then the server's clock jumps
    # 300 s ahead: every stored time is 300 s old.
    assert wait_until(lambda: a.status().stale is False)
    before = a.status().lease_extensions

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "renewed its lease for" in r.getMessage()]

    _shift(redis_server, ns, -SKEW_MS)
    assert wait_until(lambda: bool(said()), timeout=30), caplog.text
    assert a.status().lease_extensions > before
    e = a.lookup("a")
    assert e is not None  # not reaped for it
    assert e.node == a.node
    assert all("clock jumped ahead or Redis went back" in m for m in said()), said()
    assert not any("a global outage" in m for m in said()), said()
