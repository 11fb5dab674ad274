"""An observer hears a death whose delete a failover lost once, not "registered" again.

The ``RedisObserver`` side of ``test_failover_no_resurrection.py`` (the same
``_holds``): during a Sentinel failover the old master stays writable for about
a second after the promotion; node A's delete of its dead agent lands there, the
observer (``foundation agents watch``) hears it (``unregistered``/down), and the
promoted replica never gets it. The observer's resync against the promoted
master brought the dead agent back: shown ``registered`` (``lookup`` returned
it), then, once A's recovery deleted it there, a second death.

Made deterministic with two real servers, no Sentinel: B, a replica of A, is
promoted (``REPLICAOF NO ONE``) before A's delete, so only A has it; A's node
and the observer reach Redis through one proxy, which is cut and then leads to
B while the node is frozen, so the observer resynchronises against B before the
node deletes its dead entry there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from foundation.registry._redis._observer import HOLD_S, RedisObserver
from tests.redis._heard import Heard, owners
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, unique_namespace, wait_until
from tests.redis_flags._proxy import CutProxy
from tests.redis_support import RedisServer


@dataclass
class _Failover:
    old: RedisServer  # A: the master the observer and the node start on
    new: RedisServer  # B: its replica, promoted before the node's delete
    proxy: CutProxy
    ns: str
    node: NodeProcess
    observer: RedisObserver
    heard: Heard


def _ver(server: RedisServer, ns: str) -> int:
    return int(server.command("GET", f"{{{ns}}}:ver") or 0)


@pytest.fixture
def failover(request: pytest.FixtureRequest) -> Iterator[_Failover]:
    """The node (``a0``, ``a1`` registered; ``lease_ttl`` 10 s, or the test's
    ``indirect`` parameter) and the observer on A through the proxy; B a replica
    of A, caught up, then promoted: A's next writes are lost."""
    ns = unique_namespace("ofo")
    ttl = float(getattr(request, "param", 10.0))
    with RedisServer() as old, RedisServer() as new:
        proxy = CutProxy(old.port)
        node = NodeProcess(proxy.url, ns, ttl=ttl)
        observer: RedisObserver | None = None
        try:
            observer = RedisObserver(proxy.url, namespace=ns)
            heard = Heard()
            observer.subscribe(heard)
            node.call("register", key="a0")
            node.call("register", key="a1")
            new.command("REPLICAOF", "127.0.0.1", old.port)
            assert wait_until(
                lambda: _ver(new, ns) == _ver(old, ns) == 2 and owners(new, ns) == owners(old, ns)
            )
            new.command("REPLICAOF", "NO", "ONE")
            yield _Failover(old, new, proxy, ns, node, observer, heard)
        finally:
            node.close()
            if observer is not None:
                observer.close()
            proxy.close()


def _lose_a0s_death(fo: _Failover) -> None:
    """A's agent a0 dies: the delete lands on the old master only, the observer
    hears it; the node is frozen and the proxy leads to B; the observer
    resynchronises against B, which still holds a0."""
    obs = fo.observer
    assert wait_until(lambda: obs.lookup("a0") is not None and obs.lookup("a1") is not None)
    fo.node.call("kill_agent", key="a0")
    assert wait_until(lambda: obs.lookup("a0") is None)  # the observer heard the death
    assert owners(fo.new, fo.ns) == {'"a0"', '"a1"'}  # the promoted master lacks it
    fo.node.freeze()  # it cannot delete a0 on B before the observer resynchronises
    fo.proxy.cut()
    fo.proxy._target = ("127.0.0.1", fo.new.port)  # the promoted master takes A's place
    fo.proxy.restore()
    # Resynchronised against B: its counter (B lacks the delete's version), then connected.
    ver_b = _ver(fo.new, fo.ns)
    assert wait_until(lambda: obs._tail_v == ver_b and obs.connected, timeout=15), obs.status()


def _flush(fo: _Failover) -> None:
    """The node registers a marker (on B); once the observer's listeners heard it,
    every event before it was told."""
    fo.node.call("register", key="marker")
    assert fo.heard.marked.wait(10)


def _recover_on_b(fo: _Failover) -> None:
    """The node thaws and recovers on B: deletes its dead a0, keeps a1; then
    ``_flush``."""
    fo.node.thaw()
    assert wait_until(lambda: owners(fo.new, fo.ns) == {'"a1"'}, timeout=15)
    _flush(fo)


def test_a_death_a_failover_lost_is_heard_once_by_the_observer(failover: _Failover) -> None:
    fo, obs = failover, failover.observer
    _lose_a0s_death(fo)
    # The snapshot holds a0, the history of B lacks its delete: held, not shown.
    assert obs.lookup("a0") is None
    assert obs.lookup("a1") is not None
    _recover_on_b(fo)  # deletes its dead a0 (a record that ends the hold, told nothing)
    assert obs.lookup("a0") is None
    assert fo.heard.of("a0") == [("registered", None), ("unregistered", "down")]
    assert fo.heard.of("a1") == [("registered", None)]
    assert [d.event.entry.key for d in obs.recently_dead()] == ["a0"]
    assert not obs._holds.held


