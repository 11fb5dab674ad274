"""one_for_one, one_for_all, rest_for_one; permanent, transient, temporary."""

from __future__ import annotations

import pytest

from foundation.supervision import RestartType, Supervisor
from tests.supervision._support import Crew, captured_events, run, until


def running(sup: Supervisor) -> list[str]:
    return [c.id for c in sup.which_children() if c.status == "running"]


@run
async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("a"), crew.spec("b"), crew.spec("c")]) as sup:
        crew.crash("b")
        await until(lambda: crew.starts("b") == ["b", "b"] and running(sup) == ["a", "b", "c"])
        assert crew.starts() == ["a", "b", "c", "b"]
        assert crew.stops() == ["b"]
        assert [c.restarts for c in sup.which_children()] == [0, 1, 0]


@run
async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        crew.crash("b")
        await until(lambda: len(crew.starts()) == 6 and running(sup) == ["a", "b", "c"])
        assert crew.stops() == ["b", "c", "a"]
        assert crew.starts()[3:] == ["a", "b", "c"]


@run
async def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c"), crew.spec("d")]
    async with Supervisor(specs, strategy="rest_for_one") as sup:
        crew.crash("b")
        await until(lambda: len(crew.starts()) == 7 and len(running(sup)) == 4)
        assert crew.stops() == ["b", "d", "c"]
        assert crew.starts()[4:] == ["b", "c", "d"]


@run
async def test_one_for_all_drops_a_temporary_sibling_it_had_to_stop() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("tmp", restart="temporary"), crew.spec("c")]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        crew.crash("c")
        await until(lambda: running(sup) == ["a", "c"] and len(crew.starts()) == 5)
        assert [c.id for c in sup.which_children()] == ["a", "c"]


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        ("permanent", "crash", True),
        ("permanent", "finish", True),
        ("transient", "crash", True),
        ("transient", "finish", False),
        ("temporary", "crash", False),
        ("temporary", "finish", False),
    ],
)
def test_restart_type_decides_whether_an_ended_child_comes_back(
    restart: RestartType, how: str, restarted: bool
) -> None:
    @run
    async def scenario() -> None:
        crew = Crew()
        with captured_events() as events:
            async with Supervisor([crew.spec("x", restart=restart), crew.spec("y")]) as sup:
                getattr(crew, how)("x")
                await until(lambda: any(n == "supervisor.child_exited" for n, _ in events))
                exited = next(d for n, d in events if n == "supervisor.child_exited")
                assert exited["reason"] == ("exception" if how == "crash" else "normal")
                assert exited["restart"] is restarted
                if restarted:
                    await until(lambda: running(sup) == ["x", "y"])
                    assert crew.starts("x") == ["x", "x"]
                else:
                    # Proof that the exit was handled: the supervisor has processed it.
                    await until(lambda: "x" not in running(sup))
                    ids = [c.id for c in sup.which_children()]
                    if restart == "temporary":
                        assert ids == ["y"]  # its spec is dropped
                    else:
                        assert ids == ["x", "y"]
                        assert sup.which_children()[0].status == "stopped"
                    assert crew.starts("x") == ["x"]

    scenario()


@run
async def test_transient_child_cancelled_by_someone_else_is_an_abnormal_exit() -> None:
    crew = Crew()
    async with Supervisor([crew.spec("x", restart="transient")]) as sup:
        first = sup.which_children()[0].handle
        first.cancel()
        await until(lambda: crew.starts("x") == ["x", "x"] and running(sup) == ["x"])
        assert sup.which_children()[0].handle is not first


@run
async def test_a_failed_restart_in_one_for_all_restarts_the_whole_group_again() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    async with Supervisor(specs, strategy="one_for_all", max_restarts=5) as sup:
        crew.fail_next["b"] = 1
        crew.crash("a")
        await until(lambda: len(crew.starts()) == 8 and running(sup) == ["a", "b", "c"])
        # a crashes: c, b stopped; a restarts; b fails to start (one more crash):
        # a stopped again, then a, b, c start in order.
        assert crew.starts() == ["a", "b", "c", "a", "b", "a", "b", "c"]
        assert crew.stops() == ["a", "c", "b", "b", "a"]


@run
async def test_a_failed_restart_in_rest_for_one_keeps_the_later_children_pending() -> None:
    crew = Crew()
    specs = [crew.spec("a"), crew.spec("b"), crew.spec("c")]
    async with Supervisor(specs, strategy="rest_for_one", max_restarts=5) as sup:
        crew.fail_next["b"] = 2
        crew.crash("b")
        await until(lambda: len(crew.starts()) == 7 and running(sup) == ["a", "b", "c"])
        assert crew.starts() == ["a", "b", "c", "b", "b", "b", "c"]
        assert sup.which_children()[1].restarts == 3
