"""The flap damper (``foundation._flap``): which drops and returns are a flap.

One state machine serves a registry node's ``Link`` and a flag store's
listener; each says its lines in its own words. Here the machine alone, on an
injected clock (no waiting), with the real messages ``translate_error`` makes.

>>> from foundation._flap import cause_of
>>> cause_of("Redis at redis://h:1/0 failed while reading the change stream: OOM, full: x")
'OOM, full'
"""

from __future__ import annotations

import doctest

import pytest
import redis

from foundation import _flap
from foundation._flap import FLAP_WINDOW, FlapDamper, cause_of
from foundation._redis_conn import translate_error

_URL = "redis://127.0.0.1:6379/0"


def _error(exc: Exception, doing: str = "reading the change stream") -> str:
    return str(translate_error(exc, url=_URL, doing=doing))


# The same CLIENT KILL, as the socket may report it.
_CLOSED = _error(redis.exceptions.ConnectionError("Connection closed by server."))
_RESET = _error(
    redis.exceptions.ConnectionError("Error 104 while reading: Connection reset by peer")
)
_MAXCLIENTS = _error(redis.exceptions.ConnectionError("max number of clients reached"))
_OOM = _error(redis.exceptions.OutOfMemoryError("OOM command not allowed"))


class _Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _flapping(clock: _Clock) -> FlapDamper:
    """A damper whose component dropped, came back, and dropped again at once."""
    damper = FlapDamper(clock=clock)
    assert damper.drop(_CLOSED) == "usual"
    assert damper.up() is False
    clock.now += 0.1
    assert damper.drop(_RESET) == "first"
    assert damper.flapping
    return damper


def test_the_module_example_runs() -> None:
    failed, tried = doctest.testmod(_flap)
    assert tried > 0
    assert failed == 0


def test_one_client_kill_read_two_ways_is_one_cause() -> None:
    assert cause_of(_CLOSED) == cause_of(_RESET) == "unreachable"
    # Whichever call met it.
    lease = _error(redis.exceptions.ConnectionError("x"), doing="renewing the lease")
    assert cause_of(lease) == "unreachable"
    assert cause_of(_MAXCLIENTS).startswith("MAXCLIENTS, ")
    assert len({cause_of(_CLOSED), cause_of(_MAXCLIENTS), cause_of(_OOM)}) == 3


def test_a_message_that_is_no_backend_error_is_its_own_cause() -> None:
    assert cause_of("no answer in time") == "no answer in time"
    assert cause_of("corrupt: entry 3") == "corrupt"


def test_the_first_repeat_is_first_then_the_flap_is_quiet() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    assert damper.up() is True  # its return: DEBUG
    for _ in range(3):
        clock.now += 0.5
        assert damper.drop(_CLOSED) == "quiet"
        assert damper.again(None) is True  # a change while down: DEBUG too
        assert damper.again(_RESET) is True  # the same cause while down
        assert damper.up() is True


def test_a_drop_long_after_the_return_is_no_repeat() -> None:
    clock = _Clock()
    damper = FlapDamper(clock=clock)
    damper.drop(_CLOSED)
    damper.up()
    clock.now += FLAP_WINDOW
    assert damper.drop(_CLOSED) == "usual"
    assert not damper.flapping


def test_a_drop_with_another_cause_ends_the_flap() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    damper.up()
    clock.now += 0.1
    assert damper.drop(_MAXCLIENTS) == "usual"
    assert not damper.flapping
    assert damper.up() is False
    # The next repeat is of the new cause, and starts a new flap.
    clock.now += 0.1
    assert damper.drop(_MAXCLIENTS) == "first"


def test_a_drop_for_no_failure_ends_the_flap_and_forgets_its_cause() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    damper.up()
    assert damper.drop(None) == "usual"
    assert not damper.flapping
    damper.up()
    assert damper.drop(_CLOSED) == "usual"


def test_a_failure_with_another_cause_while_down_ends_the_flap() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    assert damper.again(_OOM) is False  # a new outage: logged as usual
    assert not damper.flapping
    assert damper.again(_OOM) is False
    assert damper.up() is False  # an ordinary return: INFO
    assert damper.lingers() is None
    assert damper.over() is None


def test_the_flap_is_over_once_up_for_the_window_and_said_once() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    clock.now += 0.1
    damper.up()
    clock.now += FLAP_WINDOW - 0.5
    assert damper.over() is None
    assert damper.lingers() is None  # up: it cannot linger
    clock.now += 0.5
    over = damper.over()
    assert over is not None
    assert (over.drops, over.cause, over.seconds) == (1, "unreachable", FLAP_WINDOW)
    assert not damper.flapping
    assert damper.over() is None
    # Over: the next drop, this long after its return, is a new outage.
    assert damper.drop(_CLOSED) == "usual"


def test_a_flap_that_ends_down_lingers_once() -> None:
    clock = _Clock()
    damper = _flapping(clock)
    damper.up()
    clock.now += 0.1
    assert damper.drop(_CLOSED) == "quiet"
    clock.now += FLAP_WINDOW - 0.1
    assert damper.again(_CLOSED) is True  # the server gone, say: the same cause
    assert damper.lingers() is None
    assert damper.over() is None
    clock.now += 0.1
    gone = damper.lingers()
    assert gone is not None
    assert (gone.drops, gone.cause) == (2, "unreachable")
    assert gone.seconds == pytest.approx(FLAP_WINDOW)
    assert damper.lingers() is None
    assert damper.up() is False  # its return: INFO, as any outage's


def test_the_window_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    damper = _flapping(clock)
    damper.up()
    clock.now += 1.0
    assert damper.over() is None
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 0.5)
    over = damper.over()
    assert over is not None
    assert over.seconds == pytest.approx(1.0)


def test_the_real_clock_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 0.0)
    damper = FlapDamper()
    damper.drop(_CLOSED)
    damper.up()
    assert damper.drop(_CLOSED) == "usual"  # a window of 0 s: nothing repeats
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 3600.0)
    damper.up()
    assert damper.drop(_RESET) == "first"
    assert damper.up() is True
    assert damper.over() is None
    monkeypatch.setattr(_flap, "FLAP_WINDOW", 0.0)
    assert damper.over() is not None
