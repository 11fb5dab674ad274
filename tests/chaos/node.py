"""One chaos node: a RedisRegistry, a FeatureFlags over a RedisFlagStore and a
Supervisor registering its children, in a process of its own (default hooks).

    python -m tests.chaos.node URL NAMESPACE NAME LEASE_TTL HEARTBEAT OP_TIMEOUT AGENTS

Prints ``{"ready": NAME}`` (or ``{"ready": null, "error": ...}``), then answers
one JSON line per command line on stdin. Keys are ``"<name>:agent:<i>"``,
``"<name>:probe:<n>"`` and ``"<name>:<child id>"`` for supervised children.
Its registry has a listener that always raises (subscribed before the
recording one). Every public call goes through a ``Recorder``; ``finish`` closes everything and
prints the final record (exceptions, library threads, listener events).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

from foundation.errors import NotRegistered
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.liveness import spawn_thread
from foundation.registry import RedisRegistry, RegistryEvent
from foundation.supervision import ChildContext, ChildSpec, Supervisor, SupervisorThread
from tests.chaos._harness import Recorder, library_threads, raising_listener, setup_logging

FLAGS = ("beta", "killable")
HEALTHY_CHILDREN = ("healthy_task", "healthy_thread")


class CrashOnPurpose(Exception):
    """The crasher child's deliberate crash."""


