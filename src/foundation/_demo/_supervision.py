"""Demo part 3: the application tree, crashed workers restarted and re-registered."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from foundation._demo._console import Console
from foundation._demo._interrupts import ctrl_c_deferred, finishing
from foundation._demo._scoreboard import Scoreboard
from foundation._demo._timing import wait_until
from foundation.application import AppConfig, Application
from foundation.supervision import ChildContext, ChildSpec

__all__ = ["run_supervision"]


def _worker(ctx: ChildContext, name: str, crashes: dict[str, threading.Event]) -> None:
    """A thread worker that serves until stopped, or crashes when asked to."""
    crash = crashes.setdefault(name, threading.Event())
    ctx.ready()
    while not ctx.stopping.wait(0.01):
        if crash.is_set():
            crash.clear()
            raise RuntimeError(f"{name}: simulated crash")


def run_supervision(console: Console, score: Scoreboard) -> None:
    """Start the tree, crash a thread worker and SIGKILL a process worker, then stop."""
    console.heading("3. Supervision: the application tree restarts what crashes")
    crashes: dict[str, threading.Event] = {}
    workers = [
        ChildSpec("ingest", _worker, args=("ingest", crashes), metadata={"role": "ingest"}),
        ChildSpec("scorer", _worker, args=("scorer", crashes), metadata={"role": "score"}),
        ChildSpec("sidecar", ["sleep", "300"], metadata={"role": "sidecar"}),
    ]
    started = time.perf_counter()
    # Config-as-code turns the shared table on: supervised workers are registered
    # from the supervisor's thread, which the per-thread legacy store would hide.
    config = AppConfig(indexed=("role",), flags={"use_ets_agent_registry": True})
    with _started_whole(lambda: Application.start(config, workers=workers)) as app:
        boot_ms = (time.perf_counter() - started) * 1000
        registry = app.registry
        assert registry is not None
        console.table(
            f"Application tree (started in order in {boot_ms:.0f} ms)",
            ["child", "kind", "status"],
            [[c.id, c.kind, c.status] for c in app.which_children()],
        )
        ready = wait_until(lambda: all(registry.lookup(w.id) for w in workers), timeout=10)
        score.check("supervised workers registered by name", ready, "")
        before: dict[str, Any] = {w.id: _agent(registry, w.id) for w in workers}

        kill_started = time.perf_counter()
        crashes["ingest"].set()
        sidecar = before["sidecar"]
        sidecar.send_signal(signal.SIGKILL)
        rows = []
        for child in ("ingest", "sidecar"):
            renewed = wait_until(_renewed(registry, child, before[child]), timeout=10)
            took = (time.perf_counter() - kill_started) * 1000
            score.check(f"{child} restarted and re-registered", renewed, "")
            rows.append([child, _describe(before[child]), _describe(_agent(registry, child)),
                         f"{took:.1f}"])  # fmt: skip
        console.table(
            "Crashed workers, restarted and re-registered (never a stale handle)",
            ["child", "old handle", "new handle", "re-registered after ms"],
            rows,
        )
        unchanged = _agent(registry, "scorer") is before["scorer"]
        score.check("one_for_one left the healthy worker alone", unchanged, "")
        found = registry.query([("role", "in", ["ingest", "sidecar"])])
        roles = sorted(str(e.metadata.get("role")) for e in found)
        score.check(
            "restarted workers keep their metadata", roles == ["ingest", "sidecar"], str(roles)
        )
    order = app.stopped_order
    expected = ["migration_monitor", "registry", "monitors", "flags"]
    score.check("services stopped in reverse start order", order == expected, " > ".join(order))
    console.say(f"stopped in order: {' > '.join(order)}")
    score.figure(
        "application start (flags, monitors, registry, migration, workers)", f"{boot_ms:.0f} ms"
    )


@contextlib.contextmanager
def _started_whole(start: Callable[[], Application]) -> Iterator[Application]:
    """Like ``with start():``, but a signal during the start or the stop waits for
    its end (cut in half, the tree's loop thread would be left with tasks pending)."""
    app: Application | None = None
    try:
        # Race: a signal held during the start is raised as it ends; raised
        # outside this try, it left the tree running (its sidecar process outlived
        # the demo): the start is inside, so the stop below runs for it too.
        with ctrl_c_deferred():
            app = start()
        yield app
    finally:
        with finishing():
            if app is not None:
                app.stop()


def _renewed(registry: Any, key: str, old: Any) -> Callable[[], bool]:
    """A predicate: ``key`` is registered again, to a different (new) handle."""
    return lambda: _agent(registry, key) not in (None, old)


def _agent(registry: Any, key: str) -> Any:
    entry = registry.lookup(key)
    return None if entry is None else entry.agent


def _describe(agent: Any) -> str:
    if agent is None:
        return "-"
    pid = getattr(agent, "pid", None)
    if pid is not None:
        return f"process {pid}"
    name = getattr(agent, "name", None)
    return f"thread {name}" if name else type(agent).__name__
