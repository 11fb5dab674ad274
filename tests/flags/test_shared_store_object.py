"""Several FeatureFlags (and a Migration) over ONE store object, of every kind.

An application and an admin tool (``FeatureFlags.from_store``) sharing a store
object each see the other's writes, the kill switch included, and every
listener hears each change exactly once (the writer's own too: not twice).
Also: a store closed from its own subscriber's callback closes (no
"cannot join current thread"), and stops its thread.
"""

from __future__ import annotations

import threading

import pytest

from foundation import errors
from foundation.flags import (
    FeatureFlags,
    FlagChange,
    FlagStore,
    Migration,
    MigrationPlan,
    Stage,
)
from tests.flags._support import FLAGS, wait_until


def _heard(flags: FeatureFlags) -> list[tuple[str, str | None]]:
    heard: list[tuple[str, str | None]] = []
    flags.subscribe(lambda c: heard.append((c.flag, c.by)))
    return heard


def test_flags_sharing_a_store_object_see_each_others_writes_once(store: FlagStore) -> None:
    app = FeatureFlags(FLAGS, store=store)
    admin = FeatureFlags.from_store(store)
    tool = FeatureFlags(FLAGS, store=store)  # writes the last change only (a fence)
    try:
        app_heard, admin_heard = _heard(app), _heard(admin)
        # Each write waits for the other object to converge, so both hear one order
        # (across writers, listeners are ordered only by such waits: see subscribe).
        admin.disable("dark_mode", by="oncall", reason="incident")  # the kill switch
        wait_until(lambda: not app.enabled("dark_mode"))
        wait_until(lambda: ("dark_mode", "oncall") in app_heard)
        app.enable("beta", by="app")
        wait_until(lambda: admin.enabled("beta"))
        wait_until(lambda: ("beta", "app") in admin_heard)
        admin.set_percentage("new_checkout", 100, by="ops")
        wait_until(lambda: app.enabled("new_checkout"))
        # The store hands each subscriber the commits it did not write in commit
        # order: once both heard the fence (a third writer's), a second copy of
        # any earlier change would have come before it.
        tool.enable("dark_mode", by="fence")
        wait_until(lambda: ("dark_mode", "fence") in app_heard)
        wait_until(lambda: ("dark_mode", "fence") in admin_heard)
        expected = [("dark_mode", "oncall"), ("beta", "app"), ("new_checkout", "ops")]
        expected.append(("dark_mode", "fence"))
        assert app_heard == expected
        assert admin_heard == expected
        assert app.enabled("dark_mode")
        assert admin.enabled("dark_mode")
    finally:
        for flags in (app, admin, tool):
            flags.close()


def test_a_migration_through_a_second_flags_object_reaches_the_first(store: FlagStore) -> None:
    app = FeatureFlags(FLAGS, store=store)
    ops = FeatureFlags(FLAGS, store=store)
    try:
        heard = _heard(app)
        plan = MigrationPlan([Stage(1, "go", ["new_checkout"])], name="m")
        Migration(ops, plan).advance(by="ana")
        wait_until(lambda: app.enabled("new_checkout"))
        wait_until(lambda: bool(heard))
        assert heard == [("new_checkout", "ana")]
        assert store.migration_stage("m") == 1
    finally:
        app.close()
        ops.close()


def test_a_direct_store_write_reaches_every_subscriber(store: FlagStore) -> None:
    """A write through the store object itself (no subscriber writing) is told to all."""
    app = FeatureFlags(FLAGS, store=store)
    try:
        heard = _heard(app)
        other = FeatureFlags(FLAGS, store=store)
        other.close()  # unsubscribed: a write of its own would reach app as any other
        state = app.state("beta")
        change = FlagChange("beta", state, state.__class__(True), "script", None, 1.0)
        store.transaction(lambda txn: txn.put("beta", change.new, change))
        wait_until(lambda: app.enabled("beta"))
        wait_until(lambda: bool(heard))
        assert heard == [("beta", "script")]
    finally:
        app.close()


def test_close_from_the_stores_own_callback_closes_it(store: FlagStore) -> None:
    outcome: list[str] = []
    ran_on: list[threading.Thread] = []
    done = threading.Event()

    def close_it(changes: list[FlagChange]) -> None:
        ran_on.append(threading.current_thread())
        try:
            store.close()
            outcome.append("closed")
        except BaseException as exc:  # the failure under test
            outcome.append(repr(exc))
        done.set()

    flags = FeatureFlags(FLAGS, store=store)
    try:
        store.subscribe(close_it)
        flags.enable("beta")  # reaches close_it on the store's own thread
        assert done.wait(30)
        assert outcome == ["closed"]
        assert ran_on[0] is not threading.current_thread()
        wait_until(lambda: not ran_on[0].is_alive())  # the store's thread ended
        with pytest.raises(errors.Closed):
            store.load_states()
        store.close()  # idempotent
    finally:
        flags.close()


def test_a_memory_store_closes_while_a_subscriber_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memory store's courier runs the other subscribers' callbacks: one stuck
    there must not hold ``close()`` for ever (it waits ``Courier.CLOSE_WAIT``)."""
    from foundation.flags import MemoryFlagStore
    from foundation.flags._store import Courier
    from tests._logs import captured

    monkeypatch.setattr(Courier, "CLOSE_WAIT", 0.2)
    store = MemoryFlagStore()
    app = FeatureFlags(FLAGS, store=store)
    admin = FeatureFlags.from_store(store)
    entered, release = threading.Event(), threading.Event()

    def stuck(changes: list[FlagChange]) -> None:  # a raw store subscriber
        entered.set()
        release.wait()

    unsubscribe = store.subscribe(stuck)
    closed = threading.Event()
    try:
        admin.enable("beta", by="admin")  # told to `stuck` on the courier, which sticks
        assert entered.wait(10)
        with captured("foundation.flags") as said:
            closer = threading.Thread(target=lambda: (store.close(), closed.set()))
            closer.start()
            assert closed.wait(10), "close() waited for the stuck subscriber"
        assert any("still runs" in m for m in said.messages()), said.messages()
    finally:
        release.set()
        unsubscribe()
        app.close()
        admin.close()