def _out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def _healthy_task(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


def _healthy_thread(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


def _crasher(ctx: ChildContext, trigger: threading.Event) -> None:
    ctx.ready()
    while not ctx.stopping.wait(0.02):
        if trigger.is_set():
            trigger.clear()
            raise CrashOnPurpose("the crasher child crashed on purpose")


class Node:
    def __init__(self, argv: list[str]) -> None:
        url, namespace, name = argv[0], argv[1], argv[2]
        ttl, beat, op_timeout, agents = float(argv[3]), float(argv[4]), float(argv[5]), int(argv[6])
        self.name = name
        self.rec = Recorder()
        self.events: Counter[str] = Counter()
        self.false_replaced: list[str] = []
        self.stops: dict[str, threading.Event] = {}
        self.probes = 0
        self.inconsistent: list[str] = []
        self.baseline: list[str] = []
        self.trigger = threading.Event()
        self.reg = RedisRegistry(
            url, namespace=namespace, lease_ttl=ttl, heartbeat=beat, node=name,
            op_timeout=op_timeout,
        )  # fmt: skip
        # A broken listener first: resyncs and re-asserts emit through it too.
        self.reg.subscribe(raising_listener)
        self.reg.subscribe(self._on_event)
        self.store = RedisFlagStore(url, namespace=namespace, timeout=op_timeout)
        self.flags = FeatureFlags([Flag(f) for f in FLAGS], store=self.store)
        for i in range(agents):
            self._register_agent(f"{name}:agent:{i}", {"i": i})
        specs = [
            ChildSpec("healthy_task", _healthy_task, register_as=f"{name}:healthy_task"),
            ChildSpec("healthy_thread", _healthy_thread, register_as=f"{name}:healthy_thread"),
            ChildSpec("crasher", _crasher, args=(self.trigger,), register_as=f"{name}:crasher"),
        ]
        sup = Supervisor(specs, registry=self.reg, max_restarts=3, max_seconds=10, name=name)
        self.sup: SupervisorThread = sup.run_in_thread()

    def _on_event(self, event: RegistryEvent) -> None:
        self.events[f"{event.kind}:{event.reason}"] += 1
        key = event.entry.key
        # Agent keys are never registered with replace=True: "replaced" is false news.
        if event.reason == "replaced" and isinstance(key, str) and ":agent:" in key:
            self.false_replaced.append(key)

    def _register_agent(self, key: str, meta: dict[str, Any]) -> bool:
        stop = threading.Event()
        agent = spawn_thread(stop.wait, name=f"agent-{key}")
        ok, _ = self.rec.call(f"register {key}", self.reg.register, key, agent, meta)
        if ok:
            self.stops[key] = stop
        else:
            stop.set()  # the outcome is unknown: make sure it is a dead agent
        return ok

    # ------------------------------------------------------------------ commands

    def entries(self) -> dict[str, Any]:
        _, found = self.rec.call("list_all", self.reg.list_all)
        return {str(e.key): {"node": e.node, "meta": dict(e.metadata)} for e in (found or [])}

    def own_live(self) -> list[str]:
        keys = list(self.stops)
        keys += [f"{self.name}:{c}" for c in ("healthy_task", "healthy_thread", "crasher")]
        return sorted(keys)

    def children(self) -> dict[str, Any]:
        _, infos = self.rec.call("which_children", self.sup.which_children)
        return {c.id: {"status": c.status, "restarts": c.restarts} for c in infos or []}

    def flag_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for f in FLAGS:
            _, on = self.rec.call(f"enabled {f}", self.flags.enabled, f)
            _, hist = self.rec.call(f"history {f}", self.flags.history, f)
            view[f] = {"enabled": on, "history": len(hist or [])}
        return view

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "mark":
            self.baseline = library_threads()
            return {"threads": self.baseline}
        if op == "entries":
            return {"entries": self.entries(), "own_live": self.own_live()}
        if op == "flags":
            return {"flags": self.flag_view()}
        if op in ("enable", "disable"):
            started = time.monotonic()
            ok, _ = self.rec.call(f"{op} {cmd['flag']}", getattr(self.flags, op), cmd["flag"])
            _, now = self.rec.call(f"enabled {cmd['flag']}", self.flags.enabled, cmd["flag"])
            return {"ok": ok, "enabled": now, "seconds": time.monotonic() - started}
        if op == "kill_agent":
            key = cmd["key"]
            stop = self.stops.pop(key)
            stop.set()
            return {"killed": key}
        if op == "crash":
            self.trigger.set()
            return {"crashed": True}
        if op == "probe":
            return self.probe()
        if op == "status":
            _, st = self.rec.call("status", self.reg.status)
            return {
                "connected": getattr(st, "connected", None),
                "last_error": getattr(st, "last_error", None),
                "status": repr(st),
            }
        if op == "finish":
            return self.finish()
        raise ValueError(f"unknown op {op!r}")

    def probe(self) -> dict[str, Any]:
        """Writes during a fault: register a new agent, update a live one's metadata."""
        self.probes += 1
        n = self.probes
        started = time.monotonic()
        registered = self._register_agent(f"{self.name}:probe:{n}", {"probe": n})
        key = f"{self.name}:agent:1"
        present = self.reg.lookup(key) is not None
        try:
            self.reg.update_metadata(key, {"i": 1, "probe": n})
            updated = True
        except NotRegistered as exc:
            self.rec.record(f"update_metadata {key}", exc)
            updated = False
            if present:  # issue 9 item 3: lookup and update_metadata disagree
                self.inconsistent.append(f"{key}: lookup found it, update_metadata said {exc}")
        except Exception as exc:
            self.rec.record(f"update_metadata {key}", exc)
            updated = False
        return {
            "registered": registered,
            "updated": updated,
            "seconds": time.monotonic() - started,
        }

    def finish(self) -> dict[str, Any]:
        final_threads = library_threads()
        children = self.children()
        state = self.sup.supervisor.state
        self.rec.call("supervisor stop", self.sup.stop)
        self.rec.call("flags close", self.flags.close)
        self.rec.call("store close", self.store.close)
        self.rec.call("registry close", self.reg.close)
        for stop in self.stops.values():
            stop.set()
        return {
            "baseline_threads": self.baseline,
            "final_threads": final_threads,
            "children": children,
            "supervisor_state": state,
            "exceptions": self.rec.exceptions,
            "events": dict(self.events),
            "false_replaced": self.false_replaced,
            "inconsistent": self.inconsistent,
        }


def main(argv: list[str]) -> int:
    setup_logging()
    try:
        node = Node(argv)
    except Exception as exc:
        _out({"ready": None, "error": "".join(traceback.format_exception(exc))})
        return 1
    _out({"ready": node.name})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = node.handle(cmd)
        except Exception as exc:  # a defect of this harness, not of the library
            reply = {"harness_error": "".join(traceback.format_exception(exc))}
        _out(reply)
        if cmd["op"] == "finish":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
