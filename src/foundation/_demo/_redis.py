"""Demo part 4 (``--redis URL``): two nodes sharing one Redis registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from foundation import _redis_conn
from foundation._demo._console import Console
from foundation._demo._interrupts import finishing
from foundation._demo._released import release_and_join
from foundation._demo._scoreboard import Scoreboard
from foundation._demo._timing import percentile, wait_until
from foundation.errors import AlreadyRegistered, BackendUnavailable
from foundation.liveness import spawn_thread
from foundation.registry import RedisRegistry

__all__ = ["run_redis"]


def _visible(node: RedisRegistry, key: str) -> Callable[[], bool]:
    return lambda: node.lookup(key) is not None


def run_redis(
    console: Console, score: Scoreboard, *, url: str, namespace: str, agents: int = 100
) -> None:
    """Node A registers agents; node B sees them, is refused duplicates, sees deaths."""
    console.heading("4. Two nodes on Redis")
    releases: list[threading.Event] = []
    threads: list[threading.Thread] = []
    nodes: list[RedisRegistry] = []
    try:
        for name in ("node-a", "node-b"):
            nodes.append(RedisRegistry(url, namespace=namespace, indexed=("role",), node=name))
        _two_nodes(console, score, nodes, releases, threads=threads, agents=agents)
    finally:
        # Also on a signal, and whatever signal lands during it (SIGTERM after a
        # Ctrl-C, or at the part's end): the cleanup runs to its end, bounded by
        # the closes' op timeouts; a second Ctrl-C cuts it short, and says so.
        with finishing(cut_by_a_second_ctrl_c=True):
            try:
                for node in reversed(nodes):
                    node.close()
                # The agents' threads end, and are waited for: a second Ctrl-C
                # then exits at once, and a hundred threads still waking while
                # the interpreter finalises may crash it (SIGSEGV: _released).
                # Cut short in the closes, they stay parked on their events.
                release_and_join(releases, threads)
                _drop_namespace(console, url, namespace)
            except KeyboardInterrupt:
                console.say(f"  (the demo's keys {_pattern(namespace)} stay in Redis: interrupted)")
                raise


def _two_nodes(
    console: Console,
    score: Scoreboard,
    nodes: list[RedisRegistry],
    releases: list[threading.Event],
    *,
    threads: list[threading.Thread],
    agents: int,
) -> None:
    """The part's checks: node A's agents seen, refused and dead on node B
    (each agent's thread listed in ``threads``, its event in ``releases``)."""
    node_a, node_b = nodes
    visible_ms: list[float] = []
    for i in range(agents):
        release = threading.Event()
        releases.append(release)
        key = f"agent-{i}"
        started = time.perf_counter()
        threads.append(spawn_thread(release.wait))
        node_a.register(key, threads[-1], {"role": "crawler" if i % 2 else "parser"})
        if wait_until(_visible(node_b, key), timeout=5, interval=0.0002):
            visible_ms.append((time.perf_counter() - started) * 1000)
    score.check("every write on node A is visible on node B", len(visible_ms) == agents, "")
    crawlers = len(node_b.find_by_attribute("role", "crawler"))
    score.check("node B answers index queries", crawlers == agents // 2, f"{crawlers}")
    try:
        threads.append(spawn_thread(releases[0].wait))
        node_b.register("agent-0", threads[-1])
        refused = False
    except AlreadyRegistered:
        refused = True
    score.check("a duplicate key is refused across nodes", refused, "")
    releases[1].set()  # agent-1 dies on node A
    gone = wait_until(lambda: node_b.lookup("agent-1") is None, timeout=5)
    score.check("a death on node A disappears on node B", gone, "")
    console.table(
        "Node A -> node B",
        ["agents", "visible p50 ms", "visible p99 ms", "crawlers seen by B"],
        [
            [
                agents,
                f"{percentile(visible_ms, 50):.2f}",
                f"{percentile(visible_ms, 99):.2f}",
                crawlers,
            ]
        ],
    )
    score.figure("redis: write on A visible on B p99", f"{percentile(visible_ms, 99):.2f} ms")


def _drop_namespace(console: Console, url: str, namespace: str) -> None:
    """Delete part 4's keys once both nodes closed: the demo leaves nothing in the
    user's Redis (its namespace is new each run, so every key under it is ours;
    a closed registry leaves ``lastbeat``, ``log``, ``ver``... for nodes to come).
    A Redis gone by now costs one line: the keys are all under ``{namespace}:``."""
    pattern = _pattern(namespace)
    console.say(f"  removing the demo's keys {pattern} from Redis")
    try:
        client = _redis_conn.connect(url, op_timeout=2.0, name="foundation-demo-cleanup")
        try:
            with _redis_conn.translated(_redis_conn.redact_url(url), "removing the demo's keys"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()
    except BackendUnavailable as exc:
        console.say(f"  (the demo's keys {pattern} stay in Redis: {exc})")


def _pattern(namespace: str) -> str:
    """Every key of part 4 (braces are plain characters to Redis's glob)."""
    return "{" + namespace + "}:*"
