"""A death withheld for a per-thread legacy store's report is told once, whatever
the flag does before its key is taken again.

``MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry())``: with the flag
off, a death the target's monitor reports is withheld (the legacy store, which
answers, tells it only when the thread takes the dead copy's key again). The
flag then turned on before that retake: the death was never told (12 of 48
flag/listener/retake cases, 36/144 runs: the target's retake dropped it; with
no retake it stayed withheld, even once the flag was off again), where a bare
``MemoryRegistry`` tells it when the agent dies. Now it is told when the
target answers again (the flip on), once: the legacy store's report at a
later retake (the flag off again) finds it told.

Real stores, real ``spawn_thread`` agents, no sleep: the target's report is
waited for, and a last registration marks the end of the events, which are
delivered in order.
"""

from __future__ import annotations

import threading
import time

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import Registry, RegistryEvent
from tests.migrating.support import FLAG, FLAGS, Agents, wait_until

Seen = list[tuple[str, object, str | None]]
RETAKES = {"plain": False, "replace": True, "none": None}


def _scenario(
    reg: Registry,
    agents: Agents,
    listen_first: bool,
    retake: bool | None,
    at_death: bool,
    then: tuple[bool, ...],
    flags: FeatureFlags | None = None,
    target: MemoryRegistry | None = None,
) -> Seen:
    """Register ``z``; the flag ``at_death`` when its agent dies (``target``: its
    report reached the facade); the flag set to each of ``then``; ``z`` taken
    again (``retake``: with ``replace``; None: not taken): the events told."""
    events: list[RegistryEvent] = []
    reported = threading.Event()  # the target's report has reached the facade

    def on_target(event: RegistryEvent) -> None:
        # Subscribed after the facade: called once the facade's listener returned.
        if event.entry.key == "z" and event.reason == "down":
            reported.set()

    if target is not None:
        target.subscribe(on_target)
    if listen_first:
        reg.subscribe(events.append)
    old = agents.new()
    reg.register("z", old)
    if flags is not None:
        flags.set(FLAG, at_death)
    if not listen_first:
        reg.subscribe(events.append)
    agents.kill(old)
    if target is not None:
        assert reported.wait(10)  # reported (and withheld, or told) before the flips
    for on in then:
        if flags is not None:
            flags.set(FLAG, on)
    if retake is not None:
        reg.register("z", agents.new(), replace=retake)
    reg.register("end", agents.new())  # the last event: all before it are delivered
    assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    return [(e.kind, e.entry.key, e.reason) for e in events]


def _facade(
    agents: Agents,
    at_register: bool,
    listen_first: bool,
    retake: bool | None,
    at_death: bool,
    then: tuple[bool, ...],
) -> Seen:
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, at_register)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    try:
        return _scenario(reg, agents, listen_first, retake, at_death, then, flags, target)
    finally:
        reg.close()
        flags.close()


def _ends(seen: Seen) -> list[int]:
    """Where the first registration of ``z``'s end is told (a death, or its
    replacement by the legacy store at the retake)."""
    return [i for i, (kind, key, _) in enumerate(seen) if key == "z" and kind == "unregistered"]


def _told_once_in_order(seen: Seen, listen_first: bool, retake: bool | None) -> None:
    [end] = _ends(seen)  # told once: not twice, not never
    registered = [i for i, (kind, key, _) in enumerate(seen) if (kind, key) == ("registered", "z")]
    if listen_first:
        assert registered[0] < end  # after its registration ...
    if retake is not None:
        assert end < registered[-1]  # ... and before the retake's


