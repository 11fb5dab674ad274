"""A RedisRegistry node in its own OS process, driven over stdin/stdout JSON lines.

    python -m tests.redis.node_main URL NAMESPACE [LEASE_TTL] [STREAM_MAXLEN]

Prints ``{"ready": <node>}`` once the registry is up, then answers one JSON
line per command line. Keys travel as JSON (arrays become tuples). Agents
registered here are threads (``spawn_thread``) that run until ``kill_agent``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Hashable
from typing import Any

from foundation import errors
from foundation.liveness import spawn_thread
from foundation.registry import RegistryEvent
from foundation.registry._redis import RedisRegistry


def _key(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_key(x) for x in value)
    return value  # type: ignore[no-any-return]


_out_lock = threading.Lock()


def _out(obj: object) -> None:
    line = json.dumps(obj) + "\n"
    with _out_lock:  # the tail thread writes too (watch)
        sys.stdout.write(line)
        sys.stdout.flush()


def _entry(reg: RedisRegistry, key: Hashable) -> dict[str, Any] | None:
    e = reg.lookup(key)
    if e is None:
        return None
    return {"node": e.node, "metadata": dict(e.metadata), "local": e.node == reg.node}


def main(argv: list[str]) -> int:
    url, namespace = argv[0], argv[1]
    ttl = float(argv[2]) if len(argv) > 2 else 5.0
    maxlen = int(argv[3]) if len(argv) > 3 else 10_000
    reg = RedisRegistry(
        url, namespace=namespace, indexed=("role",), lease_ttl=ttl, stream_maxlen=maxlen
    )
    stops: dict[Hashable, threading.Event] = {}
    # Every event this node's listeners got, by (kind, reason): "events" reports them.
    events: dict[str, int] = {}
    event_log: list[list[Any]] = []
    events_lock = threading.Lock()

    def count(event: RegistryEvent) -> None:
        key = event.entry.key
        if isinstance(key, tuple) and key[:1] == ("churn",):
            return  # the churn traffic replaces its own keys on purpose
        with events_lock:
            name = f"{event.kind}:{event.reason}" if event.reason else event.kind
            events[name] = events.get(name, 0) + 1
            if len(event_log) < 10_000:
                event_log.append([event.kind, event.reason, json.dumps(key)])

    reg.subscribe(count)
    churn_stop = threading.Event()
    churn_errors: list[str] = []

    def churn() -> None:
        # Writes on this node all along (a fault scenario's traffic): only
        # Foundation errors are expected; anything else is recorded.
        stop = threading.Event()
        i = 0
        while not churn_stop.is_set():
            i += 1
            key = ("churn", i % 20)
            try:
                reg.register(key, spawn_thread(stop.wait), {"i": i}, replace=True)
                reg.update_metadata(key, {"i": -i})
            except errors.FoundationError:
                time.sleep(0.01)  # sleep-ok: pacing retries during an outage
            except BaseException as exc:
                churn_errors.append(repr(exc))
                return
        stop.set()

    _out({"ready": reg.node})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "register":
                key = _key(cmd["key"])
                stop = threading.Event()
                agent = spawn_thread(stop.wait, name=f"agent-{key}")
                try:
                    reg.register(key, agent, cmd.get("meta"), replace=cmd.get("replace", False))
                except BaseException:
                    stop.set()
                    raise
                stops[key] = stop
                _out({"ok": True, "written": reg.status().written})
            elif op == "lookup":
                _out({"ok": True, "entry": _entry(reg, _key(cmd["key"]))})
            elif op == "find":
                found = reg.find_by_attribute(cmd["attr"], cmd["value"])
                _out({"ok": True, "keys": sorted(json.dumps(e.key) for e in found)})
            elif op == "keys":
                _out({"ok": True, "keys": sorted(json.dumps(e.key) for e in reg.list_all())})
            elif op == "unregister":
                _out({"ok": True, "removed": reg.unregister(_key(cmd["key"]))})
            elif op == "kill_agent":
                stops.pop(_key(cmd["key"])).set()
                _out({"ok": True})
            elif op == "wait_version":
                _out({"ok": reg.wait_for_version(cmd["version"], cmd.get("timeout", 10.0))})
            elif op == "wait_keys":
                # Poll (with a deadline) until the mirror holds exactly these keys.
                want = sorted(json.dumps(_key(k)) for k in cmd["keys"])
                deadline = time.monotonic() + cmd.get("timeout", 10.0)
                while True:
                    have = sorted(json.dumps(e.key) for e in reg.list_all())
                    if have == want or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)  # sleep-ok: polling with a deadline
                _out({"ok": have == want, "keys": have})
            elif op == "watch":
                # From now on, print {"seen": key, "t": monotonic_ns} for every
                # registration this node's mirror applies (benchmarks: visibility).
                def seen(event: RegistryEvent) -> None:
                    if event.kind == "registered":
                        t = time.monotonic_ns()
                        _out({"seen": json.dumps(event.entry.key), "t": t})

                reg.subscribe(seen)
                _out({"ok": True})
            elif op == "status":
                st = reg.status()
                _out({"ok": True, "status": {f: getattr(st, f) for f in st.__dataclass_fields__}})
            elif op == "conflicts":
                # Poll (with a deadline) until at least ``count`` conflicts are reported.
                deadline = time.monotonic() + cmd.get("timeout", 10.0)
                while len(reg.conflicts()) < cmd.get("count", 0):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)  # sleep-ok: polling with a deadline
                _out({"ok": True, "keys": [json.dumps(c.key) for c in reg.conflicts()]})
            elif op == "update":
                reg.update_metadata(_key(cmd["key"]), cmd["meta"])
                _out({"ok": True, "written": reg.status().written})
            elif op == "events":
                with events_lock:
                    _out({"ok": True, "events": dict(events), "log": list(event_log)})
            elif op == "threads":
                names = [t.name for t in threading.enumerate() if reg.node in t.name]
                _out({"ok": True, "threads": sorted(names)})
            elif op == "churn":
                churn_stop.clear()
                threading.Thread(target=churn, name="node-churn", daemon=True).start()
                _out({"ok": True})
            elif op == "churn_stop":
                churn_stop.set()
                _out({"ok": True, "errors": churn_errors})
            elif op == "exit":
                reg.close()
                for stop in stops.values():
                    stop.set()
                _out({"ok": True})
                return 0
            else:
                _out({"ok": False, "error": f"unknown op {op!r}"})
        except errors.FoundationError as exc:
            _out({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
