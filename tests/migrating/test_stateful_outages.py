"""Stateful property test: MigratingRegistry across target and legacy outages and flips.

Both sides are real ``MemoryRegistry`` stores whose ``status()`` the test
switches between ``connected`` and ``disconnected`` (``Switched``): the state
a ``RedisRegistry`` reports in an outage, while the store itself may still
take writes (a Redis node recovering). The legacy side is shared, so its
outages reach the deferred legacy mirrors (rule 7) as the target's reach the
skipped target mirrors (rule 6).

The model is what the facade acknowledged, per key: ``model[key] = (agent,
metadata)``. Writes must answer as the model says. Reads must return the
model's answer, except from a side whose ``status()`` says down: "nothing is
tried while ``status()`` says Redis is down" (README, both ``MigratingRegistry``
outage rows), so such a read may show an older acknowledged state of the key
(never a dead agent). Once both sides say ``connected`` again and
``readiness()``/``divergences()`` retried ("and by ``readiness()``,
``divergences()`` and ``finish()``"), lookups with the flag on and with it off
return exactly the model, and ``divergences()`` is empty.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from foundation import FeatureFlags, MigratingRegistry
from foundation.errors import AlreadyRegistered, BackendUnavailable, NotRegistered
from tests.migrating.support import FLAG, FLAGS, Agents, wait_until
from tests.migrating.test_skipped_copy_flip import Switched

KEYS = ("a", "b", "c")
KEY = st.sampled_from(KEYS)
META = st.fixed_dictionaries({"v": st.integers(0, 3)})
DOWN = "disconnected"

Value = tuple[Any, dict[str, int]]


class OutageMachine(RuleBasedStateMachine):
    """The facade against the acknowledged-outcome model, with outages and flips."""

    @initialize(flag_on=st.booleans())
    def start(self, flag_on: bool) -> None:
        self.agents = Agents()
        self.flags = FeatureFlags(FLAGS)
        self.flags.set(FLAG, flag_on)
        self.legacy, self.target = Switched(), Switched()
        self.reg = MigratingRegistry(self.legacy, self.target, self.flags)
        self.on = flag_on
        self.model: dict[str, Value] = {}
        # Every state a key was acknowledged in (None: absent): what a read from
        # a side that says it is down may still show.
        self.history: dict[str, list[Value | None]] = {k: [None] for k in KEYS}
        self.live: list[Any] = [self.agents.new() for _ in range(3)]
        self.dead: list[Any] = []

    def teardown(self) -> None:
        if hasattr(self, "reg"):
            try:
                self.recover_and_check()
            finally:
                self.reg.close()
                self.flags.close()
                self.agents.close()

    def _ack(self, key: str, value: Value | None) -> None:
        if value is None:
            self.model.pop(key, None)
        else:
            self.model[key] = value
        self.history[key].append(value)

    def _answering_side_down(self) -> bool:
        side = self.target if self.on else self.legacy
        return side.state == DOWN

    # ------------------------------------------------------------------ rules

    def _shown(self, key: str, *, superseding: bool = False) -> list[Value | None]:
        """The states a write of ``key`` may act on: the model's, and the
        answering backend's own entry (always in the key's history) while it
        says it is down ("nothing is tried while ``status()`` says Redis is
        down", README outage rows) or, for a flag-on register or unregister
        (``superseding``), while a retry may still be due: "a flag-on register
        or unregister of the key supersedes its retry" (module doc, rule 6;
        only an update and a read apply the retries first)."""
        states = [self.model.get(key)]
        if self._answering_side_down() or (superseding and self.on):
            entry = (self.target if self.on else self.legacy).lookup(key)
            shown = None if entry is None else (entry.agent, dict(entry.metadata))
            assert shown in self.history[key], (key, shown, self.history[key])
            states.append(shown)
        return states

    @rule(key=KEY, meta=META, replace=st.booleans(), pick=st.integers(0, 9))
    def register(self, key: str, meta: dict[str, int], replace: bool, pick: int) -> None:
        agent = self.live[pick % len(self.live)]
        held = [state is not None for state in self._shown(key, superseding=True)]
        try:
            self.reg.register(key, agent, meta, replace=replace)
        except AlreadyRegistered:
            assert not replace, (key, self.model)
            assert any(held), (key, self.model)
            return
        assert replace or not all(held), (key, self.model)
        self._ack(key, (agent, meta))

    @rule(key=KEY)
    def unregister(self, key: str) -> None:
        held = [state is not None for state in self._shown(key, superseding=True)]
        assert self.reg.unregister(key) in held, (key, self.model)
        self._ack(key, None)  # whatever it said, the key is no longer registered

    @rule(key=KEY, meta=META)
    def update(self, key: str, meta: dict[str, int]) -> None:
        states = self._shown(key)
        try:
            self.reg.update_metadata(key, meta)
        except NotRegistered:
            assert None in states, (key, self.model)
            return
        except BackendUnavailable:
            # A key unregistered during the outage, whose stale copy the side
            # that says it is down still answers: nothing definitive until the
            # copy is settled (nothing written).
            assert self._answering_side_down(), (key, self.model)
            assert None in states, (key, self.model)
            return
        held = [state for state in states if state is not None]
        assert held, (key, self.model)
        self._ack(key, (held[0][0], meta))  # the model's registration if it has one

    @rule(pick=st.integers(0, 9))
    def end_agent(self, pick: int) -> None:
        agent = self.live.pop(pick % len(self.live))
        self.agents.kill(agent)  # the thread has ended: joined
        self.live.append(self.agents.new())
        self.dead.append(agent)

        def gone() -> bool:
            return all(
                e.agent is not agent for side in (self.legacy, self.target) for e in side.query([])
            )

        # Wait (with a deadline) until both stores have seen the death.
        assert wait_until(gone), "a store still holds an ended agent"
        for key in [k for k, v in self.model.items() if v[0] is agent]:
            self._ack(key, None)

    @rule()
    def flip(self) -> None:
        self.on = not self.on
        if self.on:
            self.flags.enable(FLAG)
        else:
            self.flags.disable(FLAG)

    @rule()
    def target_outage_starts_or_ends(self) -> None:
        self.target.state = "connected" if self.target.state == DOWN else DOWN

    @rule()
    def legacy_outage_starts_or_ends(self) -> None:
        self.legacy.state = "connected" if self.legacy.state == DOWN else DOWN

    @rule(now=st.integers(0, 3))
    def recover(self, now: int) -> None:
        """Now and then (``now == 0``, so outages last a few steps): ``recover_and_check``."""
        if now == 0:
            self.recover_and_check()

    def recover_and_check(self) -> None:
        """Both sides back; once retried, the flag on and off both show the model."""
        self.target.state = self.legacy.state = "connected"
        assert self.reg.readiness() == [], self.model
        assert self.reg.divergences() == [], "a false divergence"
        for on in (self.on, not self.on, self.on):
            self.flags.set(FLAG, on)
            assert self._read() == self._expected(), (on, self.model)
        assert self.reg.divergences() == []

    # ------------------------------------------------------------------ invariants

    def _read(self) -> dict[str, Value]:
        got = {k: self.reg.lookup(k) for k in KEYS}
        return {k: (e.agent, dict(e.metadata)) for k, e in got.items() if e is not None}

    def _expected(self) -> dict[str, Value]:
        return dict(self.model)

    @rule()
    def read_all(self) -> None:
        """A rule, not an invariant: so a write may be the first call after a
        flip or an outage's end (the retries then run before that write)."""
        got = self._read()
        for agent, _ in got.values():
            assert agent not in self.dead, "a dead agent surfaced"
        if not self._answering_side_down():
            assert got == self._expected(), (self.on, self.target.state, self.legacy.state)
            return
        # The answering side says it is down: nothing is retried, an older
        # acknowledged state may show (README outage rows).
        for key in KEYS:
            assert got.get(key) in self.history[key], (key, got.get(key), self.history[key])


