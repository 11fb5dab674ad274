"""Redis fault scenarios: two node processes, one redis-server, one fault.

    python -m tests.chaos.scenarios SCENARIO

Runs two :mod:`tests.chaos.node` processes ("a" and "b", each a RedisRegistry,
a FeatureFlags over a RedisFlagStore and a Supervisor with a RedisRegistry)
against a redis-server of its own, injects one fault, heals it, and prints one
``CHAOS-RESULT {json}`` line of raw facts; ``test_chaos.py`` judges them.

Scenarios (``SCENARIOS``): ``kill_restart_empty`` (SIGKILL, then a new empty
server on the same port), ``freeze_redis`` (SIGSTOP/SIGCONT), ``read_only_replica``
(``REPLICAOF`` a dead port, then ``REPLICAOF NO ONE``), ``client_pause``,
``debug_sleep``, ``oom`` (``maxmemory 1``), and ``node_frozen_past_lease``, which
SIGSTOPs node b's process instead: node a reaps b's lease, then b is thawed and
must re-assert everything (only node a acts during that fault).

Every scenario follows the same script:

1. setup: agents registered on both nodes; ``beta`` and ``killable`` enabled
   on node a; both nodes agree (bounded by ``SETTLE_BOUND``); library threads
   marked on each node;
2. fault, lasting ``FAULT_SECONDS`` (longer than ``LEASE_TTL``, so leases lapse);
   meanwhile node a's agent 0 and node b's agent 0 die, node a's supervised
   ``crasher`` child crashes (its re-registration meets the fault), node a
   pulls the kill switch (``disable("killable")``), and both nodes try writes
   (register a new agent, update a live one's metadata);
3. heal, then poll until every node lists exactly every live agent of every
   node with its owner's current metadata, and every node sees ``beta`` on and
   ``killable`` off. The stated bound: ``RECOVERY_BOUND`` = ``LEASE_TTL`` + 5 s
   = 7 s after the fault is healed. A lease later, nothing dead has come back;
4. finish: each node reports its exceptions, library threads, children,
   listener events, and its stderr is collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from foundation._demo._redis_server import RedisServerProcess
from tests.chaos._harness import emit_result

LEASE_TTL: Final = 2.0
"""Lease of every node (seconds): short, so a fault outlasts it."""
HEARTBEAT: Final = 0.5
OP_TIMEOUT: Final = 0.5
"""Bound on each Redis call of the nodes (``op_timeout`` / ``timeout``)."""
AGENTS: Final = 4
FAULT_SECONDS: Final = LEASE_TTL + 1.5
"""How long each fault lasts: past the lease."""
RECOVERY_BOUND: Final = LEASE_TTL + 5.0
"""After the fault is healed, every node must list every live agent within this (s)."""
SETTLE_BOUND: Final = 10.0
COMMAND_TIMEOUT: Final = 30.0
NODES: Final = ("a", "b")
REPO: Final = Path(__file__).resolve().parents[2]


class NodeHung(Exception):
    """A node process did not answer a command in time (or died)."""


class NodeProcess:
    def __init__(self, url: str, namespace: str, name: str, cache_dir: Path) -> None:
        self.name = name
        # Each node keeps its RedisFlagStore copy in a directory of its own (as on
        # separate machines), never in the user's ~/.cache.
        env = {**os.environ, "FOUNDATION_CACHE_DIR": str(cache_dir)}
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.chaos.node", url, namespace, name,
                str(LEASE_TTL), str(HEARTBEAT), str(OP_TIMEOUT), str(AGENTS),
            ],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, env=env,
        )  # fmt: skip
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, name=f"chaos-read-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def reply(self, timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise NodeHung(f"node {self.name} did not answer within {timeout:g}s") from None
        if line is None:
            raise NodeHung(f"node {self.name} exited with {self.proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if "harness_error" in reply:
            raise RuntimeError(f"node {self.name}: {reply['harness_error']}")
        return reply

    def cmd(self, op: str, timeout: float = COMMAND_TIMEOUT, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise NodeHung(f"node {self.name} is gone: {exc}") from exc
        return self.reply(timeout)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def close_input(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait(self) -> int:
        """Let the node exit (it does after ``finish`` or end of input), else kill it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case it is still frozen
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


