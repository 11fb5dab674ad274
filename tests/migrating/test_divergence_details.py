"""MigratingRegistry over a shared legacy side: what a divergence names.

With a shared legacy backend every thread sees one view, and a mirror is
often applied by another thread than the writer (a pass or a pump that runs
other threads' requests). A divergence still names the thread whose write it
mirrors, and its own error: the registers a failing pass never tried say so,
rather than all carrying the first failure's text. The backends are real
``MemoryRegistry`` stores; the legacy one holds its register of one key open
with a gate (as a frozen Redis holds a call) and then fails it with
``BackendUnavailable``.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, telemetry
from foundation.errors import BackendUnavailable
from tests.migrating.support import FLAG, FLAGS, Agents

DEADLINE = 20.0  # seconds: far beyond what the calls need


class Gated(MemoryRegistry):
    """A real ``MemoryRegistry`` whose ``register`` of ``gate_key`` reports
    ``entered``, waits for ``release`` and fails, as a frozen Redis does."""

    def __init__(self, gate_key: Hashable) -> None:
        super().__init__()
        self.gate_key = gate_key
        self.entered = threading.Event()
        self.release = threading.Event()

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(state="connected")

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        if key == self.gate_key and not self.release.is_set():
            self.entered.set()
            assert self.release.wait(DEADLINE), "the gate was never released"
            raise BackendUnavailable(f"the server did not answer while registering {key!r}")
        super().register(key, agent, metadata, replace=replace)


@pytest.fixture
def divergences() -> Iterator[list[Mapping[str, Any]]]:
    """The ``registry.divergence`` telemetry events, in order."""
    seen: list[Mapping[str, Any]] = []
    detach = telemetry.attach("registry.divergence", lambda _name, data: seen.append(data))
    yield seen
    detach()


def test_a_pass_in_another_thread_books_each_writers_thread_and_its_own_error(
    agents: Agents, divergences: list[Mapping[str, Any]]
) -> None:
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    legacy = Gated(gate_key=10)
    reg = MigratingRegistry(legacy, MemoryRegistry(), flags)
    writers: dict[int, int] = {}
    errors: list[BaseException] = []

    def write(key: int) -> None:
        writers[key] = threading.get_ident()
        try:
            reg.register(key, agents.new(), {"k": key})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        first = threading.Thread(target=write, args=(10,), name="writer-10")
        first.start()  # its pass holds the legacy register of 10 open
        assert legacy.entered.wait(DEADLINE), "the pass never reached the legacy side"
        for key in (11, 12):  # their passes are left to the one in flight
            other = threading.Thread(target=write, args=(key,), name=f"writer-{key}")
            other.start()
            other.join(DEADLINE)
            assert not other.is_alive(), f"writer {key} waited for the pass in flight"
        legacy.release.set()  # the register of 10 fails: the pass stops
        first.join(DEADLINE)
        assert not first.is_alive()
        assert errors == []
        booked = {d["key"]: d for d in divergences}
        assert sorted(booked) == [10, 11, 12], divergences
        for key, data in booked.items():
            assert data["thread"] == writers[key], (key, data, writers)
        assert "registering 10" in booked[10]["reason"], booked[10]
        assert "not tried" not in booked[10]["reason"], booked[10]
        for key in (11, 12):
            assert "not tried" in booked[key]["reason"], booked[key]
        assert reg.readiness() == []  # retried: the legacy side takes them now
    finally:
        legacy.release.set()
        reg.close()
