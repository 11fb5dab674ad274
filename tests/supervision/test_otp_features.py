"""Issue 10's missing OTP features: ignore, brutal_kill, significant children
with auto_shutdown, which_child/get_childspec/check_childspecs, already_started
with the handle, DynamicSupervisor's unsupported calls, spec validation."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation import errors
from foundation.errors import ShutdownError, SupervisorError
from foundation.supervision import (
    ChildContext,
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
    check_childspecs,
)
from tests._logs import Records, captured
from tests.supervision._support import Crew, captured_events, run, until


def reason(info: pytest.ExceptionInfo[SupervisorError]) -> str | None:
    return info.value.reason


class Gate:
    """Children that ignore their start while ``closed`` is set."""

    def __init__(self) -> None:
        self.closed = True
        self.starts: list[str] = []

    async def child(self, ctx: ChildContext) -> None:
        self.starts.append(ctx.id)
        if self.closed:
            ctx.ignore()
            return
        ctx.ready()
        await asyncio.Event().wait()


# ---------------------------------------------------------------------------- ignore
@run
async def test_an_ignored_child_of_a_static_supervisor_keeps_its_spec_stopped() -> None:
    gate, crew = Gate(), Crew()
    specs = [crew.spec("a"), ChildSpec("g", gate.child), crew.spec("b")]
    async with Supervisor(specs) as sup:
        # The start went on past it (the next child started).
        assert [(c.id, c.status) for c in sup.which_children()] == [
            ("a", "running"),
            ("g", "stopped"),
            ("b", "running"),
        ]
        assert sup.which_child("g").handle is None
        assert sup.count_children().active == 2
        # restart_child tries again: ignored again, then started.
        info = await sup.restart_child("g")
        assert info.status == "stopped"
        gate.closed = False
        info = await sup.restart_child("g")
        assert info.status == "running"
        assert gate.starts == ["g", "g", "g"]


@run
async def test_an_ignored_temporary_child_is_not_kept() -> None:
    gate = Gate()
    async with Supervisor([ChildSpec("g", gate.child, restart="temporary")]) as sup:
        assert sup.which_children() == []
        info = await sup.start_child(ChildSpec("h", gate.child, restart="temporary"))
        assert (info.id, info.status, info.handle) == ("h", "stopped", None)
        assert sup.which_children() == []


@run
async def test_an_ignored_dynamic_child_is_not_added() -> None:
    gate = Gate()
    async with DynamicSupervisor(ChildSpec("g", gate.child)) as sup:
        info = await sup.start_child()
        assert info.status == "stopped"
        assert info.handle is None
        assert sup.which_children() == []
        gate.closed = False
        info = await sup.start_child()
        assert info.status == "running"
        assert sup.count_children().active == 1


@run
async def test_one_for_all_starts_an_ignored_sibling_again() -> None:
    gate, crew = Gate(), Crew()
    specs = [crew.spec("a"), ChildSpec("g", gate.child)]
    async with Supervisor(specs, strategy="one_for_all") as sup:
        assert sup.which_child("g").status == "stopped"
        gate.closed = False
        crew.crash("a")
        await until(lambda: sup.which_child("g").status == "running")
        assert gate.starts == ["g", "g"]


@run
async def test_a_thread_child_can_ignore_and_ready_after_ignore_is_refused() -> None:
    outcome: list[str] = []

    def child(ctx: ChildContext) -> None:
        ctx.ignore()
        try:
            ctx.ready()
        except RuntimeError as exc:
            outcome.append(str(exc))

    async with Supervisor([ChildSpec("t", child)]) as sup:
        assert sup.which_child("t").status == "stopped"
    assert outcome == ["child 't' already called ignore()"]


# ---------------------------------------------------------------------------- brutal_kill
SIGTERM_SPY = """
import os, signal, sys
path = sys.argv[1]
def on_term(*_):
    with open(path, "a") as f:
        f.write("TERM\\n")
signal.signal(signal.SIGTERM, on_term)
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
while True:
    signal.pause()