Nodes = dict[str, NodeProcess]


def converged(nodes: Nodes, *, flags: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(registry mismatches, flag mismatches) over every node, now."""
    views = {n: node.cmd("entries") for n, node in nodes.items()}
    expected: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for n, view in views.items():
        for key in view["own_live"]:
            own = view["entries"].get(key)
            if own is None or own["node"] != n:
                problems.append(f"{n} does not list its own live {key}")
            expected[key] = {"node": n, "meta": None if own is None else own["meta"]}
    for n, view in views.items():
        got = view["entries"]
        for key, exp in expected.items():
            entry = got.get(key)
            if entry is None:
                if exp["node"] != n:
                    problems.append(f"{n} does not list {exp['node']}'s live {key}")
            elif entry["node"] != exp["node"]:
                problems.append(f"{n} says {key} is on {entry['node']}, not {exp['node']}")
            elif exp["meta"] is not None and entry["meta"] != exp["meta"]:
                problems.append(f"{n} has metadata {entry['meta']} for {key}, owner {exp['meta']}")
        problems += [f"{n} lists {key}, which is dead" for key in sorted(got.keys() - expected)]
    flag_problems: list[str] = []
    for n, node in nodes.items():
        view = node.cmd("flags")["flags"]
        for flag, want in flags.items():
            if view[flag]["enabled"] is not want:
                flag_problems.append(f"{n}: {flag} enabled={view[flag]['enabled']}, want {want}")
            if view[flag]["history"] == 0:
                flag_problems.append(f"{n}: history({flag!r}) is empty")
    return problems, flag_problems


def poll(nodes: Nodes, bound: float, flags: dict[str, bool]) -> dict[str, Any]:
    """Poll until the registry, then the flags, agree everywhere, within ``bound``."""
    started = time.monotonic()
    out: dict[str, Any] = {"registry_seconds": None, "flags_seconds": None}
    while True:
        registry, flag_problems = converged(nodes, flags=flags)
        elapsed = time.monotonic() - started
        if not registry and out["registry_seconds"] is None:
            out["registry_seconds"] = elapsed
        if not flag_problems and out["flags_seconds"] is None:
            out["flags_seconds"] = elapsed
        out["registry_problems"], out["flag_problems"] = registry, flag_problems
        if (not registry and not flag_problems) or elapsed > bound:
            return out
        time.sleep(0.05)  # sleep-ok: polling the nodes' views with a deadline


def during_fault(nodes: Nodes, during: dict[str, Any]) -> None:
    """What happens while the fault lasts (node b only if it is not frozen)."""
    live = [n for n in NODES if n in nodes and not during.get(f"{n}_frozen")]
    for n in live:
        nodes[n].cmd("kill_agent", key=f"{n}:agent:0")
    nodes["a"].cmd("crash")
    during["disable_killable_on_a"] = nodes["a"].cmd("disable", flag="killable")
    for n in live:
        during[f"probe_{n}"] = nodes[n].cmd("probe")
        during[f"status_{n}"] = nodes[n].cmd("status")


def hold(since: float) -> None:
    left = FAULT_SECONDS - (time.monotonic() - since)
    if left > 0:
        time.sleep(left)  # sleep-ok: the fault lasts FAULT_SECONDS on purpose


def redis_fault(
    inject: Callable[[RedisServerProcess], Any], heal: Callable[[RedisServerProcess, Any], None]
) -> Callable[[RedisServerProcess, Nodes, dict[str, Any]], None]:
    def run(server: RedisServerProcess, nodes: Nodes, during: dict[str, Any]) -> None:
        started = time.monotonic()
        token = inject(server)
        try:
            during_fault(nodes, during)
            hold(started)
        finally:
            heal(server, token)
        during["fault_seconds"] = time.monotonic() - started

    return run


def node_frozen(server: RedisServerProcess, nodes: Nodes, during: dict[str, Any]) -> None:
    """Node b is SIGSTOPped past its lease (node a reaps it), then SIGCONT."""
    started = time.monotonic()
    b = nodes["b"].proc
    os.kill(b.pid, signal.SIGSTOP)
    during["b_frozen"] = True
    try:
        during_fault(nodes, during)
        hold(started)
        # Wait (bounded) for node a to reap b's lease: the point of the scenario.
        deadline = time.monotonic() + LEASE_TTL + 5.0
        while time.monotonic() < deadline:
            entries = nodes["a"].cmd("entries")["entries"]
            if not any(e["node"] == "b" for e in entries.values()):
                during["b_reaped_by_a"] = True
                break
            time.sleep(0.05)  # sleep-ok: polling node a's view with a deadline
    finally:
        os.kill(b.pid, signal.SIGCONT)
    during["fault_seconds"] = time.monotonic() - started


def _restart(server: RedisServerProcess, _: object) -> None:
    server.start()


def _join_sleep(server: RedisServerProcess, thread: threading.Thread) -> None:
    thread.join(timeout=FAULT_SECONDS + 30)


SCENARIOS: dict[str, Callable[[RedisServerProcess, Nodes, dict[str, Any]], None]] = {
    "kill_restart_empty": redis_fault(lambda s: s.kill(), _restart),
    "freeze_redis": redis_fault(lambda s: s.freeze(), lambda s, _: s.thaw()),
    "read_only_replica": redis_fault(lambda s: s.make_read_only(), lambda s, _: s.make_writable()),
    "client_pause": redis_fault(
        lambda s: s.pause_clients(int(FAULT_SECONDS * 1000)), lambda s, _: None
    ),
    "debug_sleep": redis_fault(lambda s: s.debug_sleep(FAULT_SECONDS), _join_sleep),
    "oom": redis_fault(lambda s: s.oom_on(), lambda s, _: s.oom_off()),
    "node_frozen_past_lease": node_frozen,
}


def run(scenario: str) -> dict[str, Any]:
    fault = SCENARIOS[scenario]
    result: dict[str, Any] = {
        "scenario": scenario,
        "recovery_bound": RECOVERY_BOUND,
        "problems": [],
        "during": {},
        "nodes": {},
    }
    nodes: Nodes = {}
    with (
        RedisServerProcess() as server,
        tempfile.TemporaryDirectory(prefix="foundation-chaos-") as tmp,
    ):
        namespace = f"chaos-{scenario}-{secrets.token_hex(3)}"
        try:
            nodes = {n: NodeProcess(server.url, namespace, n, Path(tmp) / n) for n in NODES}
            for n, node in nodes.items():
                ready = node.reply()
                if ready.get("ready") != n:
                    raise NodeHung(f"node {n} did not start: {ready.get('error')}")
            nodes["a"].cmd("enable", flag="beta")
            nodes["a"].cmd("enable", flag="killable")
            settled = poll(nodes, SETTLE_BOUND, {"beta": True, "killable": True})
            if settled["registry_problems"] or settled["flag_problems"]:
                result["problems"].append(f"setup did not converge: {settled}")
            for node in nodes.values():
                node.cmd("mark")
            fault(server, nodes, result["during"])
            healed = time.monotonic()
            result["recovery"] = poll(nodes, RECOVERY_BOUND, {"beta": True, "killable": False})
            result["recovery"]["polled_seconds"] = time.monotonic() - healed
            # A dead agent must not come back later either: one more look after a lease.
            time.sleep(LEASE_TTL)  # sleep-ok: give a wrongly re-asserted entry time to return
            late, late_flags = converged(nodes, flags={"beta": True, "killable": False})
            result["late_problems"] = late + late_flags
            for n, node in nodes.items():
                result["nodes"][n] = {"final": node.cmd("finish")}
        except (NodeHung, RuntimeError, OSError, KeyError) as exc:
            result["problems"].append(f"{type(exc).__name__}: {exc}")
        finally:
            for n, node in nodes.items():
                node.close_input()
                result["nodes"].setdefault(n, {})
                result["nodes"][n]["exit_code"] = node.wait()
                result["nodes"][n]["stderr"] = node.stderr()
                node.close()
    return result


def main(argv: list[str]) -> int:
    emit_result(run(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
