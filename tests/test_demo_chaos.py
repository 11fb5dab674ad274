"""The demo's chaos mode, run as a user runs it: ``python -m foundation._demo --chaos``.

It starts its own redis-server processes, so it runs in a subprocess with the
interpreter's default hooks (not pytest's), and is judged by what a user sees:
the exit code, the measured figures and the invariants it prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundation._demo", *args],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=100,
    )


def _figure(output: str, name: str) -> str:
    """The value printed for ``name`` in the plain "Measured figures" table."""
    match = re.search(rf"^{re.escape(name)}\s{{2,}}(.+?)\s*$", output, re.MULTILINE)
    assert match is not None, f"figure {name!r} missing from:\n{output}"
    return match.group(1)


def test_chaos_mode_keeps_two_nodes_serving_through_every_redis_fault() -> None:
    run = _demo("--chaos", "--fault-seconds", "1", "--workers", "2", "--plain")
    out = run.stdout
    assert run.returncode == 0, f"exit {run.returncode}\n{out}\n{run.stderr[-4000:]}"
    assert "Exception in thread" not in run.stderr  # no thread died (default threading hook)
    # Each fault was injected and recovered from, with a measured recovery time.
    for fault in ("frozen (SIGSTOP)", "read-only (REPLICAOF)", "killed, restarted empty"):
        assert re.fullmatch(r"\d+ ms", _figure(out, f"recovery after redis-server {fault}"))
    # What a user cares about, as counted by the demo.
    assert _figure(out, "healthy workers stopped by Redis faults") == "0"
    assert _figure(out, "registrations lost") == "0"
    assert _figure(out, "flags reverted") == "0"
    assert _figure(out, "kill switch pulled mid-outage, seen by node A") == "at once"
    assert _figure(out, "kill switch seen by node B").endswith("after Redis returned")
    # The stall figures say what is checked (the max) and what is only aimed at (the p99).
    assert re.fullmatch(
        r"\d+\.\d ms", _figure(out, "loop stall max during faults (invariant < 1000 ms)")
    )
    assert re.fullmatch(
        r"\d+\.\d ms",
        _figure(out, "loop stall p99 during faults (aim <= 10 ms, not an invariant)"),
    )
    assert re.search(r"^no event loop waited on Redis \(stall max < 1000 ms\)\s+ok", out, re.M)
    assert "FAILED" not in out
    assert re.search(r"^all \d+ invariants held$", out, re.MULTILINE)


def test_chaos_mode_without_redis_server_says_so_and_fails() -> None:
    # PATH without redis-server: the demo asked for must not silently do nothing.
    run = _demo("--chaos", "--plain", env={"PATH": str(ROOT / "no-such-dir")})
    assert run.returncode == 1
    assert "redis-server" in run.stderr
    assert "not installed" in run.stderr
    assert "Traceback" not in run.stderr