"""


@run
async def test_brutal_kill_sends_sigkill_to_a_process_without_sigterm_first(
    tmp_path: Path,
) -> None:
    spy = tmp_path / "signals"
    spec = ChildSpec(
        "p",
        [sys.executable, "-c", SIGTERM_SPY, str(spy)],
        readiness="explicit",
        shutdown_timeout=0,
    )
    with captured_events() as events:
        async with Supervisor([spec]) as sup:
            proc = sup.which_child("p").handle
            await sup.terminate_child("p")
            assert proc.returncode == -signal.SIGKILL
    exits = [data for name, data in events if name == "supervisor.child_exited"]
    assert [(e["reason"], e["signal"]) for e in exits] == [("killed", signal.SIGKILL)]
    assert not spy.exists()  # never asked politely


@run
async def test_brutal_kill_cancels_a_task_without_waiting_for_its_cleanup() -> None:
    cleanup_started = asyncio.Event()
    release = asyncio.Event()

    async def slow_cleanup(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:
            cleanup_started.set()
            await release.wait()  # an orderly stop would wait for this

    async with Supervisor([ChildSpec("t", slow_cleanup, shutdown_timeout=0)]) as sup:
        task = sup.which_child("t").handle
        with pytest.raises(ShutdownError):  # it did not end: abandoned, not awaited
            await sup.terminate_child("t")
        assert cleanup_started.is_set()
        assert not task.done()
        release.set()
        await asyncio.wait({task})
        assert task.cancelled()


@run
async def test_brutal_kill_abandons_a_thread_at_once() -> None:
    asked = threading.Event()
    release = threading.Event()

    def polite_but_slow(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        asked.set()
        release.wait(30)

    try:
        async with Supervisor([ChildSpec("t", polite_but_slow, shutdown_timeout=0)]) as sup:
            thread = sup.which_child("t").handle
            # No waiting for the thread: it is abandoned while still running.
            with pytest.raises(ShutdownError, match="abandoned"):
                await sup.terminate_child("t")
            assert thread.is_alive()
            row = sup.which_child("t")  # still running, unsupervised: shown as such
            assert (row.status, row.handle) == ("abandoned", thread)
    finally:
        release.set()
    assert asked.wait(10)


# ---------------------------------------------------------------------------- significant
def test_significant_needs_a_non_permanent_child_and_an_auto_shutdown() -> None:
    crew = Crew()
    with pytest.raises(ValueError, match="significant child must be transient or temporary"):
        crew.spec("a", significant=True)
    with pytest.raises(ValueError, match="auto_shutdown is 'never'"):
        Supervisor([crew.spec("a", restart="transient", significant=True)])
    with pytest.raises(ValueError, match="auto_shutdown must be one of"):
        Supervisor([], auto_shutdown="sometimes")  # type: ignore[arg-type]
    Supervisor(
        [crew.spec("a", restart="temporary", significant=True)], auto_shutdown="any_significant"
    )


@run
async def test_any_significant_shuts_the_supervisor_down_when_one_ends() -> None:
    crew = Crew()
    specs = [
        crew.spec("a"),
        crew.spec("s", restart="temporary", significant=True),
        crew.spec("b"),
    ]
    sup = Supervisor(specs, auto_shutdown="any_significant")
    await sup.start()
    crew.finish("s")
    await sup.wait()  # ends normally: no failure
    assert sup.state == "stopped"
    assert sup.failure is None
    assert crew.stops() == ["s", "b", "a"]


@run
async def test_all_significant_waits_for_the_last_significant_child() -> None:
    crew = Crew()
    specs = [
        crew.spec("s1", restart="transient", significant=True),
        crew.spec("s2", restart="transient", significant=True),
        crew.spec("w"),
    ]
    sup = Supervisor(specs, auto_shutdown="all_significant")
    await sup.start()
    crew.finish("s1")
    await until(lambda: sup.which_child("s1").status == "stopped")
    assert sup.state == "running"
    # An abnormal exit of a transient significant child is restarted, not a shutdown.
    crew.crash("s2")
    await until(lambda: crew.starts("s2") == ["s2", "s2"])  # its new run (Crew.child)
    assert sup.state == "running"
    crew.finish("s2")
    await sup.wait()
    assert (sup.state, sup.failure) == ("stopped", None)


@run
async def test_terminating_a_significant_child_does_not_shut_down() -> None:
    crew = Crew()
    specs = [crew.spec("s", restart="transient", significant=True), crew.spec("w")]
    async with Supervisor(specs, auto_shutdown="any_significant") as sup:
        await sup.terminate_child("s")
        assert sup.state == "running"
        assert sup.which_child("w").status == "running"


@run
async def test_a_nested_supervisor_shut_down_automatically_is_a_normal_exit() -> None:
    crew = Crew()
    inner = Supervisor(
        [crew.spec("job", restart="temporary", significant=True)],
        auto_shutdown="any_significant",
    )
    spec = ChildSpec("inner", inner, restart="transient")
    async with Supervisor([spec, crew.spec("w")]) as outer:
        crew.finish("job")
        await until(lambda: outer.which_child("inner").status == "stopped")
        assert outer.which_child("inner").restarts == 0  # transient, normal exit
        assert outer.state == "running"


# ---------------------------------------------------------------------------- introspection
@run
async def test_which_child_and_get_childspec_answer_for_one_child() -> None:
    crew = Crew()
    spec = crew.spec("a")
    async with Supervisor([spec]) as sup:
        row = sup.which_child("a")
        assert row == sup.which_children()[0]
        assert sup.get_childspec("a") is spec
        for call in (sup.which_child, sup.get_childspec):
            with pytest.raises(SupervisorError) as info:
                call("zz")
            assert reason(info) == "not_found"


def test_check_childspecs_returns_none_or_the_problem() -> None:
    crew = Crew()
    assert check_childspecs([crew.spec("a"), {"id": "b", "start": crew.child}]) is None
    assert check_childspecs([crew.spec("a"), crew.spec("a")]) == "duplicate child id 'a'"
    problem = check_childspecs([{"id": "a", "start": crew.child, "args": ("events")}])
    assert problem is not None
    assert "missing comma" in problem
    significant = crew.spec("s", restart="temporary", significant=True)
    assert check_childspecs([significant]) is not None
    assert check_childspecs([significant], "all_significant") is None
    assert check_childspecs(["nope"]) == "not a ChildSpec: 'nope'"
    assert Supervisor.check_childspecs([crew.spec("a")]) is None


# ---------------------------------------------------------------------------- dynamic
@run
async def test_dynamic_supervisor_refuses_restart_child_and_delete_child_plainly() -> None:
    crew = Crew()
    async with DynamicSupervisor() as sup:
        await sup.start_child(crew.spec("a"))
        for call in (sup.restart_child, sup.delete_child):
            with pytest.raises(SupervisorError, match="does not support") as info:
                await call("a")
            assert reason(info) == "simple_one_for_one"
        assert sup.which_child("a").status == "running"


@run
async def test_already_started_carries_the_running_handle_on_a_dynamic_supervisor() -> None:
    crew = Crew()
    async with DynamicSupervisor() as sup:
        info = await sup.start_child(crew.spec("a"))
        with pytest.raises(SupervisorError) as err:
            await sup.start_child(crew.spec("a"))
        assert reason(err) == "already_started"
        assert err.value.handle is info.handle


# ---------------------------------------------------------------------------- validation
def test_a_str_for_args_is_refused_naming_the_missing_comma() -> None:
    crew = Crew()
    with pytest.raises(TypeError, match=r"missing comma\? write args=\('events',\)"):
        ChildSpec("x", crew.child, args=("events"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args must be a tuple or list"):
        ChildSpec("x", crew.child, args=7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kwargs must be a mapping"):
        ChildSpec("x", crew.child, kwargs=[("a", 1)])  # type: ignore[arg-type]
    assert ChildSpec("x", crew.child, args=["events"]).args == ("events",)  # type: ignore[arg-type]


def test_metadata_must_be_json_compatible_at_construction() -> None:
    crew = Crew()
    with pytest.raises(errors.InvalidMetadata, match="'tags'"):
        ChildSpec("x", crew.child, metadata={"tags": {"a", "set"}})
    with pytest.raises(errors.InvalidMetadata):
        ChildSpec("x", crew.child, metadata={1: "non-str key"})  # type: ignore[dict-item]
    spec = ChildSpec("x", crew.child, metadata={"tags": ["a", "b"], "n": 1})
    assert spec.metadata == {"tags": ("a", "b"), "n": 1}  # the registry's frozen shape


def test_duplicate_ids_are_refused() -> None:
    crew = Crew()
    with pytest.raises(ValueError, match="duplicate child id 'a'"):
        Supervisor([crew.spec("a"), crew.spec("a")])


def test_brutal_kill_is_shutdown_timeout_zero_and_negative_is_refused() -> None:
    crew = Crew()
    assert ChildSpec("x", crew.child, shutdown_timeout=0).shutdown_timeout == 0
    with pytest.raises(ValueError, match="shutdown_timeout"):
        ChildSpec("x", crew.child, shutdown_timeout=-1)
    with pytest.raises(ValueError, match="ready_timeout"):
        ChildSpec("x", crew.child, ready_timeout=0)


@run
async def test_the_sigterm_spy_does_record_an_orderly_stop(tmp_path: Path) -> None:
    """Without brutal_kill the same child gets SIGTERM first (so the spy's
    silence in the brutal_kill test means something)."""
    spy = tmp_path / "signals"
    spec = ChildSpec(
        "p",
        [sys.executable, "-c", SIGTERM_SPY, str(spy)],
        readiness="explicit",
        shutdown_timeout=0.5,
    )
    async with Supervisor([spec]) as sup:
        await sup.terminate_child("p")
    assert spy.read_text() == "TERM\n"


# ---------------------------------------------------------------------------- facade, reports
def test_the_sync_facade_answers_which_child_and_get_childspec() -> None:
    def poller(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()

    spec = ChildSpec("p", poller)
    with Supervisor([spec]).run_in_thread() as handle:
        assert handle.which_child("p").status == "running"
        assert handle.get_childspec("p") is spec
        with pytest.raises(SupervisorError) as info:
            handle.which_child("zz")
        assert reason(info) == "not_found"


def outcomes(records: Records) -> list[tuple[str, str | None, str | None]]:
    """(event, child, action or reason) of each report."""
    return [
        (r.event, r.child, getattr(r, "action", None) or r.reason)  # type: ignore[attr-defined]
        for r in records
    ]


@pytest.fixture
def records() -> Iterator[Records]:
    with captured("foundation.supervision") as kept:
        yield kept


@run
async def test_the_new_events_are_reported(records: Records) -> None:
    gate, crew = Gate(), Crew()
    specs = [
        crew.spec("a"),
        ChildSpec("g", gate.child),
        crew.spec("s", restart="transient", significant=True),
    ]
    sup = Supervisor(specs, strategy="one_for_all", name="app", auto_shutdown="any_significant")
    await sup.start()
    crew.crash("a")
    # Until s's new run began: it drops the commands sent before (the restart
    # count moves first: a "finish" sent then was lost, and the test hung).
    await until(lambda: crew.starts("s") == ["s", "s"])
    crew.finish("s")
    await sup.wait()
    events = outcomes(records)
    assert ("child_ignored", "g", "ignore") in events
    assert ("child_crashed", "a", "restart_all") in events
    assert ("child_exited", "s", "shutdown (significant)") in events
    assert ("auto_shutdown", "s", "shutdown") in events
    assert events[-1] == ("supervisor_stopped", None, "shutdown")


@run
async def test_a_killed_supervisor_reports_its_stop_as_an_error(records: Records) -> None:
    crew = Crew()
    sup = Supervisor([crew.spec("a")], name="victim")
    await sup.start()
    assert sup.task is not None
    sup.task.cancel()
    with pytest.raises(SupervisorError):
        await sup.wait()
    [stopped] = [r for r in records if r.event == "supervisor_stopped"]  # type: ignore[attr-defined]
    assert (stopped.levelno, stopped.reason) == (logging.ERROR, "killed")  # type: ignore[attr-defined]
