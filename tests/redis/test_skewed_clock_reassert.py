"""A node whose wall clock runs ahead, frozen past its lease, must not take back
on thawing a key another node registered meanwhile (docs/redis.md, the row "a
node is frozen ... past lease_ttl": the other node keeps it).

Node Y runs in its own process with ``time.time`` a minute ahead (its heads'
times ``t`` with it; Redis and node X keep the real time). Y registers ``k``
(and ``kept``), is frozen (SIGSTOP) past its lease; X reaps it and registers
``k`` with a live agent; Y thaws and re-asserts. The re-assert orders the two
registrations of ``k`` to decide whether Y's may replace X's: by the nodes'
clocks, Y's (a minute ahead) looked the later and replaced X's live one. By the
server's order (the stream ids of the registration records), X's is the later:
X keeps ``k``, Y reports a conflict, and writes back ``kept``, which nobody took.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from foundation.registry import RegistryEvent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import ROOT, wait_until
from tests.redis_support import RedisServer

SKEW = 60.0  # Y's wall clock ahead of the real time, seconds

_NODE_Y = """
import json, sys, threading, time
_real = time.time
time.time = lambda: _real() + float(sys.argv[3])  # this node's wall clock runs ahead
from foundation import RedisRegistry, spawn_thread
stop = threading.Event()
reg = RedisRegistry(sys.argv[1], namespace=sys.argv[2], lease_ttl=1.0)
k, kept = spawn_thread(stop.wait), spawn_thread(stop.wait)
if sys.argv[4] == "register_many":
    assert reg.register_many([("k", k), ("kept", kept)]) == [None, None]
else:
    reg.register("k", k)
    reg.register("kept", kept)
print(json.dumps({"ready": reg.node, "written": reg.status().written}), flush=True)
for line in sys.stdin:
    if line.strip() != "report":
        break
    st = reg.status()
    print(json.dumps({
        "state": st.state,
        "recoveries": st.recoveries,
        "conflicts": [c.key for c in reg.conflicts()],
        "k": reg.lookup("k") and reg.lookup("k").node,
        "kept": reg.lookup("kept") and reg.lookup("kept").node,
        "alive": k.is_alive() and kept.is_alive(),
    }), flush=True)
reg.close()
stop.set()
"""


class _SkewedNode:
    """Node Y: a RedisRegistry in a child process whose ``time.time`` is ahead."""

    def __init__(self, url: str, namespace: str, how: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _NODE_Y, url, namespace, str(SKEW), how],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="skewed-node-reader").start()
        ready = self._next()
        self.node: str = ready["ready"]
        self.written: int = ready["written"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self) -> dict[str, Any]:
        line = self._lines.get(timeout=30)
        if line is None:
            raise RuntimeError(f"node Y exited ({self.proc.poll()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return self._next()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # Y closes its registry at EOF
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.parametrize("how", ["register", "register_many"])
def test_a_node_with_its_clock_ahead_does_not_take_back_a_key_registered_after_its_reap(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents: Any, how: str
) -> None:
    y = _SkewedNode(redis_server.url, ns, how)
    try:
        x = make_registry(lease_ttl=1.0)
        events: list[RegistryEvent] = []
        x.subscribe(events.append)
        assert x.wait_for_version(y.written)
        held = x.lookup("k")
        assert held is not None
        assert held.node == y.node
        y.proc.send_signal(signal.SIGSTOP)  # Y's heartbeat stops, its agents stay alive
        assert wait_until(lambda: x.lookup("k") is None, timeout=15), "X reaped Y"
        agent = agents()
        x.register("k", agent)  # the key is free: X takes it (with the real time)
        y.proc.send_signal(signal.SIGCONT)
        assert wait_until(
            lambda: (r := y.report())["state"] == "connected" and r["recoveries"] >= 1,
            timeout=20,
        ), "Y recovered (re-asserted) after thawing"
        report = y.report()
        # X keeps its live registration; Y reports the conflict and keeps its
        # agents alive, and writes back the key nobody took.
        raw = redis_server.command("HGET", f"{{{ns}}}:owner", '"k"')
        assert raw == x.node.encode(), (raw, report)
        assert report["conflicts"] == ["k"], report
        assert report["alive"] is True
        assert wait_until(lambda: (e := x.lookup("kept")) is not None and e.node == y.node)
        entry = x.lookup("k")
        assert entry is not None
        assert entry.agent is agent, entry
        assert wait_until(lambda: y.report()["k"] == x.node), y.report()
        replaced = [e for e in events if e.kind == "unregistered" and e.entry.agent is agent]
        assert replaced == [], replaced
    finally:
        y.close()
