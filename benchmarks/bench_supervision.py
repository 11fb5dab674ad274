"""Supervision benchmarks: crash -> restarted-and-ready latency, dynamic children.

python -m benchmarks supervision

Side by side, in one run, with aiomisc where it has an equivalent:

- crash -> restarted-and-ready latency (p50/p99) of a task, a thread and a
  process child. The clock starts when the crash is triggered (the child is
  told to raise; a process is SIGKILLed) and stops when the supervisor has
  the new run ready (``supervisor.child_restarted`` telemetry, emitted once
  the restarted child called ``ctx.ready()``). aiomisc respawns processes only
  (``RespawningProcessService``, by polling ``is_alive``: its poll interval is
  set to 20 ms here, its default is 5 s); a crashed aiomisc ``Service`` task
  is not restarted, and it has no thread services, so those rows say so.
- 10,000 dynamic task children started one at a time (each ready before the
  next), then all stopped: children per second, against aiomisc's
  ``Entrypoint.start_services``/``stop_services`` over ``TaskStoreBase``
  services (start creates the task, stop cancels it).

Reports are silenced during the runs (``foundation.supervision`` and aiomisc
loggers at CRITICAL): the figures are the supervision, not the log handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._harness import Row
from foundation import telemetry
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor

SECTION = "supervision"
DYNAMIC_CHILDREN = 10_000
AIOMISC_POLL = 0.02  # seconds between aiomisc's is_alive polls (default: 5 s)


class Crash(Exception):
    """What a benchmark child raises when told to."""


class _Box:
    """The current run's crash trigger (replaced before each crash)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.crash = make()


async def _task_child(ctx: ChildContext, box: _Box) -> None:
    crash = box.crash  # before ready(): the driver replaces it once we are ready
    ctx.ready()
    await crash.wait()
    raise Crash


def _thread_child(ctx: ChildContext, box: _Box) -> None:
    crash = box.crash  # before ready(): the driver replaces it once we are ready
    ctx.ready()
    while not crash.wait(0.05):  # returns at once when set: the latency is not the poll's
        if ctx.should_stop():
            return
    raise Crash


def _process_child(ctx: Any) -> None:
    ctx.ready()
    threading.Event().wait()


