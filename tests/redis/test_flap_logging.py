"""How a flapping node is logged (``Link``: the state machine, no server needed).

A flap (the same failure right after each recovery: the tail's connection
refused at ``maxclients`` while the lease's own connection works) is said
once at WARNING, its repeats at DEBUG. Two things must stay visible:

- a *different* outage that starts while the node flaps (the server going
  away during one of the flap's recoveries) is logged at WARNING like any
  other, never at DEBUG;
- the end of the flap: once the node stays connected for the flap window, an
  INFO line says so (the recoveries were logged at DEBUG, so the operator's
  log would otherwise end at the flap's WARNING).

The errors are redis-py's own exception types, as the node reports them.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis

from foundation import _flap
from foundation._redis_conn import translate_error
from foundation.registry._redis._state import Link, LinkState

_URL = "redis://127.0.0.1:6379/0"
_REFUSED = redis.exceptions.ConnectionError("max number of clients reached")
_MAXCLIENTS = f"Redis at {_URL} failed while reading the change stream: MAXCLIENTS, refused"
_GONE = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused.")
_UNREACHABLE = f"Redis at {_URL} failed while renewing the lease: unreachable: refused"


def _flapping(caplog: pytest.LogCaptureFixture) -> Link:
    """A link that has flapped twice (degraded right after each recovery)."""
    caplog.set_level(logging.DEBUG, logger="foundation.registry.redis")
    link = Link("n1", namespace="shop")
    link.recovered(link.epoch, "started")
    for _ in range(3):
        link.failed(_REFUSED, _MAXCLIENTS)
        assert link.state is LinkState.DEGRADED
        link.recovered(link.epoch, "lease renewed")
    link.failed(_REFUSED, _MAXCLIENTS)
    flap = [r for r in caplog.records if "Redis failed again" in r.getMessage()]
    assert [r.levelno for r in flap] == [logging.WARNING], caplog.text
    caplog.clear()
    return link


def test_a_different_outage_starting_during_a_flap_is_logged_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Degraded by the flap's cause, then the server goes away during the recovery:
    ``degraded -> disconnected`` is a new outage, at WARNING."""
    link = _flapping(caplog)
    assert link.state is LinkState.DEGRADED
    link.failed(_GONE, _UNREACHABLE)
    assert link.state is LinkState.DISCONNECTED
    drops = [r for r in caplog.records if "degraded -> disconnected" in r.getMessage()]
    assert [r.levelno for r in drops] == [logging.WARNING], caplog.text
    # And the recovery from it is an ordinary one: INFO.
    caplog.clear()
    link.recovered(link.epoch, "back")
    back = [r for r in caplog.records if "disconnected -> connected" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.INFO], caplog.text


def test_the_end_of_a_flap_is_said_at_info_once_the_node_stays_connected(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = _flapping(caplog)
    link.recovered(link.epoch, "lease renewed")  # at DEBUG: part of the flap
    assert [r.levelno for r in caplog.records] == [logging.DEBUG], caplog.text
    link.ok()  # connected, but not for the window yet: nothing said
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG], caplog.text
    # The window passes (shortened: the node has been connected longer than it).
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 0.05)
    deadline = time.monotonic() + 10
    while not [r for r in caplog.records if r.levelno == logging.INFO]:
        assert time.monotonic() < deadline, caplog.text
        link.ok()  # a heartbeat Redis answered
        time.sleep(0.01)  # sleep-ok: polling with a deadline
    over = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(over) == 1, caplog.text
    text = over[0].getMessage()
    assert "node n1 (namespace 'shop')" in text, text
    assert "flap is over" in text, text
    assert "MAXCLIENTS" in text, text
    # Said once; the next drop with the same cause, long after, is a new outage.
    link.ok()
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    caplog.clear()
    link.failed(_REFUSED, _MAXCLIENTS)
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text


_CLOSED = redis.exceptions.ConnectionError("Connection closed by server.")
_RESET = redis.exceptions.ConnectionError("Error 104 while reading: Connection reset by peer")


def _cut(exc: redis.exceptions.ConnectionError) -> str:
    return str(translate_error(exc, url=_URL, doing="reading the change stream"))


def test_a_client_kill_read_either_way_is_one_flap(caplog: pytest.LogCaptureFixture) -> None:
    """The tail cut by ``CLIENT KILL`` after each recovery: the socket says "closed
    by server" or "reset by peer", the same cause: one WARNING, then DEBUG."""
    caplog.set_level(logging.DEBUG, logger="foundation.registry.redis")
    link = Link("n1", namespace="shop")
    link.recovered(link.epoch, "started")
    for exc in (_CLOSED, _RESET, _CLOSED, _RESET):
        link.failed(exc, _cut(exc))
        assert link.state is LinkState.DISCONNECTED
        link.recovered(link.epoch, "lease renewed")
    flap = [r for r in caplog.records if "Redis failed again" in r.getMessage()]
    assert [r.levelno for r in flap] == [logging.WARNING], caplog.text
    drops = [r for r in caplog.records if "connected -> disconnected" in r.getMessage()]
    assert [r.levelno for r in drops] == [logging.WARNING] + [logging.DEBUG] * 3, caplog.text


def test_a_flap_that_ends_disconnected_is_said_at_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut after each recovery, then the server goes away (the same cause,
    ``unreachable``): the drop was logged at DEBUG, so once the flap window has
    passed with no recovery, a failed retry says at WARNING the node is still
    disconnected; the recovery after it is an ordinary one: INFO."""
    caplog.set_level(logging.DEBUG, logger="foundation.registry.redis")
    link = Link("n1", namespace="shop")
    link.recovered(link.epoch, "started")
    for exc in (_CLOSED, _RESET, _CLOSED):
        link.failed(exc, _cut(exc))
        link.recovered(link.epoch, "lease renewed")
    link.failed(_GONE, _UNREACHABLE)  # the server gone: at DEBUG, as the flap's cuts
    assert link.state is LinkState.DISCONNECTED
    caplog.clear()
    link.failed(_GONE, _UNREACHABLE)  # a retry within the window: nothing said
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG], caplog.text
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 0.05)
    deadline = time.monotonic() + 10
    while not [r for r in caplog.records if r.levelno == logging.WARNING]:
        assert time.monotonic() < deadline, caplog.text
        link.failed(_GONE, _UNREACHABLE)  # the lease thread's next retry
        time.sleep(0.01)  # sleep-ok: polling with a deadline
    still = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(still) == 1, caplog.text
    text = still[0].getMessage()
    assert "node n1 (namespace 'shop'): still disconnected" in text, text
    assert "repeated failure(s) (unreachable)" in text, text
    link.failed(_GONE, _UNREACHABLE)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    caplog.clear()
    link.recovered(link.epoch, "back")
    back = [r for r in caplog.records if "disconnected -> connected" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.INFO], caplog.text
