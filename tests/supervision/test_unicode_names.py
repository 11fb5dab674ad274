"""Child ids and supervisor names are checked at construction (control characters,
bidi controls, lone surrogates, length), and a child's exception with a broken,
huge or multi-line ``__repr__``/``__str__`` gives bounded one-line report text."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foundation import Application
from foundation.errors import (
    InvalidConfig,
    RestartIntensityExceeded,
    StartError,
    SupervisorError,
)
from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.faults._subprocess import run_scenario
from tests.supervision._support import run

REFUSED = [
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("a\nERROR forged", id="newline"),
    pytest.param("a\x1b[2Jb", id="escape"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x85b", id="c1-next-line"),
    pytest.param("a\x9bb", id="c1-csi"),
    pytest.param("exe.\u202etxt", id="bidi-override"),
    pytest.param("a\u2066b", id="bidi-isolate"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("x" * 201, id="too-long"),
    pytest.param("", id="empty"),
]
ACCEPTED = ["worker-1", "wörker ✓ 日本", "a b", "x" * 200, "emoji 👩\u200d💻"]


async def _serve(ctx: ChildContext, *_: Any) -> None:
    ctx.ready()
    await asyncio.Event().wait()


@pytest.mark.parametrize("text", REFUSED)
def test_a_bad_child_id_is_refused_by_childspec(text: str) -> None:
    with pytest.raises(InvalidConfig, match="child id"):
        ChildSpec(text, _serve)
    assert issubclass(InvalidConfig, ValueError)  # the type the id check raised before


@pytest.mark.parametrize("text", REFUSED)
def test_a_bad_supervisor_name_is_refused(text: str) -> None:
    with pytest.raises(InvalidConfig, match="supervisor name"):
        Supervisor([ChildSpec("w", _serve)], name=text)
    with pytest.raises(InvalidConfig, match="supervisor name"):
        DynamicSupervisor(name=text)


@pytest.mark.parametrize("text", REFUSED)
def test_a_bad_application_name_is_refused(text: str) -> None:
    with pytest.raises(InvalidConfig, match="application name"):
        Application(services=(), name=text)


@pytest.mark.parametrize("text", ACCEPTED)
def test_printable_names_are_accepted(text: str) -> None:
    assert ChildSpec(text, _serve).id == text
    assert Supervisor(name=text).name == text


def test_a_template_id_leaves_room_for_the_serial() -> None:
    DynamicSupervisor(ChildSpec("t" * 180, _serve))
    with pytest.raises(InvalidConfig, match="template's id"):
        DynamicSupervisor(ChildSpec("t" * 181, _serve))


@pytest.mark.parametrize("text", REFUSED)
@run
async def test_start_child_with_a_bad_id_starts_nothing(text: str) -> None:
    async with DynamicSupervisor(ChildSpec("conn", _serve)) as sup:
        with pytest.raises(InvalidConfig, match="child id"):
            await sup.start_child(id=text)
        with pytest.raises(InvalidConfig, match="child id"):
            await DynamicSupervisor.start_child(sup, id=text)
        assert sup.which_children() == []
        info = await sup.start_child(id="conn-ok")  # the supervisor still works
        assert info.id == "conn-ok"
    async with Supervisor() as plain:
        with pytest.raises(InvalidConfig):
            await plain.start_child(ChildSpec(text, _serve))
        assert plain.which_children() == []


class RaisingRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class HugeRepr(Exception):
    def __repr__(self) -> str:
        return "H" * 1_000_000


class ForgingRepr(Exception):
    def __repr__(self) -> str:
        return "boom\nLOG CRITICAL forged line \x1b[2J\u202e"


class RaisingStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class ForgingStr(Exception):
    def __str__(self) -> str:
        return "boom\nLOG CRITICAL forged line \x1b[2J" + "S" * 100_000


def _one_bounded_line(text: str) -> None:
    assert "\n" not in text
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert len(text) < 2000


@pytest.mark.parametrize("error", [RaisingRepr, HugeRepr, ForgingRepr])
@run
async def test_giving_up_on_a_bad_repr_gives_a_bounded_error(error: type[Exception]) -> None:
    async def crash(ctx: ChildContext) -> None:
        ctx.ready()
        raise error()

    sup = Supervisor([ChildSpec("w", crash)], max_restarts=0)
    await sup.start()
    with pytest.raises(RestartIntensityExceeded) as caught:
        await sup.wait()
    _one_bounded_line(str(caught.value))
    assert isinstance(caught.value.__cause__, error)


@pytest.mark.parametrize("error", [RaisingStr, ForgingStr, RaisingRepr, ForgingRepr])
@run
async def test_a_failed_start_with_a_bad_str_gives_a_bounded_start_error(
    error: type[Exception],
) -> None:
    async def fail(ctx: ChildContext) -> None:
        raise error()

    sup = Supervisor([ChildSpec("w", fail)])
    with pytest.raises(StartError) as caught:
        await sup.start()
    _one_bounded_line(str(caught.value))
    async with DynamicSupervisor() as dyn:
        with pytest.raises(SupervisorError) as dyn_caught:
            await dyn.start_child(ChildSpec("d", fail))
        _one_bounded_line(str(dyn_caught.value))


CRASH_REPORT = """
import asyncio
from foundation.supervision import ChildSpec, Supervisor

class RaisingRepr(Exception):
    def __repr__(self):
        raise RuntimeError("repr is broken")

class HugeRepr(Exception):
    def __repr__(self):
        return "H" * 1_000_000

class ForgingRepr(Exception):
    def __repr__(self):
        return "boom\\nLOG CRITICAL forged line \\x1b[2J\\u202e"

async def main():
    for error in (RaisingRepr, HugeRepr, ForgingRepr):
        crashed = asyncio.Event()
        async def child(ctx, error=error, crashed=crashed):
            ctx.ready()
            if not crashed.is_set():
                crashed.set()
                raise error("plain text")
            await asyncio.Event().wait()
        async with Supervisor([ChildSpec("w", child)], name="evil-" + error.__name__) as sup:
            await crashed.wait()
            while sup.which_children()[0].restarts < 1:
                await asyncio.sleep(0.005)  # sleep-ok: polling the restart with the test deadline
    print("OK")

asyncio.run(asyncio.wait_for(main(), 30))
"""


def test_a_crash_report_of_a_bad_repr_is_one_bounded_line() -> None:
    """Default hooks, stderr handler: each crash is one header line (no forged
    record, no escape), however the exception's ``__repr__`` behaves."""
    result = run_scenario(CRASH_REPORT)
    assert not [
        line for line in result.stderr.splitlines() if "CRITICAL" in line.split(" ", 2)[1:2]
    ]
    assert "\x1b" not in result.stderr
    assert "\u202e" not in result.stderr
    assert all(line.startswith(("LOG ", "LOG| ")) for line in result.stderr.splitlines())
    headers = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG ERROR foundation.supervision.crash") and "Child w " in line
    ]
    assert len(headers) == 3, result.stderr[-3000:]
    for name, header in zip(("RaisingRepr", "HugeRepr", "ForgingRepr"), headers, strict=True):
        assert f"evil-{name}" in header
        assert len(header) < 1000
    assert "repr failed" in headers[0]
    assert "\\nLOG CRITICAL forged line \\x1b[2J\\u202e" in headers[2]
