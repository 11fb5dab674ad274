"""A query's error that is no fault of its criteria raises as it is.

``query`` turns an error raised by a criterion's non-plain value when compared
into ``InvalidCriteria`` (the caller's bug, named). Anything else is not the
caller's: a ``ThreadLocalRegistry`` checks each entry's liveness at read time,
and an agent whose ``is_alive()`` raises made a query with a plain value raise
``InvalidCriteria`` ("its value raised RuntimeError when compared"), blaming
the criteria. Now the liveness checks run outside, and the comparisons are
guarded only when some value is non-plain: the agent's error raises as it is.

Real threads (a ``threading.Thread`` subclass whose ``is_alive`` can be made to
raise), a real ``ThreadLocalRegistry``, indexed and not.
"""

from __future__ import annotations

import threading

import pytest

from foundation import ThreadLocalRegistry
from foundation.registry import Criterion


class FaultyThread(threading.Thread):
    """A real thread whose liveness check raises once ``faulty`` is set."""

    faulty = False

    def is_alive(self) -> bool:
        if self.faulty:
            raise RuntimeError("the agent's own is_alive bug")
        return super().is_alive()


class Tag(str):
    """A non-plain query value (it redefines equality) whose comparisons work."""

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    __hash__ = str.__hash__


CRITERIA: list[list[Criterion]] = [
    [("role", "eq", "io")],  # plain: an index answers it where there is one
    [("role", "in", {"io"})],  # plain set
    [("x", "gte", "io")],  # plain, scanned
    [("role", "eq", Tag("io"))],  # non-plain: the comparisons are guarded
]


@pytest.mark.parametrize("indexed", [(), ("role",)])
@pytest.mark.parametrize("criteria", CRITERIA)
def test_an_agents_liveness_error_is_not_blamed_on_the_criteria(
    indexed: tuple[str, ...], criteria: list[Criterion]
) -> None:
    release = threading.Event()
    agent = FaultyThread(target=release.wait, daemon=True)
    agent.start()
    reg = ThreadLocalRegistry(indexed=indexed)
    try:
        reg.register("k", agent, {"role": "io", "x": "io"})
        assert [e.key for e in reg.query(criteria)] == ["k"]
        agent.faulty = True
        with pytest.raises(RuntimeError, match="the agent's own is_alive bug") as caught:
            reg.query(criteria)
        assert type(caught.value) is RuntimeError  # not InvalidCriteria (a ValueError)
        agent.faulty = False
        assert [e.key for e in reg.query(criteria)] == ["k"]
    finally:
        agent.faulty = False
        release.set()
        agent.join()
        reg.close()
