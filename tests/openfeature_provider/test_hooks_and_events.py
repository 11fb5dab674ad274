"""Hooks and provider events through the real OpenFeature SDK."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagEvaluationOptions
from openfeature.hook import Hook, HookContext, HookHints
from openfeature.provider import ProviderStatus

from foundation.flags import FeatureFlags
from foundation.openfeature import FoundationProvider
from tests.openfeature_provider.conftest import WAIT, Events

CHANGED = ProviderEvent.PROVIDER_CONFIGURATION_CHANGED


class Recorder(Hook):
    """Records every stage it sees as (hook name, stage, flag, detail)."""

    def __init__(self, name: str, calls: list[tuple[str, ...]]) -> None:
        self.name = name
        self.calls = calls

    def before(self, hook_context: HookContext, hints: HookHints) -> EvaluationContext | None:
        self.calls.append(
            (self.name, "before", hook_context.flag_key, str(hook_context.provider_metadata.name))
        )  # type: ignore[union-attr]
        return None

    def after(self, hook_context: HookContext, details: FlagEvaluationDetails[Any],
              hints: HookHints) -> None:  # fmt: skip
        self.calls.append(
            (self.name, "after", hook_context.flag_key, f"{details.value}/{details.reason}")
        )

    def error(self, hook_context: HookContext, exception: Exception, hints: HookHints) -> None:
        self.calls.append((self.name, "error", hook_context.flag_key, type(exception).__name__))

    def finally_after(self, hook_context: HookContext, details: FlagEvaluationDetails[Any],
                      hints: HookHints) -> None:  # fmt: skip
        self.calls.append(
            (
                self.name,
                "finally",
                hook_context.flag_key,
                f"{details.value}/{details.reason}/{details.error_code}",
            )
        )


def test_hooks_run_in_order_around_a_resolution(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    calls: list[tuple[str, ...]] = []
    api.add_hooks([Recorder("api", calls)])
    client.add_hooks([Recorder("client", calls)])
    options = FlagEvaluationOptions(hooks=[Recorder("call", calls)])
    flags.enable("color")
    d = client.get_string_details("color", "x", None, options)
    assert (d.value, d.variant, d.reason) == ("#f00", "red", "STATIC")
    assert calls == [
        ("api", "before", "color", "foundation"),
        ("client", "before", "color", "foundation"),
        ("call", "before", "color", "foundation"),
        ("call", "after", "color", "#f00/STATIC"),
        ("client", "after", "color", "#f00/STATIC"),
        ("api", "after", "color", "#f00/STATIC"),
        ("call", "finally", "color", "#f00/STATIC/None"),
        ("client", "finally", "color", "#f00/STATIC/None"),
        ("api", "finally", "color", "#f00/STATIC/None"),
    ]


def test_error_hooks_see_flag_not_found_and_type_mismatch(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    calls: list[tuple[str, ...]] = []
    client.add_hooks([Recorder("client", calls)])
    d = client.get_boolean_details("missing", True)
    assert (d.value, d.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    d = client.get_integer_details("beta", 7)  # a boolean flag is not an integer
    assert (d.value, d.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    assert calls == [
        ("client", "before", "missing", "foundation"),
        ("client", "error", "missing", "FlagNotFoundError"),
        ("client", "finally", "missing", "True/ERROR/FLAG_NOT_FOUND"),
        ("client", "before", "beta", "foundation"),
        ("client", "error", "beta", "TypeMismatchError"),
        ("client", "finally", "beta", "7/ERROR/TYPE_MISMATCH"),
    ]


def test_a_hook_supplies_the_actor(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    class Targeting(Hook):
        def before(self, hook_context: HookContext, hints: HookHints) -> EvaluationContext:
            return EvaluationContext(targeting_key=str(hints["user"]))

    flags.enable("color")
    flags.assign("color", "ana", "blue")
    options = FlagEvaluationOptions(hooks=[Targeting()], hook_hints={"user": "ana"})
    d = client.get_string_details("color", "x", None, options)
    assert (d.variant, d.reason) == ("blue", "TARGETING_MATCH")


def test_every_change_is_a_configuration_changed_event(
    client: OpenFeatureClient, flags: FeatureFlags, events: Events
) -> None:
    client.add_handler(CHANGED, events.handler(CHANGED))
    flags.enable("beta", by="ana", reason="launch")
    event, details = events.next()
    assert (event, details.flags_changed, details.provider_name) == (
        CHANGED,
        ["beta"],
        "foundation",
    )
    assert details.message == "launch"
    # After the event, the change is what a resolution answers (applied, not only signalled).
    assert client.get_boolean_details("beta", False).value is True
    flags.set_split("color", {"blue": 100})
    assert events.next()[1].flags_changed == ["color"]
    assert client.get_string_details("color", "x").value == "#00f"
    flags.load_from_config({"plain": True}, env=None)
    assert events.next()[1].flags_changed == ["plain"]
    flags.reset_all()  # runtime state of beta and color dropped; plain is config, unchanged
    changed = sorted(str(events.next()[1].flags_changed) for _ in range(2))
    assert changed == ["['beta']", "['color']"]


def test_global_handlers_hear_changes_too(
    client: OpenFeatureClient, flags: FeatureFlags, events: Events
) -> None:
    api.add_handler(CHANGED, events.handler(CHANGED))
    flags.assign("color", "ana", "green")
    assert events.next()[1].flags_changed == ["color"]


def test_ready_handlers_run_and_shutdown_stops_events(flags: FeatureFlags, events: Events) -> None:
    provider = FoundationProvider(flags)
    api.set_provider_and_wait(provider)
    client = api.get_client()
    assert client.get_provider_status() == ProviderStatus.READY
    client.add_handler(ProviderEvent.PROVIDER_READY, events.handler(ProviderEvent.PROVIDER_READY))
    assert events.next()[0] == ProviderEvent.PROVIDER_READY  # already ready: runs at once
    client.add_handler(CHANGED, events.handler(CHANGED))
    provider.shutdown()
    provider.shutdown()  # idempotent
    flags.enable("beta")  # not heard: the provider no longer listens
    provider.initialize(EvaluationContext())
    provider.initialize(EvaluationContext())  # idempotent: one subscription, not two
    flags.enable("plain")
    flags.enable("color")
    got = [events.next()[1].flags_changed for _ in range(2)]
    assert sorted(got) == [["color"], ["plain"]]  # (handlers run on a pool: any order)
    # Exactly those two: one more change is the next thing heard.
    flags.enable("limit")
    assert events.next()[1].flags_changed == ["limit"]


def test_initializing_over_closed_flags_is_a_provider_error(
    flags: FeatureFlags, events: Events
) -> None:
    provider = FoundationProvider(flags)
    flags.close()
    api.add_handler(ProviderEvent.PROVIDER_ERROR, events.handler(ProviderEvent.PROVIDER_ERROR))
    api.set_provider(provider)  # initialized on the SDK's thread
    event, details = events.next()
    assert event == ProviderEvent.PROVIDER_ERROR
    assert "closed" in (details.message or ""), details
    # Irrecoverable (spec 2.4.2.1, 2.8.3): PROVIDER_FATAL, so the status is FATAL.
    assert details.error_code == ErrorCode.PROVIDER_FATAL, details
    assert api.get_client().get_provider_status() == ProviderStatus.FATAL
    d = api.get_client().get_boolean_details("beta", True)
    assert (d.value, d.error_code) == (True, ErrorCode.PROVIDER_FATAL)


def test_initialize_over_closed_flags_still_raises_closed(flags: FeatureFlags) -> None:
    from foundation.errors import Closed

    provider = FoundationProvider(flags)
    flags.close()
    with pytest.raises(Closed) as caught:
        api.set_provider_and_wait(provider)
    assert caught.value.error_code == ErrorCode.PROVIDER_FATAL  # type: ignore[attr-defined]
    assert api.get_client().get_provider_status() == ProviderStatus.FATAL


def test_flags_closed_while_ready_make_the_provider_fatal(
    client: OpenFeatureClient, flags: FeatureFlags, events: Events
) -> None:
    """Spec 2.8.1: the spontaneous transition is emitted, once, then the SDK answers alone."""
    api.add_handler(ProviderEvent.PROVIDER_ERROR, events.handler(ProviderEvent.PROVIDER_ERROR))
    flags.close()
    d = client.get_boolean_details("beta", True)
    assert (d.value, d.error_code) == (True, ErrorCode.PROVIDER_FATAL)
    event, details = events.next()
    assert (event, details.error_code) == (ProviderEvent.PROVIDER_ERROR, ErrorCode.PROVIDER_FATAL)
    assert "closed" in (details.message or ""), details
    assert client.get_provider_status() == ProviderStatus.FATAL
    for _ in range(3):
        s = client.get_string_details("color", "x")
        assert (s.value, s.error_code) == ("x", ErrorCode.PROVIDER_FATAL)
    # Exactly one PROVIDER_ERROR: the next event heard is the READY of a new provider.
    api.add_handler(ProviderEvent.PROVIDER_READY, events.handler(ProviderEvent.PROVIDER_READY))
    other = FeatureFlags([])
    try:
        api.set_provider_and_wait(FoundationProvider(other))
        assert events.next()[0] == ProviderEvent.PROVIDER_READY
    finally:
        other.close()


def test_a_provider_never_initialized_emits_nothing_when_flags_close(flags: FeatureFlags) -> None:
    provider = FoundationProvider(flags)
    flags.close()
    r = provider.resolve_boolean_details("beta", True)
    assert (r.value, r.error_code) == (True, ErrorCode.PROVIDER_FATAL)


def test_a_provider_over_closed_flags_cannot_be_constructed(flags: FeatureFlags) -> None:
    from foundation.errors import Closed

    flags.close()
    with pytest.raises(Closed):
        FoundationProvider(flags)


class _Counting(FoundationProvider):
    """Counts the events the provider emits (then emits them as usual)."""

    def __init__(self, flags: FeatureFlags) -> None:
        super().__init__(flags)
        self.emitted: list[ProviderEvent] = []

    def emit(self, event: ProviderEvent, details: ProviderEventDetails) -> None:
        self.emitted.append(event)  # list.append is atomic: threads may race here
        super().emit(event, details)


def test_racing_resolutions_report_closed_flags_once(flags: FeatureFlags) -> None:
    provider = _Counting(flags)
    provider.initialize(EvaluationContext())
    flags.close()
    barrier = threading.Barrier(8, timeout=WAIT)
    codes: list[ErrorCode | None] = []

    def resolve() -> None:
        barrier.wait()
        codes.append(provider.resolve_boolean_details("beta", True).error_code)

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert codes == [ErrorCode.PROVIDER_FATAL] * 8
    assert provider.emitted == [ProviderEvent.PROVIDER_ERROR]
    provider.shutdown()
