"""``foundation agents watch`` under a ``CLIENT KILL`` loop says it flaps, once.

An operator's kill loop (or a flapping proxy) cuts the watch's connections
every fraction of a second while Redis answers; the observer is back within
milliseconds each time. Before, ``watch`` printed one stderr line per cut
(hundreds an hour, drowning the events). Now it uses the library's flap
damper (``foundation._flap``): the first cut as any outage, one "flapping"
line naming the cause, the next cuts counted silently, and one "steady again"
line with the count once connected ``FLAP_WINDOW`` s (10 s: the CLI has no
setting for it, so the test waits it out; about 20 s in all). The CLI runs as
a real subprocess against a redis-server of the test's own; a registry node in
another process registers agents during the loop, and their events still reach
stdout.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.cli._support import Running
from tests.cli.test_agents_cli import Node
from tests.redis_support import RedisServer

CUTS = 20
PACE = 0.3
"""Seconds between a reconnect and the next cut: an operator's loop's rhythm."""
DEADLINE = 45.0


@pytest.fixture
def namespace() -> str:
    return f"cli-flap-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def node(fresh_redis: RedisServer, namespace: str) -> Iterator[Node]:
    n = Node(fresh_redis.url, namespace)
    yield n
    n.close()


def _reading_tail(admin: redis.Redis, namespace: str, killed: set[int], run: Running) -> None:
    """Poll (with a deadline) until the watch's observer has a tail connection
    not yet killed blocked in XREAD: it has resynchronised, it is connected."""
    tail = f"foundation-observer-tail[{namespace}]"
    deadline = time.monotonic() + DEADLINE
    while not any(
        c["name"] == tail and int(c["id"]) not in killed and c["cmd"] == "xread"
        for c in admin.client_list()
    ):
        assert run.process.poll() is None, (run.stdout, run.stderr)
        assert time.monotonic() < deadline, f"the watch never reconnected; {run.stderr}"
        time.sleep(0.005)  # sleep-ok: the poll interval of a loop with a deadline


def _cut(admin: redis.Redis, namespace: str) -> set[int]:
    """Kill the watch's observer connections (both); their ids."""
    ours = (f"foundation-observer[{namespace}]", f"foundation-observer-tail[{namespace}]")
    ids = {int(c["id"]) for c in admin.client_list() if c["name"] in ours}
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return ids


def test_watch_under_a_kill_loop_says_it_flaps_once_then_steady(
    fresh_redis: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    where = ("--redis", fresh_redis.url, "--namespace", namespace)
    node.do(op="register", key="before", meta={})
    admin = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    watch = Running("--json", "agents", "watch", *where, cwd=tmp_path)
    registered = []
    try:
        watch.wait_for("watching ")
        killed: set[int] = set()
        for cut in range(CUTS):
            _reading_tail(admin, namespace, killed, watch)
            time.sleep(PACE)  # sleep-ok: the kill loop's rhythm, not a synchronisation
            killed |= _cut(admin, namespace)
            if cut % 5 == 2:  # a change made during the loop, by another node
                registered.append(f"during-{cut}")
                node.do(op="register", key=registered[-1], meta={})
        _reading_tail(admin, namespace, killed, watch)
        steady = watch.wait_for("steady again", timeout=DEADLINE)
        for key in registered:
            event = json.loads(watch.wait_for(f'"agent-{key}"', timeout=DEADLINE))
            assert (event["event"], event["key"]) == ("registered", key), event
        watch.send(signal.SIGTERM)
        assert watch.finish() == 0, (watch.stdout, watch.stderr)
    finally:
        watch.close()
        admin.close()
    said = [line for line in watch.stderr if line.startswith(f"registry {namespace!r} ")]
    # Bounded: the first cut (down and back, or one "between two checks" line),
    # the one flapping line, the steady line; not one line per cut.
    assert len(said) <= 4, watch.stderr
    assert said[-1] == steady, watch.stderr
    flapping = [line for line in said if " is flapping: " in line]
    assert len(flapping) == 1, watch.stderr
    assert "unreachable" in flapping[0], flapping  # the cause, the server's cut
    match = re.search(r"it flapped for [0-9.]+s, (\d+) cuts \(unreachable\), (\d+) of", steady)
    assert match is not None, steady
    # Cuts seen (several between two looks show as one): at least the two that
    # make a flap, at most the cuts made.
    assert 2 <= int(match.group(1)) <= CUTS, steady
    assert int(match.group(2)) == int(match.group(1)) - 2, steady
    assert watch.stderr[-1] == "foundation agents watch: terminated", watch.stderr
    assert not any("Traceback" in line for line in watch.stderr), watch.stderr