async def _serve(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("foundation.supervision", "aiomisc")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- ours: restarts


async def _restart_latencies(kind: str, samples: int) -> list[float]:
    """Seconds from crash to restarted-and-ready, ``samples`` times, for one kind."""
    loop = asyncio.get_running_loop()
    restarted: list[asyncio.Future[tuple[float, Any]]] = []

    def on_restart(_name: str, data: Any) -> None:  # on the supervisor's loop
        now = time.perf_counter()
        if restarted and not restarted[-1].done():
            restarted[-1].set_result((now, data["handle"]))

    box: _Box | None = None
    if kind == "task":
        box = _Box(asyncio.Event)
        spec = ChildSpec("c", _task_child, args=(box,))
    elif kind == "thread":
        box = _Box(threading.Event)
        spec = ChildSpec("c", _thread_child, args=(box,), kind="thread")
    else:
        spec = ChildSpec("c", _process_child, kind="process", ready_timeout=60)
    detach = telemetry.attach("supervisor.child_restarted", on_restart)
    latencies: list[float] = []
    try:
        async with Supervisor([spec], max_restarts=10**9, max_seconds=1.0) as sup:
            handle = sup.which_children()[0].handle
            for _ in range(samples):
                restarted.append(loop.create_future())
                t0 = time.perf_counter()
                if box is not None:
                    old, box.crash = box.crash, box.make()
                    old.set()
                else:
                    os.kill(handle.pid, signal.SIGKILL)
                t1, handle = await asyncio.wait_for(restarted[-1], 60)
                latencies.append(t1 - t0)
    finally:
        detach()
    return latencies


# --------------------------------------------------------------------------- aiomisc: restarts


def _aiomisc_in_process() -> None:
    threading.Event().wait()


async def _aiomisc_restart_latencies(samples: int) -> list[float]:
    """Seconds from SIGKILL to respawned-and-started, aiomisc RespawningProcessService."""
    from aiomisc import Entrypoint
    from aiomisc.service import RespawningProcessService
    from aiomisc_log import LOG_FORMAT, LogFormat

    # aiomisc 18 reads LOG_FORMAT.get().value, but its default is a str unless
    # its logging setup ran (log_config=False here): set the enum it expects.
    LOG_FORMAT.set(LogFormat.plain)
    loop = asyncio.get_running_loop()
    started: list[asyncio.Future[float]] = []

    class Child(RespawningProcessService):
        process_poll_timeout = AIOMISC_POLL  # type: ignore[assignment]

        def in_process(self) -> None:
            _aiomisc_in_process()

        def __setattr__(self, key: str, value: Any) -> None:
            super().__setattr__(key, value)
            # aiomisc sets .process once the child signalled its start event.
            if key == "process" and started and not started[-1].done():
                now = time.perf_counter()
                loop.call_soon_threadsafe(_resolve, started[-1], now)

    svc = Child()
    latencies: list[float] = []
    async with Entrypoint(svc, log_config=False, catch_signals=()):
        for _ in range(samples):
            started.append(loop.create_future())
            pid = svc.process.pid
            assert pid is not None
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            t1 = await asyncio.wait_for(started[-1], 60)
            latencies.append(t1 - t0)
    return latencies


def _resolve(fut: asyncio.Future[float], value: float) -> None:
    if not fut.done():
        fut.set_result(value)


# --------------------------------------------------------------------------- dynamic children


async def _ours_dynamic(n: int) -> float:
    """Seconds to start ``n`` dynamic task children one at a time, then stop them all."""
    sup = DynamicSupervisor(ChildSpec("agent", _serve), name="bench-dynamic")
    await sup.start()
    t0 = time.perf_counter()
    for _ in range(n):
        await sup.start_child()
    await sup.stop()
    return time.perf_counter() - t0


async def _aiomisc_dynamic(n: int) -> float:
    from aiomisc import Entrypoint
    from aiomisc.service.base import TaskStoreBase

    class Agent(TaskStoreBase):
        async def start(self) -> None:
            self.create_task(asyncio.Event().wait())

    async with Entrypoint(log_config=False, catch_signals=()) as ep:
        t0 = time.perf_counter()
        services = []
        for _ in range(n):
            svc = Agent()
            await ep.start_services(svc)
            services.append(svc)
        await ep.stop_services(*services)
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- rows


def _have_aiomisc() -> bool:
    try:
        import aiomisc  # noqa: F401
    except ImportError:
        return False
    return True


def _latency_rows(kind: str, ours: list[float], theirs: list[float] | None, note: str) -> list[Row]:
    rows = []
    for label, q in (("p50", 0.50), ("p99", 0.99)):
        mine = _percentile(ours, q)
        detail = f"{len(ours)} samples; "
        if theirs is None:
            detail += note
        else:
            other = _percentile(theirs, q)
            detail += (
                f"aiomisc {other * 1e3:.2f} ms ({len(theirs)} samples), "
                f"ratio {mine / other:.2f}x; {note}"
            )
        rows.append(
            Row(SECTION, f"crash -> restarted and ready, {kind} child, {label}",
                "crash -> child_restarted", mine * 1e3, " ms", "info", None, detail)
        )  # fmt: skip
    return rows


def run() -> list[Row]:
    with _quiet():
        return asyncio.run(_run())


async def _run() -> list[Row]:
    rows: list[Row] = []
    aiomisc = _have_aiomisc()
    missing = "aiomisc not installed (pip install aiomisc): no comparison"

    await _restart_latencies("task", 20)  # warm up
    rows += _latency_rows(
        "task",
        await _restart_latencies("task", 300),
        None,
        "aiomisc: no equivalent (a Service whose task crashes is not restarted)",
    )
    rows += _latency_rows(
        "thread",
        await _restart_latencies("thread", 300),
        None,
        "aiomisc: no equivalent (no thread services; a crashed Service is not restarted)",
    )

    # Processes: interleaved rounds, ours then aiomisc's, so noise hits both.
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(3):
        ours += await _restart_latencies("process", 8)
        if aiomisc:
            theirs += await _aiomisc_restart_latencies(8)
    note = (
        "ours: multiprocessing 'spawn' (a fresh interpreter) seen through the sentinel; "
        "aiomisc: RespawningProcessService, 'fork', is_alive polled every "
        f"{AIOMISC_POLL * 1e3:g} ms"
    )
    rows += _latency_rows(
        "process", ours, theirs if aiomisc else None, note if aiomisc else missing
    )

    # Dynamic children: one round each (each takes seconds, so a scheduling
    # blip is small against it), ours first.
    mine_s = [await _ours_dynamic(DYNAMIC_CHILDREN)]
    other_s = [await _aiomisc_dynamic(DYNAMIC_CHILDREN)] if aiomisc else []
    mine_rate = DYNAMIC_CHILDREN / min(mine_s)
    what = f"{DYNAMIC_CHILDREN:,} dynamic task children started then stopped"
    rows.append(
        Row(SECTION, what, "DynamicSupervisor.start_child x N, stop()", mine_rate,
            " children/s", "info", None,
            f"{min(mine_s):.2f} s for {DYNAMIC_CHILDREN:,} starts and their stop")
    )  # fmt: skip
    if aiomisc:
        other_rate = DYNAMIC_CHILDREN / min(other_s)
        rows.append(
            Row(SECTION, what, "aiomisc start_services x N, stop_services", mine_rate / other_rate,
                "x", "info", None,
                f"ours {mine_rate:,.0f}/s vs aiomisc {other_rate:,.0f}/s (throughput ratio, "
                "> 1: ours faster); each child ready before the next on both sides")
        )  # fmt: skip
    else:
        rows.append(Row(SECTION, what, "aiomisc", 0.0, "x", "info", None, missing))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
