"""Redis goes back to older data in place, without cutting a connection: an old
dump loaded by ``DEBUG RELOAD NOSAVE``, or the databases swapped back by
``SWAPDB``. Nothing fails, so no node noticed before its next write: Redis
served registrations deleted since (``b1``) and lacked newer ones (``a2``,
``b2``), while every ``status()`` said connected. Each heartbeat now reads the
change counter; one below what the node has seen makes it recover as after a
restart: it re-asserts what Redis lacks and deletes its own registrations that
no live agent backs. No write happens while the test waits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis.support import wait_until
from tests.redis.test_partial_keyspace_loss import _SCENARIO
from tests.redis_support import RedisServer


def _owners(server: RedisServer, ns: str) -> dict[str, str]:
    raw = server.command("HGETALL", f"{{{ns}}}:owner")
    return {json.loads(k): v.decode() for k, v in zip(raw[::2], raw[1::2], strict=True)}


@pytest.mark.parametrize("how", ["debug_reload", "swapdb"])
def test_older_data_loaded_in_place_is_noticed_without_a_write(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any, how: str
) -> None:
    ns = "inplace"
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    a.register("a1", agents())
    b.register("b1", agents())
    if how == "debug_reload":
        fresh_redis.command("SAVE")  # the old copy: a1, b1
    else:
        # The old copy goes to db 1, db 0 comes back empty: the nodes find their
        # leases gone and write a1, b1 back (this was handled already).
        fresh_redis.command("SWAPDB", "0", "1")
        assert wait_until(lambda: _owners(fresh_redis, ns) == {"a1": a.node, "b1": b.node})
    a.register("a2", agents())
    b.unregister("b1")
    b.register("b2", agents())
    assert a.wait_for_version(b.status().written)
    want = {"a1": a.node, "a2": a.node, "b2": b.node}
    assert _owners(fresh_redis, ns) == want
    recoveries = (a.status().recoveries, b.status().recoveries)
    if how == "debug_reload":
        fresh_redis.command("DEBUG", "RELOAD", "NOSAVE")
    else:
        fresh_redis.command("SWAPDB", "0", "1")  # the old copy is db 0 again
    assert _owners(fresh_redis, ns) == {"a1": a.node, "b1": b.node}  # time travelled

    def healed() -> bool:
        return (
            _owners(fresh_redis, ns) == want
            and a.status().recoveries > recoveries[0]
            and b.status().recoveries > recoveries[1]
            and a.status().state == b.status().state == "connected"
        )

    assert wait_until(healed, timeout=15), (_owners(fresh_redis, ns), a.status(), b.status())
    for node in (a, b):
        assert wait_until(lambda n=node: sorted(e.key for e in n.list_all()) == sorted(want))


def test_losing_the_order_hash_breaks_nothing() -> None:
    """``{ns}:at`` (the registrations' order, read by re-asserts) lost alone: the
    scenario of every other key of the namespace (test_partial_keyspace_loss)."""
    result = run_scenario(_SCENARIO.format(victim="at"), timeout=120.0)
    assert result.lines("DELETED"), result.stdout
