"""``foundation demo --redis URL`` leaves nothing in Redis: its check, nor part 4.

Before the fix the check opened and closed a ``RedisRegistry`` in part 4's
namespace, which left its ``{ns}:lastbeat`` key without a TTL in the user's
Redis (for every run, since the namespace is new each time). The check now
writes one probe key with a TTL and deletes it. Run as a user runs it (the
real command, in a subprocess): ``--admin`` with a malformed address is a
usage error raised just after the Redis check, so the demo stops there and
the test reads what the check left. A full run deletes part 4's keys at
the end (its two nodes left four per run).
"""

from __future__ import annotations

from pathlib import Path

from tests.cli._support import one_line_error, run_demo
from tests.redis_support import RedisServer


def _keys(server: RedisServer) -> list[tuple[bytes, int]]:
    """Every key of the server's database 0 with its TTL (-1: none)."""
    keys = server.command("KEYS", "*")
    return [(key, server.command("PTTL", key)) for key in keys]


def test_the_redis_check_leaves_no_key_behind(fresh_redis: RedisServer, tmp_path: Path) -> None:
    result = run_demo("--redis", fresh_redis.url, "--admin", "no-such-bind:x", cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
    assert "argument --admin" in result.stderr, result.stderr  # the Redis check passed
    assert result.stdout == ""  # nothing of the demo ran
    # Before the fix: [(b'{foundation-demo-XXXXXXXX}:lastbeat', -1)].
    assert _keys(fresh_redis) == []


def test_a_redis_refusing_writes_still_fails_the_check(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    # The check still tries a write in part 4's namespace: a read-only Redis is
    # one line (exit 69, backend unavailable) before anything runs, as with the
    # registry before.
    fresh_redis.make_read_only()
    line = one_line_error(run_demo("--redis", fresh_redis.url, cwd=tmp_path), 69)
    assert line.startswith("BackendUnavailable: "), line
    assert "READONLY" in line, line


def test_a_full_run_with_redis_leaves_no_key_behind(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    # Part 4's two nodes leave their namespace's keys (lastbeat, log, ver...)
    # when they close; the demo deletes them (before: 4 keys per run).
    result = run_demo("--agents", "2", "--seconds", "0.5", "--redis", fresh_redis.url, cwd=tmp_path)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr)
    assert "== 4. " in result.stdout  # part 4 ran
    assert _keys(fresh_redis) == []
