"""Each backend against a plain dict model, driven by the same random operations.

After every step the backend and the model must agree on every read. A killed
agent dies asynchronously: the kill rule waits (with a deadline) until the
registry no longer shows it, then the model drops its keys.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from foundation.errors import AlreadyRegistered, NotAlive, NotRegistered
from foundation.registry import Registry
from tests.contract.agents import Agents, LoopThread, wait_until
from tests.contract.backends import BackendSpec, backend_params
from tests.contract.conftest import INDEXED

KEYS = st.sampled_from(["a", "b", "c", ("t", 1), 7])
ROLES = st.sampled_from(["io", "cpu", "gpu"])
TAGS = st.lists(st.sampled_from(["x", "y", "z"]), max_size=3)
METADATA = st.fixed_dictionaries({"role": ROLES, "tags": TAGS}, optional={"n": st.integers(0, 3)})
KINDS = st.sampled_from(["future", "thread", "task"])


def model_matches(metadata: dict[str, Any], attr: str, op: str, value: Any) -> bool:
    """The query rule, written out independently for the values this model uses."""
    if attr not in metadata:
        return False
    stored = metadata[attr]
    if op == "eq":
        return bool(stored == value or (isinstance(stored, list) and value in stored))
    # op == "in"
    return stored in value or (isinstance(stored, list) and any(s in value for s in stored))


def make_machine(
    backend: BackendSpec, request: pytest.FixtureRequest, loop: LoopThread
) -> type[RuleBasedStateMachine]:
    class RegistryMachine(RuleBasedStateMachine):
        agents_bundle = Bundle("agents")

        def __init__(self) -> None:
            super().__init__()
            self.context = backend.make(request, INDEXED)
            self.registry: Registry = self.context.__enter__()
            self.agents = Agents(loop)
            self.model: dict[Any, tuple[Any, dict[str, Any]]] = {}
            self.dead: set[int] = set()

        def teardown(self) -> None:
            try:
                self.agents.close()
            finally:
                self.context.__exit__(None, None, None)

        @rule(target=agents_bundle, kind=KINDS)
        def new_agent(self, kind: str) -> Any:
            return self.agents.new(kind)

        @rule(key=KEYS, agent=agents_bundle, metadata=METADATA, replace=st.booleans())
        def register(self, key: Any, agent: Any, metadata: dict[str, Any], replace: bool) -> None:
            if id(agent) in self.dead:
                with pytest.raises(NotAlive):
                    self.registry.register(key, agent, metadata, replace=replace)
                return
            if key in self.model and not replace:
                with pytest.raises(AlreadyRegistered) as caught:
                    self.registry.register(key, agent, metadata)
                assert caught.value.entry.agent is self.model[key][0]
                return
            self.registry.register(key, agent, metadata, replace=replace)
            self.model[key] = (agent, metadata)

        @rule(key=KEYS)
        def unregister(self, key: Any) -> None:
            assert self.registry.unregister(key) is (key in self.model)
            self.model.pop(key, None)

        @rule(key=KEYS, metadata=METADATA)
        def update(self, key: Any, metadata: dict[str, Any]) -> None:
            if key in self.model:
                self.registry.update_metadata(key, metadata)
                self.model[key] = (self.model[key][0], metadata)
            else:
                with pytest.raises(NotRegistered):
                    self.registry.update_metadata(key, metadata)

        @rule(agent=consumes(agents_bundle))
        def kill(self, agent: Any) -> None:
            self.agents.kill(agent)
            self.dead.add(id(agent))
            affected = [k for k, (a, _) in self.model.items() if a is agent]
            assert wait_until(lambda: all(self.registry.lookup(k) is None for k in affected))
            for k in affected:
                del self.model[k]

        @rule(key=KEYS)
        def lookup(self, key: Any) -> None:
            entry = self.registry.lookup(key)
            if key in self.model:
                assert entry is not None
                assert entry.agent is self.model[key][0]
                assert entry.metadata == {
                    k: tuple(v) if isinstance(v, list) else v for k, v in self.model[key][1].items()
                }
            else:
                assert entry is None

        @rule(
            attr=st.sampled_from(["role", "tags", "n"]),
            op=st.sampled_from(["eq", "in"]),
            value=st.sampled_from(["io", "cpu", "x", "y", 1, 2]),
        )
        def query(self, attr: str, op: str, value: Any) -> None:
            arg: Any = value if op == "eq" else [value, "gpu"]
            expected = {k for k, (_, md) in self.model.items() if model_matches(md, attr, op, arg)}
            got = {e.key for e in self.registry.query([(attr, op, arg)])}
            assert got == expected
            if op == "eq":
                assert {e.key for e in self.registry.find_by_attribute(attr, value)} == expected

        @invariant()
        def agrees_with_the_model(self) -> None:
            assert {e.key for e in self.registry.list_all()} == set(self.model)
            assert self.registry.count() == len(self.registry) == len(self.model)
            expected_monitors = len(self.model) if backend.monitors_agents else 0
            assert backend.monitor_count(self.registry) == expected_monitors

    return RegistryMachine


@pytest.mark.parametrize("backend", backend_params(), indirect=True)
def test_backend_agrees_with_a_dict_model(
    backend: BackendSpec, request: pytest.FixtureRequest, loop_thread: LoopThread
) -> None:
    machine = make_machine(backend, request, loop_thread)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