def test_an_update_of_a_key_registered_again_during_a_legacy_outage() -> None:
    """The machine's shrunk failure (found by longer runs: 100 steps), replayed.

    The legacy side says down throughout (it still takes writes, a Redis node
    recovering). ``a`` registered with the flag off, unregistered with the flag
    on (the legacy copy stays, its removal due), registered again with the flag
    on for another agent (its legacy mirror deferred). A flag-off update then
    raised ``BackendUnavailable`` as if ``a`` were unregistered: it must write
    the deferred registration itself, with the new metadata (README, legacy
    outage row: "an update writes the retried registration itself").
    """
    machine = OutageMachine()
    machine.start(flag_on=False)
    try:
        machine.legacy_outage_starts_or_ends()
        # pick=1 and pick=0 below are two different live agents (live[1], live[0]).
        machine.register(key="a", meta={"v": 0}, replace=False, pick=1)
        machine.flip()
        machine.unregister(key="a")
        machine.register(key="a", meta={"v": 0}, replace=False, pick=0)
        machine.flip()
        machine.update(key="a", meta={"v": 1})
        machine.read_all()  # the legacy side, still saying down, shows the update
        assert machine.model["a"] == (machine.live[0], {"v": 1})
    finally:
        machine.teardown()  # both sides back: flag on and off show the model


OutageMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_migrating_registry_matches_the_model_across_outages = OutageMachine.TestCase
