"""Demo part 4 ends its agents' threads before it ends, even when a second Ctrl-C
cuts its cleanup short (the command then exits at once).

Was: the cleanup set the agents' events and went on; a second Ctrl-C right after
ended the command while about a hundred daemon threads were still waking from
their events, and the interpreter's finalisation raced them: the ``foundation
demo`` process twice died of SIGSEGV in CI (tests/cli/test_signal_windows.py,
INT-INT). CPython 3.11 frees the thread states of threads still running when it
finalises; one of them going for the GIL then reads freed memory (CPython
gh-110052, gh-124878). That crash is rare (none in ~130 runs here): this test
checks what prevents it, deterministically: no thread of the part is left
running when the part raises.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli._support import cli_env
from tests.redis_support import RedisServer

# Part 4 itself (real registries on a real Redis, a hundred real threads), with an
# operator's real signals, raised in the main thread at two of the part's lines:
# the first at its table (the part's end), the second at the announcement of the
# keys' removal, once the cleanup has closed both nodes and ended the agents.
_PART_4 = """
import signal, sys, threading
from foundation._cli._signals import Terminated, install_sigterm
from foundation._demo._console import Console
from foundation._demo._redis import run_redis
from foundation._demo._scoreboard import Scoreboard

signal.signal(signal.SIGINT, signal.default_int_handler)
install_sigterm()
FIRST, SECOND = signal.{first}, signal.{second}

class Operator(Console):
    def table(self, title, columns, rows):
        signal.raise_signal(FIRST)
        super().table(title, columns, rows)

    def say(self, text):
        if "removing the demo's keys" in text:
            signal.raise_signal(SECOND)
        super().say(text)

before = set(threading.enumerate())
try:
    run_redis(Operator(plain=True), Scoreboard(), url=sys.argv[1], namespace="t-{first}-{second}")
except (KeyboardInterrupt, Terminated) as exc:
    left = [t.name for t in threading.enumerate() if t not in before]
    print("ENDED", type(exc).__name__, len(left), left[:5], flush=True)
"""


@pytest.mark.parametrize(
    ("first", "second", "raised"),
    [
        ("SIGINT", "SIGINT", "KeyboardInterrupt"),  # the second Ctrl-C cuts the cleanup
        ("SIGTERM", "SIGTERM", "Terminated"),  # held: the cleanup runs to its end
    ],
    ids=["INT-INT", "TERM-TERM"],
)
def test_part_4_leaves_no_thread_running_when_a_signal_ends_it(
    tmp_path: Path, fresh_redis: RedisServer, first: str, second: str, raised: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PART_4.format(first=first, second=second), fresh_redis.url],
        cwd=tmp_path,
        env=cli_env(PYTHONUNBUFFERED="1"),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    ended = [line for line in result.stdout.splitlines() if line.startswith("ENDED")]
    assert ended == [f"ENDED {raised} 0 []"], result.stdout[-3000:]
    assert "Node A -> node B" not in result.stdout  # the first signal landed at the table
    if first == second == "SIGINT":
        assert "stay in Redis: interrupted" in result.stdout, result.stdout[-3000:]
    else:
        assert fresh_redis.command("KEYS", "*") == []
