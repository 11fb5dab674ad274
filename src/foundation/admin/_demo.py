"""``foundation demo --admin``: the admin page over a small live system, until Ctrl-C.

A SQLite flag store with the demo's flags and the default migration plan, a
registry of thread and OS-process agents with one agent killed every few
seconds (so the list and "recently dead" move), and a supervisor whose
recycling child ends now and then (so restart counts move).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from foundation._demo._interrupts import ctrl_c_deferred, finishing
from foundation.admin._server import AdminServer
from foundation.errors import FoundationError, InvalidConfig
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
)
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry
from foundation.supervision import ChildContext, ChildSpec, Supervisor

__all__ = ["serve_demo"]


def _process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )


async def _steady(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


async def _recycling(ctx: ChildContext) -> None:
    # Ends now and then; being permanent, it is restarted (its restart count moves).
    ctx.ready()
    await asyncio.sleep(random.uniform(8, 20))


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill and reap the churned agents' processes, closing their pipes."""
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


def _demo_flags(store: SQLiteFlagStore) -> FeatureFlags:
    """The demo's flags on ``store``: a canary at 20 % and an A/B/C split."""
    flags = FeatureFlags(
        [
            Flag("new_checkout", description="the 2026 checkout"),
            Flag("dark_mode", default=True, description="dark theme"),
            Flag(
                "checkout_button",
                variants={"green": "#1f7a44", "blue": "#2c5fd6", "orange": "#d66a2c"},
                default="green",
                description="colour of the pay button (an A/B/C test)",
            ),
            *DEFAULT_FLAGS,
        ],
        store=store,
    )
    try:
        flags.set_percentage("new_checkout", 20, by="demo", reason="canary")
        flags.set_split(
            "checkout_button", {"green": 50, "blue": 25, "orange": 25}, by="demo", reason="A/B/C"
        )
    except BaseException:
        flags.close()
        raise
    return flags


def _demo_tree() -> Supervisor:
    """A supervisor with a steady child, a recycling one and a nested supervisor."""
    return Supervisor(
        [
            ChildSpec("http", _steady),
            ChildSpec("indexer", _recycling),
            ChildSpec("jobs", Supervisor([ChildSpec("mailer", _steady)], name="jobs")),
        ],
        name="app",
        max_restarts=1000,
    )


def _churn(
    stop: threading.Event, procs: list[subprocess.Popen[bytes]], registry: MemoryRegistry
) -> None:
    """Keep a few OS-process agents alive, killing one every few seconds."""
    n = 0
    while not stop.wait(3.0):  # sleep-ok: the demo's pace, not synchronisation
        n += 1
        proc = _process()
        procs.append(proc)
        registry.register(f"batch-{n}", proc, {"role": "batch", "zone": f"eu-{n % 2}"})
        alive = [p for p in procs if p.poll() is None]
        if len(alive) > 2:
            alive[0].kill()


def serve_demo(bind: str, say: Callable[[str], None] = print) -> int:
    """Serve the admin page over a demo system until a signal stops it.

    Returns 1 if the page cannot be served. SIGINT and SIGTERM (whatever their
    handlers raise: ``KeyboardInterrupt``, ``foundation._cli._signals.Terminated``)
    propagate once the server, the supervisor, the agents' processes and the
    temporary directory are gone.
    """
    tmp: str | None = None
    try:
        with ctrl_c_deferred():  # a signal inside mkdtemp would lose the directory
            tmp = tempfile.mkdtemp(prefix="foundation-admin-demo-")
        return _serve_in(Path(tmp), bind, say)
    finally:
        with finishing():  # a signal during the removal waits for its end
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _serve_in(tmp: Path, bind: str, say: Callable[[str], None]) -> int:
    """``serve_demo`` in its temporary directory ``tmp``."""
    token = secrets.token_urlsafe(12)
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []
    store = SQLiteFlagStore(tmp / "flags.sqlite3")
    registry = MemoryRegistry()
    worker: threading.Thread | None = None
    flags: FeatureFlags | None = None
    # The server and the tree, stopped in the finally below (also on a signal).
    running = contextlib.ExitStack()
    try:
        flags = _demo_flags(store)
        migration = Migration(flags, MigrationPlan.default())
        sup = _demo_tree()

        for i in range(6):
            registry.register(
                f"api-{i}",
                spawn_thread(stop.wait, name=f"api-{i}"),
                {"role": "api", "zone": f"eu-{i % 2}"},
            )
        # A signal while the tree and the server start waits for their
        # start's end: cut in half, a started thread would not be stopped.
        with ctrl_c_deferred():
            handle = running.enter_context(sup.run_in_thread())
            try:
                server = AdminServer(
                    flags=flags,
                    migration=migration,
                    registry=registry,
                    supervisors=[handle],
                    token=f"demo:{token}",
                    bind=bind,
                ).start()
            except InvalidConfig as exc:
                say(f"admin page: {exc}")
                return 1
            running.callback(server.close)
        worker = threading.Thread(
            target=_churn, args=(stop, procs, registry), name="admin-demo-churn", daemon=True
        )
        worker.start()
        say(f"admin page: {server.url}  (token: {token})  Ctrl-C to stop")
        stop.wait()  # until a signal's exception (nothing else sets it)
    except FoundationError as exc:
        say(f"admin page: {exc}")
        return 1
    finally:
        # Also when a signal lands during the closes; a second Ctrl-C cuts them short.
        with finishing(cut_by_a_second_ctrl_c=True):
            try:
                running.close()
            except FoundationError as exc:  # the tree did not stop cleanly: said, not raised
                say(f"admin page: {exc}")
            stop.set()
            if worker is not None and worker.is_alive():
                worker.join(10)
            _reap(procs)
            registry.close()
            if flags is not None:
                flags.close()
            store.close()
    return 0
