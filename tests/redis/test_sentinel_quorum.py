"""Redis Sentinel with three Sentinels (quorum 2): one killed, frozen, or all down.

Each scenario runs a real master, replica and three Sentinels
(``tests.redis_support.SentinelSet(sentinels=3)``) in a subprocess with the
interpreter's default hooks (``tests.faults._subprocess``), drives a registry
node and a flag store through the fault, and asserts what a user would see:
only ``foundation.errors`` exceptions, writes accepted by the master the
Sentinels name, and no library thread dead. Durations are printed
(``MEASURE``), never asserted; a hang fails the scenario's deadlines.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

# What every scenario shares: the clients, and the checks on their calls.
_COMMON = """
import itertools, tempfile
from pathlib import Path
from foundation import errors, spawn_thread
from foundation import _redis_sentinel as rs
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.registry._redis import RedisRegistry
from tests.redis_support import SentinelSet

NS = "quorum"
FLAGS = (Flag("beta"), Flag("gamma"))
WATCH = "foundation-redis-sentinel"
work = Path(tempfile.mkdtemp())
stop = threading.Event()
escaped = []  # anything but a Foundation error, from any call
seen = []     # the Foundation errors met, as text

def attempt(fn):
    try:
        fn()
        return True
    except errors.FoundationError as exc:
        seen.append(f"{type(exc).__name__}: {exc}")
        return False
    except Exception as exc:
        escaped.append(repr(exc))
        return False

def retry(fn, what, timeout=40.0):
    deadline = time.monotonic() + timeout
    while not attempt(fn):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}; last errors: {seen[-3:]}")
        time.sleep(0.02)  # sleep-ok: retrying a call with a deadline

def within(fn, what, timeout=30.0):
    # fn() on a thread of its own: a call that hangs fails here, with its name.
    out = []
    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as exc:
            out.append(("raised", exc))
    t = threading.Thread(target=run, name="within", daemon=True)
    began = time.monotonic()
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{what} hung"
    kind, value = out[0]
    if kind == "raised":
        raise value
    return value, time.monotonic() - began

def clients(url, node):
    reg = RedisRegistry(url, namespace=NS, node=node, op_timeout=0.5, lease_ttl=3.0)
    store = RedisFlagStore(
        url, namespace=NS, cache_path=work / f"{node}.sqlite3", timeout=0.5, resync_interval=0.5
    )
    return reg, store, FeatureFlags(FLAGS, store=store)

def watch_turns(rounds=3):
    # The watch thread is not stuck: it completes rounds.
    start = rs._MASTER_WATCH.rounds
    wait_for(lambda: rs._MASTER_WATCH.rounds >= start + rounds, "the watch to go on", 30)

def flag_lands(flags, server):
    # A flag write that reaches ``server``'s data (the master the Sentinels name).
    # 1..100 round and round: each write a change, never an invalid percentage
    # (a slow failover can take more than 100 writes to the old master first).
    start = int(flags.state("gamma").percentage or 0)
    percent = (1 + n % 100 for n in itertools.count(start))
    def lands():
        key = "{" + NS + "}:flags:meta"
        before = int(server.command("HGET", key, "version") or 0)
        attempt(lambda: flags.set_percentage("gamma", next(percent), by="t"))
        return int(server.command("HGET", key, "version") or 0) > before
    wait_for(lands, "a flag write on the new master", 40)

def close(*closing):
    for each in closing:
        each.close()

def check_survived(before, *stores):
    assert not escaped, escaped
    # The watch ends when no connection is left (checked where it matters).
    gone = before - set(library_threads()) - {WATCH}
    assert not gone, f"library threads gone: {gone}"
    assert all(s._thread.is_alive() for s in stores)