@pytest.mark.parametrize("retake", list(RETAKES), ids=list(RETAKES))
@pytest.mark.parametrize("listen_first", [False, True], ids=["listener-after", "listener-first"])
@pytest.mark.parametrize("at_register", [False, True], ids=["reg-off", "reg-on"])
def test_death_withheld_flag_off_then_on_is_told_as_the_target_alone_tells_it(
    at_register: bool, listen_first: bool, retake: str, agents: Agents
) -> None:
    """Flag off at the death, on again before the retake (or none): the target
    answers, and tells what a bare ``MemoryRegistry`` tells (was: no death)."""
    again = RETAKES[retake]
    alone = MemoryRegistry()
    try:
        want = _scenario(alone, agents, listen_first, again, False, ())
    finally:
        alone.close()
    got = _facade(agents, at_register, listen_first, again, False, (True,))
    assert got == want
    _told_once_in_order(got, listen_first, again)


@pytest.mark.parametrize("retake", list(RETAKES), ids=list(RETAKES))
@pytest.mark.parametrize("listen_first", [False, True], ids=["listener-after", "listener-first"])
@pytest.mark.parametrize("at_register", [False, True], ids=["reg-off", "reg-on"])
def test_death_withheld_flag_off_on_off_is_told_once(
    at_register: bool, listen_first: bool, retake: str, agents: Agents
) -> None:
    """Flag off at the death, on, then off again before the retake (or none):
    told once, when the target answered (was: never without a retake); the
    legacy store's own report at the retake finds it told ("down" or
    "replaced": not told again)."""
    again = RETAKES[retake]
    got = _facade(agents, at_register, listen_first, again, False, (True, False))
    _told_once_in_order(got, listen_first, again)


@pytest.mark.parametrize("then", [(False,), (False, True)], ids=["off", "off-on"])
@pytest.mark.parametrize("retake", list(RETAKES), ids=list(RETAKES))
@pytest.mark.parametrize("listen_first", [False, True], ids=["listener-after", "listener-first"])
def test_death_with_the_flag_on_then_off_is_told_once(
    listen_first: bool, retake: str, then: tuple[bool, ...], agents: Agents
) -> None:
    """The reverse: flag on at the death (told by the target), off before the
    retake (and maybe on again): the legacy store's report at the retake, and
    the flip, tell it no second time."""
    again = RETAKES[retake]
    got = _facade(agents, True, listen_first, again, True, then)
    _told_once_in_order(got, listen_first, again)
    assert ("unregistered", "z", "down") in got  # by the target, at the death


@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
def test_death_told_at_the_flip_then_kept_copy_retaken_flag_off(
    replace: bool, agents: Agents
) -> None:
    """The dead legacy copy kept for the withheld death (a catch-up left it: a
    later write in its thread) outlives the flip on that tells the death; taken
    again with the flag off, its store's report ("replaced" too) is not told."""
    flags = FeatureFlags(FLAGS)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    events: list[RegistryEvent] = []
    reported = threading.Event()
    target.subscribe(lambda e: reported.set() if e.reason == "down" else None)
    try:
        old = agents.new()
        reg.register("z", old)
        reg.subscribe(events.append)
        agents.kill(old)
        assert reported.wait(10)
        reg.register("other", agents.new())  # catch-up: the dead copy kept
        flags.set(FLAG, True)  # the death told
        flags.set(FLAG, False)
        reg.register("z", agents.new(), replace=replace)
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        reg.close()
        flags.close()
    seen = [(e.kind, e.entry.key, e.reason) for e in events]
    assert seen == [
        ("registered", "other", None),
        ("unregistered", "z", "down"),
        ("registered", "z", None),
        ("registered", "end", None),
    ]


def test_death_ended_by_the_legacy_retake_is_not_told_at_a_later_flip(
    agents: Agents,
) -> None:
    """Flag off: the legacy store's retake with ``replace=True`` tells the end of
    the dead copy ("down": its agent is dead, replace or not), whose death was
    withheld: a later flip on tells no death of it."""
    flags = FeatureFlags(FLAGS)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    events: list[RegistryEvent] = []
    reported = threading.Event()
    target.subscribe(lambda e: reported.set() if e.reason == "down" else None)
    try:
        old = agents.new()
        reg.register("z", old)
        reg.subscribe(events.append)
        agents.kill(old)
        assert reported.wait(10)
        reg.register("z", agents.new(), replace=True)
        flags.set(FLAG, True)
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        reg.close()
        flags.close()
    seen = [(e.kind, e.entry.key, e.reason) for e in events]
    assert seen == [
        ("unregistered", "z", "down"),
        ("registered", "z", None),
        ("registered", "end", None),
    ]


