"""Stateful property test: two threads, register/unregister/update/kill/lookup/query, and flips.

The model is the specification of MigratingRegistry over a per-thread legacy
store and a shared target:

- ``shared[key] = (agent, metadata, owner)``: the target; ``owner`` is the
  thread whose legacy store holds its mirror;
- ``views[thread][key] = (agent, metadata, kind)``: each thread's legacy
  store, ``kind`` is ``"mirror"`` or ``"div"`` (a private copy the target
  refused: a divergence).

With the flag on, a thread sees ``shared``; with it off, its own view.
"""

from __future__ import annotations

import threading
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from foundation import MemoryRegistry
from foundation.errors import AlreadyRegistered, NotAlive, NotRegistered
from tests.migrating.support import FLAG, Agents, Worker, legacy_backend, make

KEYS = st.sampled_from(["a", "b", "c"])
THREADS = st.sampled_from(["main", "worker"])
META = st.fixed_dictionaries({"v": st.integers(0, 3)})

Shared = dict[str, tuple[Any, dict[str, int], str]]
View = dict[str, tuple[Any, dict[str, int], str]]


class MigratingMachine(RuleBasedStateMachine):
    """MigratingRegistry against the model above, with the flag flipped at any step."""

    SHARED_LEGACY = False  # a per-thread legacy store (one view per thread)

    def owner(self, thread: str) -> str:
        """Whose legacy view a thread writes: its own, or the one shared view."""
        return "shared" if self.SHARED_LEGACY else thread

    @initialize(flag_on=st.booleans())
    def start(self, flag_on: bool) -> None:
        self.agents = Agents()
        self.worker = Worker("stateful-worker")
        self.target = MemoryRegistry()
        legacy = MemoryRegistry() if self.SHARED_LEGACY else legacy_backend()
        self.reg, self.flags = make(flag_on, legacy=legacy, target=self.target)
        self.on = flag_on
        self.shared: Shared = {}
        owners = ["shared"] if self.SHARED_LEGACY else ["main", "worker"]
        self.views: dict[str, View] = {owner: {} for owner in owners}
        self.live: list[Any] = [self.agents.new() for _ in range(3)]
        self.idents = {"main": threading.get_ident(), "worker": self.worker.thread.ident}
        self.idents["shared"] = -1  # a shared legacy never diverges here: both accept every key

    def teardown(self) -> None:
        if hasattr(self, "reg"):
            self.reg.close()
            self.flags.close()
            self.worker.stop()
            self.agents.close()

    def call(self, thread: str, fn: Any) -> Any:
        return fn() if thread == "main" else self.worker.run(fn)

    def expect(self, thread: str, fn: Any, error: type[BaseException] | None) -> Any:
        if error is not None:
            with pytest.raises(error):
                self.call(thread, fn)
            return None
        return self.call(thread, fn)

    # ------------------------------------------------------------------ rules

    @rule()
    def flip(self) -> None:
        self.on = not self.on
        self.flags.set(FLAG, self.on)

    @rule(thread=THREADS, key=KEYS, meta=META, replace=st.booleans(), pick=st.integers(0, 9))
    def register(
        self, thread: str, key: str, meta: dict[str, int], replace: bool, pick: int
    ) -> None:
        agent = self.live[pick % len(self.live)]
        owner = self.owner(thread)
        view = self.views[owner]
        if self.on:
            held = self.shared.get(key)
            error = AlreadyRegistered if held is not None and not replace else None
            self.expect(thread, lambda: self.reg.register(key, agent, meta, replace=replace), error)
            if error is None:
                if held is not None and held[2] != owner:
                    self._drop_mirror(held[2], key)
                self.shared[key] = (agent, meta, owner)
                view[key] = (agent, meta, "mirror")
            return
        error = AlreadyRegistered if key in view and not replace else None
        self.expect(thread, lambda: self.reg.register(key, agent, meta, replace=replace), error)
        if error is None:
            held = self.shared.get(key)
            if held is None or held[2] == owner:
                self.shared[key] = (agent, meta, owner)
                view[key] = (agent, meta, "mirror")
            else:
                view[key] = (agent, meta, "div")

    @rule(thread=THREADS, key=KEYS)
    def register_dead_agent(self, thread: str, key: str) -> None:
        dead = self.agents.dead()
        self.expect(thread, lambda: self.reg.register(key, dead, replace=True), NotAlive)

    @rule(thread=THREADS, key=KEYS)
    def unregister(self, thread: str, key: str) -> None:
        owner = self.owner(thread)
        view = self.views[owner]
        result = self.call(thread, lambda: self.reg.unregister(key))
        if self.on:
            held = self.shared.pop(key, None)
            assert result is (held is not None)
            if held is not None and held[2] != owner:
                self._drop_mirror(held[2], key)
            view.pop(key, None)
            return
        copy = view.pop(key, None)
        assert result is (copy is not None)
        if copy is not None and copy[2] == "mirror":
            del self.shared[key]

    @rule(thread=THREADS, key=KEYS, meta=META)
    def update(self, thread: str, key: str, meta: dict[str, int]) -> None:
        owner = self.owner(thread)
        view = self.views[owner]
        if self.on:
            held = self.shared.get(key)
            error = NotRegistered if held is None else None
            self.expect(thread, lambda: self.reg.update_metadata(key, meta), error)
            if held is not None:
                agent, _, owner = held
                self.shared[key] = (agent, meta, owner)
                self.views[owner][key] = (agent, meta, "mirror")
            return
        copy = view.get(key)
        error = NotRegistered if copy is None else None
        self.expect(thread, lambda: self.reg.update_metadata(key, meta), error)
        if copy is not None:
            view[key] = (copy[0], meta, copy[2])
            if copy[2] == "mirror":
                self.shared[key] = (copy[0], meta, owner)

    @rule(pick=st.integers(0, 9))
    def kill(self, pick: int) -> None:
        agent = self.live.pop(pick % len(self.live))
        self.agents.kill(agent)
        self.live.append(self.agents.new())
        for table in (self.shared, *self.views.values()):
            for key in [k for k, v in table.items() if v[0] is agent]:
                del table[key]

    @precondition(lambda self: hasattr(self, "reg"))
    @rule(thread=THREADS)
    def query_all(self, thread: str) -> None:
        entries = self.call(thread, lambda: self.reg.query([]))
        assert sorted(e.key for e in entries) == sorted(self._seen_by(thread))

    def _drop_mirror(self, owner: str, key: str) -> None:
        copy = self.views[owner].get(key)
        if copy is not None and copy[2] == "mirror":
            del self.views[owner][key]

    def _seen_by(self, thread: str) -> dict[str, tuple[Any, dict[str, int], str]]:
        return self.shared if self.on else self.views[self.owner(thread)]

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lookups_match_the_model_in_both_threads(self) -> None:
        if not hasattr(self, "reg"):
            return
        for thread in ("main", "worker"):
            expected = {k: (v[0], v[1]) for k, v in self._seen_by(thread).items()}
            got = self.call(thread, lambda: {k: self.reg.lookup(k) for k in ("a", "b", "c")})
            got_pairs = {k: (e.agent, dict(e.metadata)) for k, e in got.items() if e is not None}
            assert got_pairs == expected, (thread, self.on)
            assert self.call(thread, self.reg.count) == len(expected)

    @invariant()
    def divergences_match_the_model(self) -> None:
        if not hasattr(self, "reg"):
            return
        expected = {
            (k, self.idents[t])
            for t, view in self.views.items()
            for k, v in view.items()
            if v[2] == "div"
        }
        assert {(d.key, d.thread) for d in self.reg.divergences()} == expected

    @invariant()
    def the_target_monitors_exactly_its_entries(self) -> None:
        if not hasattr(self, "reg"):
            return
        stats = self.target.stats()
        assert stats.entries == stats.monitors == len(self.shared)
        if self.SHARED_LEGACY:
            legacy = self.reg.legacy.stats()  # type: ignore[attr-defined]
            assert legacy.entries == legacy.monitors == len(self.views["shared"])


class SharedLegacyMachine(MigratingMachine):
    """The same, over a shared legacy store (memory -> memory): one view for all threads."""

    SHARED_LEGACY = True


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MigratingMachine.TestCase.settings = SETTINGS
SharedLegacyMachine.TestCase.settings = settings(SETTINGS, max_examples=30)
test_migrating_registry_matches_the_model_across_flips = MigratingMachine.TestCase
test_shared_legacy_matches_the_model_across_flips = SharedLegacyMachine.TestCase