"""


_KILLED = """
with SentinelSet(sentinels=3) as s:
    s0, s1, s2 = s.all_sentinels
    s0.kill()  # before any client starts: the first Sentinel of the URL refuses
    reg, store, flags = clients(s.url, "a")
    agent = spawn_thread(stop.wait)
    reg.register("k0", agent)
    flags.enable("beta", by="t")
    assert reg.lookup("k0") is not None and flags.enabled("beta")
    s0.start()
    s.wait_settled()  # one Sentinel down at a time: quorum 2 of 3
    before = set(library_threads())

    s1.kill()  # while the clients run; s0 and s2 elect the Sentinel that fails over
    began = time.monotonic()
    new = s.kill_master(timeout=60.0)  # a split vote costs 2 x failover-timeout
    switched = time.monotonic()
    retry(lambda: reg.register("k1", agent), "a registration after the failover")
    registered = time.monotonic()
    flag_lands(flags, new)
    print(
        f"MEASURE killed_sentinel sentinel_switch={switched - began:.2f}s "
        f"first_register_accepted={registered - switched:.2f}s"
    )
    wait_for(lambda: all(reg.lookup(k) for k in ("k0", "k1")), "the registrations kept", 40)
    # A client started now (s1 still down) finds the new master.
    fresh, fresh_store, fresh_flags = clients(s.url, "b")
    wait_for(lambda: fresh.lookup("k1") is not None, "a new node sees the registrations", 40)
    assert fresh_flags.enabled("beta")
    watch_turns()
    check_survived(before, store)
    for closing in (fresh, fresh_store, reg, store):
        closing.close()
    stop.set()
    wait_for(lambda: WATCH not in library_threads(), "the Sentinel watch ends")
print("OK")
"""


@pytest.mark.timeout(240)  # the scenario's own deadline is 180 s
def test_one_sentinel_killed_before_the_clients_and_while_they_run() -> None:
    result = run_scenario(_COMMON + _KILLED, timeout=180)
    print("\n".join(result.lines("MEASURE")))


_FROZEN = """
# Failovers here are forced (SENTINEL FAILOVER): no down detection needed. A
# long down-after keeps the other Sentinels from dropping and reopening their
# links to a frozen one (after down-after / 2): the connections counted to it
# (SentinelSet.client_connections) are the clients' alone.
with SentinelSet(sentinels=3, down_after_ms=60_000) as s:
    s0, s1, s2 = s.all_sentinels
    s0.freeze()  # before any client starts: the first Sentinel of the URL hangs
    known = s.client_connections(s0)
    started = within(lambda: clients(s.url, "a"), "starting with a frozen Sentinel")
    (reg, store, flags), took = started
    tried = len(s.client_connections(s0) - known)
    print(f"MEASURE frozen_first_sentinel registry_and_store_started={took:.2f}s tried={tried}")
    # Its timeout was paid once, not by each client the registry and the store
    # opened (each has Sentinel clients of its own). Before: 4 connections.
    assert tried <= 1, tried
    agent = spawn_thread(stop.wait)
    reg.register("k0", agent)
    flags.enable("beta", by="t")
    before = set(library_threads())
    watch_turns()

    # A failover while s0 stays frozen: the clients follow it.
    new = s.failover()
    retry(lambda: reg.register("k1", agent), "a registration after the failover")
    flag_lands(flags, new)

    # While they run, freeze the Sentinel they now ask first (s1): their open
    # Sentinel connections hang. Only s2 answers; it forces the next failover
    # (SENTINEL FAILOVER needs no vote).
    s1.freeze()
    watch_turns()  # the watch passes the frozen Sentinels
    known0, known1 = s.client_connections(s0), s.client_connections(s1)
    _, took = within(lambda: close(*clients(s.url, "b")[:2]), "a client started with two frozen")
    tried = len(s.client_connections(s0) - known0), len(s.client_connections(s1) - known1)
    print(f"MEASURE two_frozen_sentinels new_registry_started={took:.2f}s tried={tried}")
    assert tried == (0, 0), tried  # known to hang: asked after s2 (before: 5 each)
    watch_turns()  # the watch passes the frozen Sentinels
    assert s.live_sentinel() is s2
    newer = s.failover()  # once s2 knows a healthy replica (the demoted master)
    began = time.monotonic()
    retry(lambda: reg.register("k2", agent), "a registration after the second failover")
    print(f"MEASURE two_frozen_sentinels first_register_accepted={time.monotonic() - began:.2f}s")
    flag_lands(flags, newer)
    _, took = within(lambda: reg.lookup("k0"), "a lookup with two frozen Sentinels")
    wait_for(lambda: all(reg.lookup(k) for k in ("k0", "k1", "k2")), "the registrations kept", 40)
    watch_turns()
    check_survived(before, store)
    for closing in (reg, store):
        closing.close()
    stop.set()
    wait_for(lambda: WATCH not in library_threads(), "the Sentinel watch ends")