class _WatchedLock:
    """A real lock that says when ``thread`` starts waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.waited = threading.Event()

    def __enter__(self) -> bool:
        if threading.current_thread() is self.thread:
            self.waited.set()
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _FlipWhileJudged(MigratingRegistry):
    """Flips the flag on in another thread while the target's report of a death
    is judged withheld (the report's lock held), once: the flip's whole refresh
    runs there, or it waits for that lock."""

    flip: threading.Thread | None = None
    watched: _WatchedLock

    def _reports(self, side: str, teller: str | None) -> bool:
        told = super()._reports(side, teller)  # type: ignore[arg-type]
        flip, self.flip = self.flip, None
        if flip is not None and not told:
            self.watched.thread = flip
            flip.start()
            deadline = time.monotonic() + 10
            while flip.is_alive() and not self.watched.waited.is_set():
                if time.monotonic() > deadline:
                    break
                self.watched.waited.wait(0.01)
        return told


def test_a_death_withheld_as_the_flag_turns_on_is_told(agents: Agents) -> None:
    """Race: the target's report, judged withheld (flag off), is kept while a flip
    on runs in another thread. The flip's check of the withheld deaths (was: an
    unlocked look, empty) ran before the report was kept: the death was never
    told, the flag on. Now the flip waits for the report's lock: it is told."""
    flags = FeatureFlags(FLAGS)
    target = MemoryRegistry()
    reg = _FlipWhileJudged(ThreadLocalRegistry(), target, flags)
    reg.watched = _WatchedLock()
    reg._told_lock = reg.watched  # type: ignore[assignment]
    events: list[RegistryEvent] = []
    try:
        reg.subscribe(events.append)
        old = agents.new()
        reg.register("z", old)
        flip = threading.Thread(target=flags.set, args=(FLAG, True), name="flipper")
        reg.flip = flip
        agents.kill(old)
        assert wait_until(lambda: reg.flip is None, 10)  # the report was judged
        flip.join(10)
        assert reg.flag_on
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        reg.close()
        flags.close()
    seen = [(e.kind, e.entry.key, e.reason) for e in events]
    assert seen == [
        ("registered", "z", None),
        ("unregistered", "z", "down"),
        ("registered", "end", None),
    ]


def test_a_death_withheld_is_told_by_a_finish_before_the_flip_is_followed(
    agents: Agents,
) -> None:
    """Race: finish() finds the flag on before the facade follows the flip (its
    swap hook yet to run; held here by an earlier hook): the hook then returns
    at once (finished), and the death withheld with the flag off was never
    told. Now finish() tells it."""
    flags = FeatureFlags(FLAGS)
    entered, go = threading.Event(), threading.Event()
    armed = False

    def hold(_: object) -> None:  # runs before the facade's hook, in the flipper
        if armed and flags.enabled(FLAG):
            entered.set()
            go.wait(10)

    flags._watch_tables(hold)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    events: list[RegistryEvent] = []
    reported = threading.Event()
    target.subscribe(lambda e: reported.set() if e.reason == "down" else None)
    flip = threading.Thread(target=flags.set, args=(FLAG, True), name="flipper")
    try:
        reg.subscribe(events.append)
        old = agents.new()
        reg.register("z", old)
        agents.kill(old)
        assert reported.wait(10)  # withheld (the flag off)
        armed = True
        flip.start()
        assert entered.wait(10)
        assert not reg.flag_on  # not followed yet
        reg.finish()
        go.set()
        flip.join(10)
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        go.set()
        reg.close()
        flags.close()
    seen = [(e.kind, e.entry.key, e.reason) for e in events]
    assert seen == [
        ("registered", "z", None),
        ("unregistered", "z", "down"),
        ("registered", "end", None),
    ]
