"""A real Supervisor of asyncio task children against a small model of OTP's supervisor.

The machine drives crashes, normal exits and the management calls in random
order, for each strategy and a mix of restart types, and after every step
compares the supervisor with the model: ``which_children()`` (order, status,
restart counts, handles), ``count_children()``, ``which_child()``, the exact
sequence of child starts and stops, and the ``child_restarted`` /
``child_exited`` telemetry. The model is OTP's ``supervisor``:

- a child that ends is restarted if ``permanent``, or ``transient`` and the
  exit is abnormal; a ``temporary`` child never is, and its spec is dropped;
- a restart restarts the scope of the strategy (``one_for_one``: the child;
  ``one_for_all``: every child; ``rest_for_one``: the child and those after
  it): the other running children of the scope are stopped in reverse order
  (a temporary one is dropped), then every child of the scope that still has
  a spec is started again in start order, including one that was stopped
  (``restart_multiple_children``);
- ``terminate_child`` stops a child and keeps its spec (a temporary one's is
  dropped); ``restart_child`` / ``delete_child`` need a stopped child;
  ``start_child`` appends; errors carry OTP's reasons and change nothing.

Restart intensity is kept out of the machine's way (``max_restarts`` huge);
a separate test checks that exceeding it stops the supervisor with
``RestartIntensityExceeded``. Each machine runs its supervisor on a private
event loop (``asyncio.Runner``) that only turns inside a step, so the
supervisor is quiescent between steps; a step waits for its outcome by
polling the supervisor with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from foundation.errors import RestartIntensityExceeded, StartError, SupervisorError
from foundation.supervision import RestartType, Strategy, Supervisor
from tests.supervision._support import Boom, Crew, captured_events, until

POOL = ("a", "b", "c", "d", "e", "f")
IDS = st.sampled_from(POOL)
PICK = st.integers(0, 9)  # mostly an existing child (see SupervisorMachine.pick)
RESTARTS: st.SearchStrategy[RestartType] = st.sampled_from(["permanent", "transient", "temporary"])
STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all", "rest_for_one")
SETTLE_TIMEOUT = 10.0


@dataclass
class Kid:
    """The model of one child."""

    id: str
    restart: RestartType
    running: bool = True
    restarts: int = 0  # automatic restarts since it was added (ChildInfo.restarts)
    runs: int = 1  # runs started since it was added


class SupervisorMachine(RuleBasedStateMachine):
    strategy: Strategy = "one_for_one"

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.events = self.stack.enter_context(captured_events())
        self.runner = self.stack.enter_context(asyncio.Runner())
        self.crew = Crew()
        self.sup: Supervisor | None = None
        self.kids: list[Kid] = []
        # What the crew's log ("start"/"stop" entries) and the telemetry must show.
        self.log: list[tuple[Any, ...]] = []
        self.restarted: list[str] = []
        self.exited: list[tuple[str, str, bool]] = []
        # Children that ended on their own whose exit the supervisor has not handled yet.
        self.ended: dict[str, str] = {}
        # The handle of each running child, and every handle a child id ever had.
        self.handles: dict[str, Any] = {}
        self.runs_seen: dict[str, int] = {}
        self.old_handles: list[Any] = []

    # ------------------------------------------------------------------ model
    def kid(self, id: str) -> Kid | None:
        return next((k for k in self.kids if k.id == id), None)

    def running(self) -> list[Kid]:
        return [k for k in self.kids if k.running]

    def drop(self, kid: Kid) -> None:
        self.kids.remove(kid)
        self.forget(kid.id)

    def forget(self, id: str) -> None:
        self.handles.pop(id, None)
        self.runs_seen.pop(id, None)

    def pick(self, n: int) -> str:
        """An existing child's id for most ``n``, else any id (perhaps unknown)."""
        if n < 8 and self.kids:
            return self.kids[n % len(self.kids)].id
        return POOL[n % len(POOL)]

    def scope(self, kid: Kid) -> list[Kid]:
        if self.strategy == "one_for_one":
            return [kid]
        if self.strategy == "one_for_all":
            return list(self.kids)
        return self.kids[self.kids.index(kid) :]

    def model_down(self, kid: Kid, *, abnormal: bool, failing: set[str] | None = None) -> None:
        """``kid`` ended on its own (its own "stop" entry is already expected);
        the children in ``failing`` fail their next start once."""
        restarts = kid.restart == "permanent" or (kid.restart == "transient" and abnormal)
        reason = "exception" if abnormal else "normal"
        self.exited.append((kid.id, reason, restarts))
        kid.running = False
        if not restarts:
            if kid.restart == "temporary":
                self.drop(kid)
            return
        self.restart_scope(kid, failing or set())

    def restart_scope(self, kid: Kid, failing: set[str]) -> None:
        """The restart round of ``kid``, down and to be restarted."""
        scope = self.scope(kid)
        for other in reversed(scope):
            if other is kid or not other.running:
                continue
            if other.id in self.ended:
                # It ended on its own and its exit is still queued: the stop finds
                # it gone and reports how it ended; its queued exit is then stale.
                self.exited.append(
                    (other.id, self.ended.pop(other.id), other.restart != "temporary")
                )
            else:
                self.log.append(("stop", other.id, "cancelled"))
                self.exited.append((other.id, "shutdown", other.restart != "temporary"))
            other.running = False
            if other.restart == "temporary":
                self.drop(other)
        for other in scope:
            if other not in self.kids:  # only the children of the scope that kept a spec
                continue
            other.restarts += 1
            self.log.append(("start", other.id, other.restarts))
            if other.id in failing:
                # A failed restart is one more crash of that child: its own round
                # begins; the children after it in this round wait, stopped.
                failing.discard(other.id)
                self.log.append(("stop", other.id, "failed"))
                self.exited.append((other.id, "exception", True))
                self.restart_scope(other, failing)
                return
            other.runs += 1
            other.running = True
            self.restarted.append(other.id)

    # ------------------------------------------------------------------ driving
    def call(self, coro: Any) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                return await coro

        return self.runner.run(bounded())

    def observed(self) -> tuple[Any, ...]:
        assert self.sup is not None
        rows = [
            (c.id, c.kind, c.restart, c.status, c.restarts, c.handle is not None)
            for c in self.sup.which_children()
        ]
        counts = self.sup.count_children()
        log = [e for e in self.crew.log if e[0] in ("start", "stop")]
        restarted = [d["child"] for n, d in self.events if n == "supervisor.child_restarted"]
        exited = [
            (d["child"], d["reason"], d["restart"])
            for n, d in self.events
            if n == "supervisor.child_exited"
        ]
        return (
            rows,
            (counts.specs, counts.active, counts.supervisors, counts.workers),
            log,
            (
                restarted,
                exited,
            ),
        )

    def expected(self) -> tuple[Any, ...]:
        rows = [
            (k.id, "task", k.restart, "running" if k.running else "stopped", k.restarts, k.running)
            for k in self.kids
        ]
        n = len(self.kids)
        counts = (n, len(self.running()), 0, n)
        return rows, counts, self.log, (self.restarted, self.exited)

    def settle(self) -> None:
        """Wait (deadline) until the supervisor shows what the model expects, then check all."""

        async def poll() -> None:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while self.observed() != self.expected() and time.monotonic() < deadline:
                await asyncio.sleep(0.002)  # sleep-ok: polling with a deadline

        self.runner.run(poll())
        assert self.observed() == self.expected()
        self.check_handles()

    def check_handles(self) -> None:
        """A child has a new, live handle exactly when the model started a new run."""
        assert self.sup is not None
        for row in self.sup.which_children():
            assert self.sup.which_child(row.id) == row
            kid = self.kid(row.id)
            assert kid is not None
            assert self.sup.get_childspec(row.id).restart == kid.restart
            if not kid.running:
                assert row.handle is None
                continue
            assert isinstance(row.handle, asyncio.Task)
            assert not row.handle.done()
            if self.runs_seen.get(row.id) == kid.runs:
                assert row.handle is self.handles[row.id], f"{row.id} restarted unexpectedly"
            else:
                assert all(row.handle is not h for h in self.old_handles), f"{row.id}: stale"
                self.handles[row.id] = row.handle
                self.runs_seen[row.id] = kid.runs
                self.old_handles.append(row.handle)

    # ------------------------------------------------------------------ rules
    @initialize(restarts=st.lists(RESTARTS, min_size=1, max_size=5))
    def start(self, restarts: list[RestartType]) -> None:
        specs = [self.crew.spec(id, restart=r) for id, r in zip(POOL, restarts, strict=False)]
        self.sup = Supervisor(
            specs, strategy=self.strategy, max_restarts=1_000_000, max_seconds=3600
        )
        self.call(self.sup.start())
        for spec in specs:
            self.kids.append(Kid(spec.id, spec.restart))
            self.log.append(("start", spec.id, 0))
        self.settle()

    @precondition(lambda self: bool(self.running()))
    @rule(n=st.integers(0, 5), crash=st.booleans())
    def child_ends(self, n: int, crash: bool) -> None:
        """A running child raises (crash) or returns (a normal exit)."""
        running = self.running()
        kid = running[n % len(running)]
        if crash:
            self.crew.crash(kid.id)
            self.log.append(("stop", kid.id, "crash"))
        else:
            self.crew.finish(kid.id)
            self.log.append(("stop", kid.id, "finish"))
        self.model_down(kid, abnormal=crash)
        self.settle()

    @rule(pick=PICK)
    def terminate_child(self, pick: int) -> None:
        assert self.sup is not None
        id = self.pick(pick)
        kid = self.kid(id)
        if kid is None:
            with pytest.raises(SupervisorError) as info:
                self.call(self.sup.terminate_child(id))
            assert (info.value.reason, info.value.child) == ("not_found", id)
        else:
            self.call(self.sup.terminate_child(id))
            if kid.running:
                self.log.append(("stop", id, "cancelled"))
                self.exited.append((id, "shutdown", False))
            kid.running = False
            if kid.restart == "temporary":
                self.drop(kid)
        self.settle()

    @rule(pick=PICK)
    def restart_child(self, pick: int) -> None:
        assert self.sup is not None
        id = self.pick(pick)
        kid = self.kid(id)
        if kid is None or kid.running:
            with pytest.raises(SupervisorError) as info:
                self.call(self.sup.restart_child(id))
            reason = "not_found" if kid is None else "running"
            assert (info.value.reason, info.value.child) == (reason, id)
        else:
            info_row = self.call(self.sup.restart_child(id))
            assert (info_row.id, info_row.status) == (id, "running")
            kid.running = True
            kid.runs += 1
            self.log.append(("start", id, kid.restarts))
        self.settle()

    @rule(pick=PICK)
    def delete_child(self, pick: int) -> None:
        assert self.sup is not None
        id = self.pick(pick)
        kid = self.kid(id)
        if kid is None or kid.running:
            with pytest.raises(SupervisorError) as info:
                self.call(self.sup.delete_child(id))
            reason = "not_found" if kid is None else "running"
            assert (info.value.reason, info.value.child) == (reason, id)
        else:
            self.call(self.sup.delete_child(id))
            self.drop(kid)
        self.settle()

    @precondition(lambda self: len(self.running()) >= 2)
    @rule(n=st.integers(0, 5), m=st.integers(1, 5), crash=st.booleans(), crash2=st.booleans())
    def two_children_end_at_once(self, n: int, m: int, crash: bool, crash2: bool) -> None:
        """Two running children end in the same loop turn: the supervisor handles
        the first exit while the second is queued (stale if its round stops it)."""
        running = self.running()
        first = running[n % len(running)]
        second = running[(n + m) % len(running)]
        if second is first:
            second = running[(n + 1) % len(running)]
        for kid, abnormal in ((first, crash), (second, crash2)):
            getattr(self.crew, "crash" if abnormal else "finish")(kid.id)
            self.log.append(("stop", kid.id, "crash" if abnormal else "finish"))
        self.ended[second.id] = "exception" if crash2 else "normal"
        self.model_down(first, abnormal=crash)
        if self.ended.pop(second.id, None) is not None:  # not stopped by the first's round
            self.model_down(second, abnormal=crash2)
        self.settle()

    @precondition(lambda self: any(k.running and k.restart != "temporary" for k in self.kids))
    @rule(n=st.integers(0, 5), m=st.integers(0, 5))
    def crash_with_a_failing_restart(self, n: int, m: int) -> None:
        """A child crashes and one child of its restart round fails to start once."""
        crashing = [k for k in self.running() if k.restart != "temporary"]
        kid = crashing[n % len(crashing)]
        scope = self.scope(kid)
        round = [k for k in scope if k is kid or k.restart != "temporary" or not k.running]
        failing = round[m % len(round)]
        self.crew.fail_next[failing.id] = 1
        self.crew.crash(kid.id)
        self.log.append(("stop", kid.id, "crash"))
        self.model_down(kid, abnormal=True, failing={failing.id})
        self.settle()
        assert self.crew.fail_next[failing.id] == 0

    @rule(id=IDS, restart=RESTARTS)
    def start_child(self, id: str, restart: RestartType) -> None:
        assert self.sup is not None
        kid = self.kid(id)
        spec = self.crew.spec(id, restart=restart)
        if kid is not None:
            with pytest.raises(SupervisorError) as info:
                self.call(self.sup.start_child(spec))
            if kid.running:
                assert info.value.reason == "already_started"
                assert info.value.handle is self.handles[id]
            else:
                assert info.value.reason == "already_present"
            assert info.value.child == id
        else:
            row = self.call(self.sup.start_child(spec))
            assert (row.id, row.status, row.restart) == (id, "running", restart)
            self.kids.append(Kid(id, restart))
            self.forget(id)
            self.log.append(("start", id, 0))
        self.settle()

    @precondition(lambda self: len(self.kids) < len(POOL))
    @rule(n=st.integers(0, 5), restart=RESTARTS)
    def start_child_that_fails(self, n: int, restart: RestartType) -> None:
        """A new child raising before ready: StartError, and its spec is not kept."""
        assert self.sup is not None
        free = [id for id in POOL if self.kid(id) is None]
        id = free[n % len(free)]
        self.crew.fail_start.add(id)
        try:
            with pytest.raises(StartError) as info:
                self.call(self.sup.start_child(self.crew.spec(id, restart=restart)))
        finally:
            self.crew.fail_start.discard(id)
        assert info.value.child == id
        assert isinstance(info.value.__cause__, Boom)
        self.log += [("start", id, 0), ("stop", id, "failed")]
        self.settle()

    def teardown(self) -> None:
        try:
            if self.sup is not None:
                self.call(self.sup.stop())
                assert self.sup.state == "stopped"
                # Shutdown: every running child, in reverse start order.
                for kid in reversed(self.running()):
                    self.log.append(("stop", kid.id, "cancelled"))
                    self.exited.append((kid.id, "shutdown", False))
                    kid.running = False
                assert self.observed()[2:] == self.expected()[2:]
        finally:
            self.stack.close()


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_supervisor_matches_the_otp_model(strategy: Strategy) -> None:
    machine = type(f"SupervisorMachine_{strategy}", (SupervisorMachine,), {"strategy": strategy})
    run_state_machine_as_test(machine, settings=SETTINGS)