print("OK")
"""


@pytest.mark.timeout(240)  # the scenario's own deadline is 180 s
def test_a_frozen_sentinel_costs_a_bounded_time_and_the_next_one_answers() -> None:
    result = run_scenario(_COMMON + _FROZEN, timeout=180)
    print("\n".join(result.lines("MEASURE")))


_ALL_DOWN = """
with SentinelSet(sentinels=3) as s:
    reg, store, flags = clients(s.url, "a")
    agent = spawn_thread(stop.wait)
    reg.register("k0", agent)
    flags.enable("beta", by="t")
    master = s.master
    before = set(library_threads())

    for sentinel in s.all_sentinels:
        sentinel.kill()
    # Connected clients go on: the Sentinels only name the master.
    retry(lambda: reg.register("k1", agent), "a registration on the open connection")
    # A new client cannot find the master: BackendUnavailable naming the Sentinels.
    seen.clear()
    assert not attempt(lambda: clients(s.url, "b"))
    assert "no Sentinel answered with a healthy master" in seen[0], seen[0]
    # Cut every connection: each call must ask the Sentinels again, and fails typed.
    master.command("CLIENT", "KILL", "TYPE", "normal")
    seen.clear()
    wait_for(
        lambda: not attempt(lambda: reg.register("k2", agent)) and "No master found" in seen[-1],
        "a registration refused for want of a Sentinel",
    )
    assert all(e.startswith("BackendUnavailable") for e in seen), seen
    assert flags.enabled("beta")  # the flag store answers from its copy
    # The watch may end here (no pool holds a live socket) or go on asking
    # while a pool still holds a socket the server closed and nobody has used
    # since (redis-py notices only on use): either is right. It must not die
    # (a death would show in stderr), and it runs again once the Sentinels are
    # back (below).

    # The Sentinels come back (with the configuration they wrote): all recovers.
    for sentinel in s.all_sentinels:
        sentinel.start()
    began = time.monotonic()
    retry(lambda: reg.register("k2", agent), "a registration once the Sentinels are back")
    print(f"MEASURE all_sentinels_back first_register_accepted={time.monotonic() - began:.2f}s")
    flag_lands(flags, master)
    wait_for(lambda: store.status().connected, "the flag store reconnects", 40)
    assert WATCH in library_threads()
    watch_turns()
    fresh, fresh_store, fresh_flags = clients(s.url, "b")
    wait_for(lambda: fresh.lookup("k2") is not None, "a new node sees the registrations", 40)
    assert fresh_flags.enabled("beta")
    check_survived(before, store)
    for closing in (fresh, fresh_store, reg, store):
        closing.close()
    stop.set()
    wait_for(lambda: WATCH not in library_threads(), "the Sentinel watch ends")
print("OK")
"""


@pytest.mark.timeout(240)  # the scenario's own deadline is 180 s
def test_all_sentinels_down_is_backend_unavailable_then_recovers() -> None:
    result = run_scenario(_COMMON + _ALL_DOWN, timeout=180)
    print("\n".join(result.lines("MEASURE")))