@pytest.mark.parametrize("failover", [3.0], indirect=True)
def test_a_held_entry_nobody_removes_is_shown_when_its_time_is_up(
    failover: _Failover, caplog: pytest.LogCaptureFixture
) -> None:
    """The observer deletes nothing: an entry held that no record decides (its
    node stays frozen) is shown, told ``registered``, when the hold's time is
    up, with one INFO line (Redis holds it: never hidden for good). That time is
    two of the namespace's leases (the node's ``lease_ttl``, 3 s here, read from
    Redis: the observer is given none), as a node holds."""
    fo, obs = failover, failover.observer
    caplog.set_level(logging.INFO, logger="foundation.registry.redis")
    _lose_a0s_death(fo)
    assert obs.lookup("a0") is None  # held
    assert "a0" in obs._holds.held
    assert obs._holds.keep == 2 * 3.0  # (HOLD_S, 10 s, when no node has a lease)
    assert wait_until(lambda: obs.lookup("a0") is not None, timeout=15)
    _recover_on_b(fo)  # the dead a0 deleted on B: heard as a second death
    assert fo.heard.of("a0") == [
        ("registered", None),
        ("unregistered", "down"),
        ("registered", None),
        ("unregistered", "down"),
    ]
    assert fo.heard.of("a1") == [("registered", None)]
    shown = [r for r in caplog.records if "neither deleted nor written again" in r.getMessage()]
    assert len(shown) == 1, [r.getMessage() for r in shown]
    assert shown[0].getMessage().startswith(f"observer of {fo.ns!r}: 1 entr(ies)")


def _gap(server: RedisServer, ns: str) -> None:
    """A record one version past the next (written by hand): every reader meets a
    version gap and resynchronises (a killed tail connection may be replaced
    silently between two reads, and nothing is resynchronised)."""
    server.command("INCR", f"{{{ns}}}:ver")
    v = server.command("INCR", f"{{{ns}}}:ver")
    server.command(
        "XADD", f"{{{ns}}}:log", "*", "v", v, "w", "by-hand", "op", "u", "k", "0", "m", "{}"
    )


def test_a_registration_whose_delete_the_stream_holds_is_shown_at_once(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any
) -> None:
    """The other side of the hold: a delete the observer heard that the history of
    its next snapshot holds (a record written by hand, as the node's
    ``_hold_a0`` does, and left in the stream), of a registration Redis still
    has: the registration was written after its delete, it is live, shown and
    told ``registered`` at once by the resync, never held."""
    ns = unique_namespace("ofo")
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=3.0)
    with RedisObserver(fresh_redis.url, namespace=ns) as obs:
        heard = Heard()
        obs.subscribe(heard)
        a.register("a0", agents(), {"x": 1})
        assert wait_until(lambda: obs.lookup("a0") is not None)
        head = fresh_redis.command("HGET", f"{{{ns}}}:head", '"a0"')
        v = fresh_redis.command("INCR", f"{{{ns}}}:ver")
        fresh_redis.command(
            *("XADD", f"{{{ns}}}:log", "*", "v", v, "w", a.node, "op", "d", "k", '"a0"'),
            *("n", a.node, "why", "unregistered", "dr", "", "dc", "", "ds", "", "h", head),
        )
        assert wait_until(lambda: obs.lookup("a0") is None)  # heard unregistered
        assert a.wait_for_version(int(v))  # (A's tail read past it too)
        _gap(fresh_redis, ns)
        assert wait_until(lambda: obs.lookup("a0") is not None, timeout=15)
        assert not obs._holds.held
        a.register("marker", agents())
        assert heard.marked.wait(10)
        assert heard.of("a0") == [
            ("registered", None),
            ("unregistered", "unregistered"),
            ("registered", None),
        ]


def test_the_observer_reads_the_namespace_s_lease(
    fresh_redis: RedisServer, make_registry: MakeRegistry
) -> None:
    """The hold's time is two of the namespace's leases: the ``lease_ttl`` of the
    node that renewed last, read from Redis (``P:leases``, ``P:lastbeat``); the
    default lease (``HOLD_S / 2``) while no node has one."""
    ns = unique_namespace("ofo")
    with RedisObserver(fresh_redis.url, namespace=ns) as obs:
        assert obs._lease_s() == HOLD_S / 2
        a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=3.0)
        assert obs._lease_s() == 3.0
        a.close()
        assert obs._lease_s() == HOLD_S / 2


def test_an_update_of_a_held_entry_shows_it_with_the_new_metadata(failover: _Failover) -> None:
    """A held entry whose key an update record names (its owner says it lives):
    shown, told ``registered``, then ``updated`` to the record's metadata, as
    ``lookup`` returns it (a record written by hand on B while the node is
    frozen; the node's recovery then deletes its dead agent's entry as usual)."""
    fo, obs = failover, failover.observer
    _lose_a0s_death(fo)
    assert "a0" in obs._holds.held
    v = fo.new.command("INCR", f"{{{fo.ns}}}:ver")
    fo.new.command(
        *("XADD", f"{{{fo.ns}}}:log", "*", "v", v, "w", "by-hand", "op", "u"),
        *("k", '"a0"', "m", '{"x": 2}'),
    )
    assert wait_until(lambda: (e := obs.lookup("a0")) is not None and e.metadata == {"x": 2})
    assert not obs._holds.held
    _recover_on_b(fo)
    assert fo.heard.of("a0") == [
        ("registered", None),
        ("unregistered", "down"),
        ("registered", None),
        ("updated", None),
        ("unregistered", "down"),
    ]
