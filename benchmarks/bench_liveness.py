"""Liveness benchmarks: OS-process death latency, monitor+demonitor cost.

python -m benchmarks liveness
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import threading
import time

from benchmarks._harness import Row, compare
from foundation.liveness import Down, MonitorManager, spawn_thread

SECTION = "liveness"


def _death_latencies(manager: MonitorManager, samples: int, batch: int = 20) -> list[float]:
    """Seconds from SIGKILL of a child to its on_down, ``samples`` times."""
    latencies: list[float] = []
    while len(latencies) < samples:
        procs = [subprocess.Popen(["sleep", "30"]) for _ in range(batch)]
        try:
            _settle(procs)
            for proc in procs:
                fired = threading.Event()
                seen: list[float] = []

                def on_down(
                    _down: Down, seen: list[float] = seen, fired: threading.Event = fired
                ) -> None:
                    seen.append(time.perf_counter())
                    fired.set()

                manager.monitor(proc, on_down)
                t0 = time.perf_counter()
                os.kill(proc.pid, signal.SIGKILL)
                if not fired.wait(10):
                    raise RuntimeError("process death not reported within 10 s")
                latencies.append(seen[0] - t0)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return latencies[:samples]


def _settle(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Wait until every child has exec'd sleep and is asleep, so none competes for CPU."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{proc.pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                break
            if b"(sleep) S" in stat:
                break
            time.sleep(0.001)  # sleep-ok: polling /proc/<pid>/stat with a deadline


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency_rows(label: str, latencies: list[float], target_ms: float | None) -> list[Row]:
    p50 = _percentile(latencies, 0.50) * 1e3
    p99 = _percentile(latencies, 0.99) * 1e3
    n = f"{len(latencies)} samples, max {max(latencies) * 1e3:.2f} ms"
    return [
        Row(SECTION, f"OS-process death latency p50 ({label})", "SIGKILL -> on_down",
            p50, "ms", "info", None, n),
        Row(SECTION, f"OS-process death latency p99 ({label})", "SIGKILL -> on_down",
            p99, "ms", f"<= {target_ms:g} ms" if target_ms else "info",
            (p99 <= target_ms) if target_ms else None, n),
    ]  # fmt: skip


def _pair_row(what: str, manager: MonitorManager, agent: object, n: int) -> Row:
    def subject(k: int) -> None:
        mon = manager.monitor
        for _ in range(k):
            mon(agent, _noop).demonitor()

    def baseline(k: int) -> None:
        d: dict[int, object] = {}
        for i in range(k):
            d[i] = _noop
            d.pop(i)

    ratio, s, b = compare(subject, baseline, n)
    return Row(SECTION, f"monitor+demonitor, {what}", "dict insert+pop", ratio, "x", "info",
               None, f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns per pair")  # fmt: skip


def _noop(_down: Down) -> None:
    pass


def run() -> list[Row]:
    rows: list[Row] = []
    with MonitorManager(name="bench") as manager:
        _death_latencies(manager, 5, batch=5)  # warm up: starts the pidfd thread
        rows += _latency_rows("pidfd", _death_latencies(manager, 200), 5.0)
    with MonitorManager(name="bench-poll", _pidfd=False) as manager:
        rows += _latency_rows("polling fallback, 10 ms", _death_latencies(manager, 60), None)

    with MonitorManager(name="bench-pairs") as manager:
        release = threading.Event()
        thread = spawn_thread(release.wait)
        rows.append(_pair_row("spawn_thread thread", manager, thread, 20_000))
        rows.append(
            _pair_row("concurrent.futures.Future", manager, concurrent.futures.Future(), 20_000)
        )

        async def on_loop() -> Row:
            fut = asyncio.get_running_loop().create_future()
            return _pair_row("asyncio future (on its loop)", manager, fut, 20_000)

        rows.append(asyncio.run(on_loop()))
        release.set()
        proc = subprocess.Popen(["sleep", "30"])
        try:
            rows.append(_pair_row("subprocess.Popen (pidfd open+close)", manager, proc, 2_000))
        finally:
            proc.kill()
            proc.wait()
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
