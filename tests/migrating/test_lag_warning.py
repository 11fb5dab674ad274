"""The WARNING about flag-off mirrors queued behind a busy pump says why they wait.

Mirrors queue behind the one thread applying them either because a target
call in flight is slow (a frozen Redis) or only because writes come faster
than one thread mirrors them (several threads writing to an in-memory target).
The line must not blame a slow target call for the second. The target is a
real ``MemoryRegistry`` whose ``register`` of one key waits at a gate, so "a
call is in flight" is a known state; a queue is filled by the test's writes.
"""

from __future__ import annotations

import logging
import threading
import time

from foundation.registry import _migrating_mirror as mirror
from tests._logs import captured
from tests.migrating.support import Agents, make, wait_until
from tests.migrating.test_queued_mirrors import GatedTarget

SLOW = "queued behind a target call in flight for"
BEHIND = "mirroring to the target is behind by"


def _warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def test_a_backlog_of_quick_calls_is_not_blamed_on_a_slow_target(agents: Agents) -> None:
    target = GatedTarget("gate")
    reg, flags = make(False, target=target)
    try:
        with captured("foundation.registry") as records:
            holder = threading.Thread(target=reg.register, args=("gate", agents.new()))
            holder.start()
            assert target.entered.wait(10)
            agent = agents.new()
            # Each write queues its mirror and returns: the holder's thread holds
            # the pump, its call just begun (far from _SLOW_CALL).
            for i in range(mirror._BACKLOG_WARNING):
                reg.register(("k", i), agent)
            target.gate.set()
            holder.join(10)
            assert wait_until(lambda: target.lookup(("k", 0)) is not None)
        warnings = _warnings(records)
        assert [w for w in warnings if "slow target" in w or SLOW in w] == []
        assert len(warnings) == 1, warnings
        assert f"{BEHIND} {mirror._BACKLOG_WARNING} writes" in warnings[0]
        assert "no target call is slow" in warnings[0]
    finally:
        target.gate.set()
        reg.close()
        flags.close()


def test_mirrors_behind_a_slow_call_name_how_long_it_runs(agents: Agents) -> None:
    target = GatedTarget("gate")
    reg, flags = make(False, target=target)
    try:
        with captured("foundation.registry") as records:
            holder = threading.Thread(target=reg.register, args=("gate", agents.new()))
            holder.start()
            assert target.entered.wait(10)
            agent = agents.new()
            for i in range(mirror._LAG_WARNING):
                reg.register(("k", i), agent)
            # The call in flight must have run for _SLOW_CALL seconds to be
            # slow; nothing to wait on but the clock.
            time.sleep(mirror._SLOW_CALL + 0.1)  # sleep-ok: a call slow by the clock
            reg.register("one-more", agent)
            target.gate.set()
            holder.join(10)
            assert wait_until(lambda: target.lookup("one-more") is not None)
            assert wait_until(
                lambda: (
                    "MigratingRegistry: queued mirrors to the target are applied"
                    in records.messages(name="foundation.registry")
                )
            )
        warnings = _warnings(records)
        assert len(warnings) == 1, warnings
        assert f"{mirror._LAG_WARNING + 1} mirrors to the target are {SLOW}" in warnings[0]
        assert BEHIND not in warnings[0]
    finally:
        target.gate.set()
        reg.close()
        flags.close()
