"""The Sentinel test harness (``tests.redis_support``) against its own flakes.

Found by a flake hunt: a Sentinel scenario failed once in CI because its
Sentinel stopped answering, and nothing said why (its log went away with its
directory). So a failed scenario now carries what became of every process of
its set; a server or Sentinel whose free port another process took meanwhile
moves to another port (or, on a restart, says so) instead of letting the test
drive the other process; and each set watches a service of its own, so that
another test's Sentinel that reaches it never joins it.
"""

from __future__ import annotations

import pytest

from foundation._demo._redis_server import RedisServerError
from tests.redis_support import (
    RedisServer,
    SentinelProcess,
    SentinelSet,
    running_redis,
)


def _answered_by_itself(server: RedisServer) -> bool:
    return server.process is not None and server._answering_pid() == server.process.pid


def test_a_server_whose_picked_port_was_taken_meanwhile_moves_to_another() -> None:
    with running_redis() as other:
        server = RedisServer()
        server.port = other.port  # free_port() lost a race: another server took the pick
        try:
            server.start()
            assert server.port != other.port
            assert _answered_by_itself(server)
            assert _answered_by_itself(other)  # left alone
        finally:
            server.stop()


def test_a_restart_on_a_port_taken_meanwhile_names_the_race() -> None:
    # A restart keeps its port: the other server must not pass for this one.
    with running_redis() as server:
        server.kill()
        with RedisServer(port=server.port) as thief:
            with pytest.raises(RedisServerError, match=r"taken by another process.*free-port race"):
                server.start()
            assert _answered_by_itself(thief)


def test_a_sentinel_whose_picked_port_was_taken_meanwhile_moves_to_another() -> None:
    with running_redis() as other:
        sentinel = SentinelProcess("harness", other.port)
        sentinel.port = other.port  # a race with the server it will monitor
        try:
            sentinel.start()
            assert sentinel.port != other.port
            assert _answered_by_itself(sentinel)
            assert f"port {sentinel.port}" in (sentinel._dir / "sentinel.conf").read_text()
            assert sentinel.master_address() == ("127.0.0.1", other.port)
        finally:
            sentinel.stop()


def test_each_sentinel_set_watches_a_service_of_its_own() -> None:
    sets = [SentinelSet(), SentinelSet()]
    try:
        assert sets[0].service != sets[1].service
        assert sets[0].all_sentinels[0].service == sets[0].service
    finally:
        for s in sets:
            s.stop()  # never started: removes the directories


def test_a_failed_sentinel_scenario_says_what_became_of_each_process() -> None:
    """As in the CI failure: the Sentinel ends while the test runs, then the test fails."""
    with pytest.raises(AssertionError) as info, SentinelSet() as s:  # noqa: PT012 (a scenario)
        assert s.sentinel.process is not None
        s.sentinel.process.kill()  # not through the harness: an unexplained death
        s.sentinel.process.wait(timeout=10)
        raise AssertionError("the scenario failed")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    sentinel = s.sentinel
    assert sentinel.process is None  # stopped, its directory removed: the note kept it
    assert f"Sentinel 0 on port {sentinel.port}" in notes
    assert "EXITED, returncode -9 (SIGKILL)" in notes
    assert "(killed by the test)" not in notes
    assert f"+monitor master {s.service} 127.0.0.1 {s.servers[0].port}" in notes
    assert notes.count("running, port accepts connections") == 2  # master and replica
    assert "Ready to accept connections" in notes  # the servers' logs