@settings(max_examples=15, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    restarts=st.lists(st.sampled_from(["permanent", "transient"]), min_size=1, max_size=3),
    max_restarts=st.integers(0, 3),
    data=st.data(),
)
def test_exceeding_the_restart_intensity_stops_the_supervisor(
    strategy: Strategy, restarts: list[RestartType], max_restarts: int, data: st.DataObject
) -> None:
    """max_restarts restarts are made; the next crash stops every child in
    reverse order and the supervisor fails with RestartIntensityExceeded.
    Management calls (terminate_child then restart_child) do not count."""
    ids = POOL[: len(restarts)]
    crashes = data.draw(
        st.lists(st.sampled_from(ids), min_size=max_restarts + 1, max_size=max_restarts + 1)
    )
    manual = data.draw(st.lists(st.sampled_from(ids), max_size=3))

    def scope_size(id: str) -> int:
        """How many children a crash of ``id`` restarts under ``strategy``."""
        if strategy == "one_for_one":
            return 1
        return len(ids) if strategy == "one_for_all" else len(ids) - ids.index(id)

    async def scenario() -> None:
        crew = Crew()
        specs = [crew.spec(id, restart=r) for id, r in zip(ids, restarts, strict=True)]
        sup = Supervisor(specs, strategy=strategy, max_restarts=max_restarts, max_seconds=3600)
        with captured_events() as events:
            await sup.start()

            def restarted() -> int:
                return sum(1 for n, _ in events if n == "supervisor.child_restarted")

            for id in manual:
                await sup.terminate_child(id)
                await sup.restart_child(id)
            assert sup.count_children().active == len(ids)
            for id in crashes[:-1]:
                target = restarted() + scope_size(id)
                crew.crash(id)

                def restarted_all(target: int = target) -> bool:
                    return restarted() == target and sup.count_children().active == len(ids)

                await until(restarted_all)
            last = crashes[-1]
            stops_before = len(crew.stops())
            crew.crash(last)
            with pytest.raises(RestartIntensityExceeded) as info:
                await sup.wait()
        assert sup.state == "failed"
        assert sup.failure is info.value
        assert isinstance(info.value.__cause__, Boom)
        assert f"'{last}'" in str(info.value)
        # The crashed child, then every other child in reverse start order.
        assert crew.stops()[stops_before:] == [last] + [i for i in reversed(ids) if i != last]
        assert [c.status for c in sup.which_children()] == ["stopped"] * len(ids)
        names = [n for n, _ in events]
        assert names.count("supervisor.intensity_exceeded") == 1
        assert names.count("supervisor.child_restarted") == sum(map(scope_size, crashes[:-1]))
        with pytest.raises(SupervisorError) as refused:
            await sup.restart_child(ids[0])
        assert refused.value.reason == "supervisor_not_running"

    asyncio.run(asyncio.wait_for(scenario(), SETTLE_TIMEOUT * 3))
