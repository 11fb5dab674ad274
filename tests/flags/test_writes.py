"""Writes: exact semantics, audit history, listeners, telemetry, concurrency."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from foundation import telemetry
from foundation.flags import FeatureFlags, FlagChange, FlagState
from tests.flags._support import FLAGS


def test_every_write_is_recorded_with_who_why_and_the_states(flags: FeatureFlags) -> None:
    flags.enable("beta", by="ana", reason="launch")
    flags.set_percentage("beta", 10, by="bo", reason="canary")
    history = flags.history("beta")
    assert [(c.by, c.reason) for c in history] == [("ana", "launch"), ("bo", "canary")]
    assert history[0].old == FlagState(False)
    assert history[0].new == FlagState(True)
    assert history[1].old == FlagState(True)
    assert history[1].new == FlagState(True, 10.0)
    assert history[0].at <= history[1].at
    assert all(isinstance(c, FlagChange) for c in history)


def test_set_percentage_turns_the_switch_on(flags: FeatureFlags) -> None:
    flags.disable("beta")
    flags.set_percentage("beta", 40)
    assert flags.state("beta") == FlagState(True, 40.0)


def test_allow_and_deny_add_to_independent_sets(flags: FeatureFlags) -> None:
    flags.allow("beta", "a")
    flags.allow("beta", "b")
    flags.deny("beta", "a")
    state = flags.state("beta")
    assert state.allow == {"a", "b"}
    assert state.deny == {"a"}
    assert state.switch is False


def test_clear_returns_the_flag_to_its_declared_default(flags: FeatureFlags) -> None:
    flags.set_percentage("dark_mode", 5)
    flags.allow("dark_mode", "a")
    flags.clear("dark_mode", by="ana")
    assert flags.state("dark_mode") == FlagState(True)
    assert flags.history("dark_mode")[-1].new == FlagState(True)
    assert flags.store.load_states() == {}


def test_a_write_that_changes_nothing_records_nothing(flags: FeatureFlags) -> None:
    flags.enable("beta")
    flags.enable("beta")
    flags.clear("new_checkout")
    assert len(flags.history()) == 1


def test_reset_all_records_one_change_per_flag_it_changes(flags: FeatureFlags) -> None:
    flags.enable("beta")
    flags.disable("dark_mode")
    flags.reset_all(by="ops", reason="clean slate")
    last = flags.history()[-2:]
    assert sorted(c.flag for c in last) == ["beta", "dark_mode"]
    assert all(c.by == "ops" and c.reason == "clean slate" for c in last)
    assert len(flags.history()) == 4
    assert flags.enabled("beta") is False
    assert flags.enabled("dark_mode") is True


def test_listeners_get_every_change_until_unsubscribed(flags: FeatureFlags) -> None:
    seen: list[FlagChange] = []
    unsubscribe = flags.subscribe(seen.append)
    flags.enable("beta", by="ana")
    flags.reset_all()
    unsubscribe()
    flags.enable("beta")
    assert [(c.flag, c.new.switch) for c in seen] == [("beta", True), ("beta", False)]
    assert seen == flags.history()[:2]


def test_a_listener_that_raises_does_not_break_the_write(
    flags: FeatureFlags, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    seen: list[FlagChange] = []

    def broken(change: FlagChange) -> None:
        raise RuntimeError("listener bug")

    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    flags.subscribe(broken)
    flags.subscribe(seen.append)
    flags.enable("beta")
    assert flags.enabled("beta") is True
    assert len(seen) == 1
    assert [str(e) for e in reported] == ["listener bug"]


def test_flag_changes_are_telemetry_events(flags: FeatureFlags) -> None:
    events: list[Mapping[str, Any]] = []
    detach = telemetry.attach("flag.changed", lambda name, data: events.append(data))
    try:
        flags.disable("dark_mode", by="ops")
    finally:
        detach()
    assert [e["flag"] for e in events] == ["dark_mode"]
    assert events[0]["change"].by == "ops"


def test_readers_see_the_state_before_or_after_a_write_never_between() -> None:
    with FeatureFlags(FLAGS) as flags:
        flags.set_percentage("beta", 100)
        stop = threading.Event()
        bad: list[object] = []

        def reader() -> None:
            while not stop.is_set():
                value: object = flags.enabled("beta")
                if type(value) is not bool:
                    bad.append(value)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(300):
            flags.set_percentage("beta", 100 if i % 2 else 50)
            flags.disable("beta")
            flags.enable("beta")
        stop.set()
        for t in threads:
            t.join()
        assert bad == []


def test_concurrent_writers_leave_every_flag_in_a_valid_state() -> None:
    with FeatureFlags(FLAGS) as flags:
        start = threading.Barrier(8)

        def writer(n: int) -> None:
            start.wait()
            for i in range(50):
                flags.allow("beta", f"w{n}-{i}")
                flags.set_percentage("new_checkout", (n * 50 + i) % 101)
                if i % 7 == 0:
                    flags.disable("beta")
                else:
                    flags.enable("beta")

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        beta = flags.state("beta")
        assert beta.allow == {f"w{n}-{i}" for n in range(8) for i in range(50)}
        p = flags.state("new_checkout").percentage
        assert p is not None
        assert 0 <= p <= 100
        # The cache agrees with the store and with the last recorded change.
        assert flags.store.load_states()["beta"] == beta
        assert flags.history("beta")[-1].new == beta
        assert flags.history("new_checkout")[-1].new == flags.state("new_checkout")
