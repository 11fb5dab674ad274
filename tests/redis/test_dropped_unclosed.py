"""A ``RedisRegistry`` dropped without ``close()`` (a function's local, a
``multiprocessing`` child's) runs on quietly until its process exits.

Its lease and tail threads hold the node and keep its registrations; collecting
the ``RedisRegistry`` object itself must cut nothing. It did: the object owned
the client whose pool the tail reads on, and redis-py closes a client's pool
when the client is collected, so the tail's blocked ``XREAD`` failed ("Bad file
descriptor", or "the server closed the connection") and the node logged a false
outage at WARNING (``connected -> disconnected ... reconnecting with backoff``)
then recovered; in a multiprocessing child exiting with ``SystemExit`` it was
the child's last words (explorer: 3 of 16 SIGTERMed trees). Exiting with the
node still running (``sys.exit`` from a SIGTERM handler, a multiprocessing
child's exit path) prints nothing either.

Each scenario runs in a plain interpreter (default hooks; log records to
stderr, marked); the tail is blocked in ``XREAD`` (``CLIENT LIST``) when the
object goes, and the test then waits until the node has applied another node's
registration, by a read or by a recovery: ``recoveries`` tells which.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._stderr import stray_errors
from tests.faults._subprocess import PRELUDE, _log_line
from tests.redis.support import unique_namespace
from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3

# The scenario: PRELUDE (log records marked on stderr, wait_for), then its own.
_SCENARIO = (
    PRELUDE
    + r'''
import gc, logging, multiprocessing, os, signal, subprocess, sys, time, weakref

import redis

from foundation import OSProcess, RedisRegistry




def tail_blocked(url, node):
    """The node's tail connection is blocked in XREAD (CLIENT LIST flag b)."""
    client = redis.Redis.from_url(url)
    try:
        return any(
            c["name"] == f"foundation-tail:{node}" and "b" in c["flags"]
            for c in client.client_list()
        )
    finally:
        client.close()


def opened(url, ns):
    """A node that registered this process, its tail blocked in XREAD: its
    internal node (which its threads hold) and a weak reference to the
    RedisRegistry, which goes with this frame, never closed."""
    reg = RedisRegistry(url, namespace=ns, lease_ttl=2.0)
    reg.register("me", OSProcess(os.getpid()))
    wait_for(lambda: tail_blocked(url, reg._sh.node), "the tail blocked in XREAD")
    return reg._sh, weakref.ref(reg)


def drop_and_follow(url, ns):
    """Drop a node's RedisRegistry mid-read; once the node applied another
    node's registration, say how (RECOVERIES 0: read, as usual)."""
    sh, ref = opened(url, ns)
    gc.collect()
    assert ref() is None, "the RedisRegistry was not collected"
    before = sh.link.recoveries
    other = RedisRegistry(url, namespace=ns, lease_ttl=2.0)
    try:
        other.register("other", OSProcess(os.getpid()))
        wait_for(lambda: "other" in sh.entries, "the dropped node applying a registration")
    finally:
        other.close()
    print("RECOVERIES", sh.link.recoveries - before, sh.link.state.value, flush=True)
    return sh


def mp_child(url, ns):
    kept = drop_and_follow(url, ns)  # (its node runs on, its tail blocked in XREAD)
    wait_for(lambda: tail_blocked(url, kept.node), "the tail blocked in XREAD again")
    raise SystemExit(3)


def term_child(url, ns):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    global REG  # a module global, never closed
    REG = RedisRegistry(url, namespace=ns, lease_ttl=2.0)
    REG.register("me", OSProcess(os.getpid()))
    wait_for(lambda: tail_blocked(url, REG._sh.node), "the tail blocked in XREAD")
    print("READY", flush=True)
    signal.pause()


def main(url, mode, ns, rounds):
    for i in range(rounds):
        if mode == "running":
            drop_and_follow(url, f"{ns}-{i}")
        elif mode == "mp":
            ctx = multiprocessing.get_context("spawn")
            child = ctx.Process(target=mp_child, args=(url, f"{ns}-{i}"))
            child.start()
            child.join(60)
            assert child.exitcode == 3, child.exitcode
        else:
            child = subprocess.Popen(
                [sys.executable, __file__, url, "term-child", f"{ns}-{i}", "1"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout.readline() == "READY\n"
            child.send_signal(signal.SIGTERM)
            assert child.wait(60) == 0, child.returncode
            child.stdout.close()
    print("OK", flush=True)


if __name__ == "__main__":
    url, mode, ns, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "term-child":
        term_child(url, ns)
    else:
        main(url, mode, ns, rounds)
'''
)


def _run(tmp_path: Path, url: str, mode: str) -> str:
    """Run the scenario in ``mode``; assert it ended well with nothing said above
    INFO and no stray error on stderr; return its stdout."""
    script = tmp_path / "dropped_scenario.py"
    script.write_text(_SCENARIO)
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, str(script), url, mode, unique_namespace("drop"), str(ROUNDS)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    report = f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"scenario exited with {proc.returncode}{report}"
    assert "OK" in proc.stdout.splitlines(), f"scenario did not finish{report}"
    loud = [
        line
        for line in proc.stderr.splitlines()
        if line.startswith(("LOG WARNING", "LOG ERROR", "LOG CRITICAL"))
        or "reconnecting with backoff" in line
    ]
    assert not loud, f"warnings for a node nobody closed: {loud}{report}"
    stray = stray_errors(proc.stderr, _log_line, ())
    assert not stray, f"stray errors in the scenario's stderr: {stray}{report}"
    return proc.stdout


def test_a_registry_dropped_mid_read_cuts_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    out = _run(tmp_path, redis_server.url, "running")
    assert out.splitlines().count("RECOVERIES 0 connected") == ROUNDS, out


def test_a_multiprocessing_child_exiting_with_a_dropped_registry_says_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    out = _run(tmp_path, redis_server.url, "mp")
    assert out.splitlines().count("RECOVERIES 0 connected") == ROUNDS, out


def test_sys_exit_from_a_sigterm_handler_with_a_node_mid_read_says_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    _run(tmp_path, redis_server.url, "term")
