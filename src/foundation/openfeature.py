"""An OpenFeature provider over ``FeatureFlags`` (the ``openfeature`` extra).

``FoundationProvider(flags)`` answers the OpenFeature SDK's five typed
resolutions from ``flags.evaluate(name, actor)``; the evaluation context's
``targeting_key`` is the actor. Nothing here touches a store on the read path:
a resolution is one lock-free evaluation plus a result object.

Mapping (see ``docs/openfeature.md`` for the full list of spec decisions):

- ``reason``: ``evaluate()``'s reason (``STATIC``, ``TARGETING_MATCH``,
  ``SPLIT``, ``DEFAULT``); a flag whose switch is off answers the *caller's*
  default value with reason ``DISABLED`` and the off variant (``"off"``, or the
  default variant of a typed flag), as OFREP answers.
- ``variant``: the variant name (boolean flags: ``"on"``/``"off"``).
- errors (value: the caller's default, reason ``ERROR``, never an exception):
  ``FLAG_NOT_FOUND`` for an undeclared flag; ``TYPE_MISMATCH`` when the flag's
  kind is not the one asked for; ``INVALID_CONTEXT`` for a targeting key that
  is not a str or a 64-bit int; ``PROVIDER_FATAL`` once ``flags`` is closed
  (whatever the key and the type asked); ``GENERAL`` for anything else.
- the targeting key is an actor by ``FeatureFlags``' own rule (``evaluate``
  normalises and checks it): a str subclass (a ``StrEnum`` member) is the plain
  string it equals, an int ``str(n)``, and ``""`` no actor.
- numbers: an integer flag read as a float is converted when exact
  (``2**62`` is, ``2**53 + 1`` is not); a float flag read as an integer answers
  when the value is integral and a signed 64-bit integer (``10.0`` -> ``10``;
  not ``1e300``), else ``TYPE_MISMATCH``. Booleans are never numbers.
- ``flag_metadata``: ``description`` (absent when empty: an undescribed flag
  has an empty mapping) and, for a flag of a migration plan recorded in the
  store, ``migration_plan``, ``migration_stage`` (the stage the flag belongs
  to) and ``migration_stage_name``. The plans are read at ``initialize`` and
  again, on a worker thread (never in a resolution), after the flags change
  and when a ``RedisFlagStore`` is back in sync, at most once a second
  (``foundation.flags._plans``, the admin server's OFREP reader too): a plan
  recorded later shows once its migration steps.

Events, once initialized: ``PROVIDER_CONFIGURATION_CHANGED`` with
``flags_changed=[name]`` after every change ``flags.subscribe`` reports (local
writes, other processes' writes, config loads, reloads); over a
``RedisFlagStore``, ``PROVIDER_STALE`` when the store loses Redis (it then
serves its node copy) and ``PROVIDER_READY`` when it is back in sync; over a
``SQLiteFlagStore``, ``PROVIDER_STALE`` when its file was deleted or replaced
while in use (it then answers from the old file, for good: reopen the store);
both from the store's ``foundation.flags.stale`` and ``foundation.flags.in_sync``
telemetry events and its ``stale`` property. A memory store never goes stale.
The two streams are not ordered against each other: a reload's
``PROVIDER_CONFIGURATION_CHANGED`` events come through ``flags.subscribe``'s
delivery, which a slow listener of ``flags`` holds, and may follow its
``PROVIDER_READY`` (emitted once the flags answer the reloaded values; see
``docs/openfeature.md``, "Event order").
``PROVIDER_ERROR`` with error code ``PROVIDER_FATAL``, once, when a resolution
first finds ``flags`` closed (the SDK's status becomes ``FATAL``); ``initialize`` over closed flags
raises ``errors.Closed`` that is also the SDK's ``ProviderFatalError``, with
the same outcome. ``FATAL`` is final: from then on the provider emits no
``PROVIDER_STALE`` / ``PROVIDER_READY`` (it stops listening to store health).

``import foundation`` never imports this module; importing it without the SDK
raises ``ImportError`` naming ``foundation[openfeature]``.

Example:
    >>> from openfeature import api
    >>> from foundation import FeatureFlags, Flag
    >>> from foundation.openfeature import FoundationProvider
    >>> flags = FeatureFlags([Flag("beta", description="the new checkout")])
    >>> api.set_provider_and_wait(FoundationProvider(flags))
    >>> client = api.get_client()
    >>> details = client.get_boolean_details("beta", True)  # switch off
    >>> details.value, str(details.reason)  # the caller's default
    (True, 'DISABLED')
    >>> flags.enable("beta")
    >>> details = client.get_boolean_details("beta", False)
    >>> details.value, details.variant, str(details.reason), dict(details.flag_metadata)
    (True, 'on', 'STATIC', {'description': 'the new checkout'})
    >>> api.clear_providers(); flags.close()
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEventDetails
    from openfeature.exception import ErrorCode, ProviderFatalError
    from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
    from openfeature.provider import AbstractProvider, Metadata
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "foundation.openfeature needs the OpenFeature SDK: pip install 'foundation[openfeature]'"
    ) from exc

from foundation import telemetry
from foundation.errors import (
    Closed,
    InvalidFlagValue,
    UnknownFlag,
    bounded_repr,
)
from foundation.flags import (
    Evaluation,
    FeatureFlags,
    Flag,
    FlagChange,
    RedisFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._metadata import flag_metadata, stages_by_flag
from foundation.flags._plans import PlanRefresher, is_about, read_plans
from foundation.flags._typed import a_kind

__all__ = ["PROVIDER_NAME", "FoundationProvider"]

PROVIDER_NAME: Final = "foundation"

_log = logging.getLogger("foundation.openfeature")

V = TypeVar("V")
_ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]

_EMPTY: Final[Mapping[str, bool | int | float | str]] = MappingProxyType({})
_INT_MIN: Final = -(2**63)  # a float flag read as an integer: a signed 64-bit one
_INT_LIMIT: Final = 2**63
_HEALTH_EVENTS: Final = ("foundation.flags.stale", "foundation.flags.in_sync")
_HEALTH_STORES: Final = (RedisFlagStore, SQLiteFlagStore)
"""The stores that emit ``_HEALTH_EVENTS`` (a memory store never goes stale)."""


class _ClosedFatal(Closed, ProviderFatalError):
    """``errors.Closed`` that is also the SDK's ``ProviderFatalError``.

    Raised by ``FoundationProvider.initialize`` over closed flags: callers
    catching ``errors.Closed`` still do, and the SDK, seeing the
    ``PROVIDER_FATAL`` error code, sets the provider's status ``FATAL``.
    """

    def __init__(self, message: str) -> None:
        Closed.__init__(self, message)
        self.error_code = ErrorCode.PROVIDER_FATAL
        self.error_message = message


class FoundationProvider(AbstractProvider):
    """An OpenFeature provider answering from a ``FeatureFlags``.

    ``flags`` stays the caller's: ``shutdown()`` stops listening to it, never
    closes it. The provider may be initialized again after ``shutdown()``.
    Resolutions work before ``initialize`` too (the SDK calls them only once
    it is ready); events and migration metadata need ``initialize``. A
    resolution object may be returned again for the same flag state: treat
    it as read-only (the SDK copies it into its evaluation details).

    Raises:
        errors.Closed: ``flags`` is closed.
        errors.InvalidFlagValue: ``flags`` is not a ``FeatureFlags``.

    Example:
        >>> from foundation import FeatureFlags, Flag
        >>> flags = FeatureFlags([Flag("beta")])
        >>> provider = FoundationProvider(flags)
        >>> provider.get_metadata().name
        'foundation'
        >>> flags.set_percentage("beta", 100)
        >>> r = provider.resolve_boolean_details("beta", False)
        >>> r.value, r.variant, str(r.reason)
        (True, 'on', 'SPLIT')
        >>> r = provider.resolve_string_details("beta", "x")
        >>> r.value, str(r.reason), str(r.error_code)
        ('x', 'ERROR', 'TYPE_MISMATCH')
        >>> flags.close()
    """

    def __init__(self, flags: FeatureFlags) -> None:
        super().__init__()
        if not isinstance(flags, FeatureFlags):
            raise InvalidFlagValue(
                f"FoundationProvider needs a FeatureFlags, not {type(flags).__name__}"
            )
        self._flags = flags
        # Declarations never change for the life of a FeatureFlags, so the kinds
        # and descriptions are read once; the hot path is a dict lookup.
        self._kinds: dict[str, str] = {}
        self._declared: dict[str, Flag] = {}
        for name in flags.names:
            declared = flags.flag(name)
            self._kinds[name] = declared.kind
            self._declared[name] = declared
        self._metadata: dict[str, Mapping[str, bool | int | float | str]] = {}
        self._build_metadata({})
        self._evaluate = flags.evaluate
        # flag -> (evaluation, its resolution): evaluate() answers with the same
        # Evaluation object until the flag's state changes (or for an actor the
        # state cannot distinguish), so an identical object means the cached
        # resolution is still the answer. Entries are immutable tuples replaced
        # whole: a racing reader sees an old or a new pair, never a mix.
        self._resolved: dict[str, tuple[object, FlagResolutionDetails[Any]]] = {}
        self._provider_metadata = Metadata(name=PROVIDER_NAME)
        self._lock = threading.Lock()  # guards the subscription state and _stale
        self._unsubscribe: list[Callable[[], None]] = []
        self._detach_health: list[Callable[[], None]] = []  # also in _unsubscribe
        self._stale = False
        self._fatal = False  # PROVIDER_ERROR (PROVIDER_FATAL) emitted: flags found closed
        self._refresher: PlanRefresher | None = None  # set while initialized

    # ------------------------------------------------------------- lifecycle

    def get_metadata(self) -> Metadata:
        """``Metadata(name="foundation")`` (one shared instance: do not change it)."""
        return self._provider_metadata

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Listen to flag changes (and store health); read the recorded migration plans
        (and again, off the resolution path, after each change: see the module docs).

        Idempotent: a second call while initialized changes nothing. The
        evaluation context is not used (the actor comes with each resolution).

        Raises:
            errors.Closed: ``flags`` is closed; the error is also the SDK's
                ``ProviderFatalError``, so the SDK reports ``PROVIDER_ERROR`` with
                ``PROVIDER_FATAL`` and the status ``FATAL`` (it will never answer).
        """
        try:
            self._start()
        except Closed as exc:
            raise _ClosedFatal(str(exc)) from exc

    def _start(self) -> None:
        with self._lock:
            refresher = None if self._unsubscribe else self._subscribe()
            store = self._flags.store
            if refresher is not None and isinstance(store, _HEALTH_STORES):
                # Race: attach first, then read the state. Read first, an outage
                # landing between the read and the attach told its "stale" to no
                # listener of ours: in sync recorded, the store stale, no
                # transition ever reported (a SQLite store: READY for good). An
                # event from the attach on runs _on_health, which waits for this
                # lock and then compares the store's state with the one recorded
                # here: an outage before the read is recorded (never emitted
                # twice), one after it is emitted, after this state.
                self._detach_health = [telemetry.attach(e, self._on_health) for e in _HEALTH_EVENTS]
                self._unsubscribe += self._detach_health
                self._stale = store.stale
        # Read outside the lock, after subscribing: over Redis this is I/O (bounded
        # by the store's timeout), the store's listener thread may need the lock
        # meanwhile to report its health, and a plan recorded and stepped between
        # the subscription and this read is read again (the refresher, once ready).
        try:
            plans = read_plans(self._flags.store, _log)
        except Closed:
            if refresher is not None:  # subscribed by this call: undone
                self.shutdown()
            raise
        self._build_metadata(plans or {})  # again when initialized already: a plan since
        if refresher is not None:
            refresher.ready(failed=plans is None)

    def _subscribe(self) -> PlanRefresher:
        """Listen to flag changes and (the refresher it returns) re-read the plans
        after them; under ``_lock``, not initialized."""
        # The refresher first: _on_change tells it of every change from the
        # subscription on (it reads only after ready()).
        refresher = PlanRefresher(
            self._flags.store,
            self._build_metadata,
            logger=_log,
            name="foundation-openfeature-plans",
        )
        refresher.attach()
        self._refresher = refresher
        try:
            self._unsubscribe = [self._flags.subscribe(self._on_change), refresher.close]
        except BaseException:
            self._refresher = None
            refresher.close()
            raise
        return refresher

    def shutdown(self) -> None:
        """Stop listening to ``flags`` and its store; ``flags`` stays open. Idempotent."""
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, []
            self._detach_health = []
            self._refresher = None
            self._stale = self._fatal = False
        for undo in unsubscribe:
            undo()

    def _build_metadata(self, plans: Mapping[str, Any]) -> None:
        """Swap in the metadata of every declared flag, given the recorded ``plans``."""
        stages = stages_by_flag(plans)
        metadata = {name: flag_metadata(flag, stages) for name, flag in self._declared.items()}
        self._metadata = metadata  # swapped whole: readers see old or new

    # ---------------------------------------------------------------- events

    def _on_change(self, change: FlagChange) -> None:
        # Runs as a flags.subscribe listener: in the writing thread (or the one
        # delivering then), or the flags' courier for another writer's change
        # or a reload (never the store's thread, never under the flags' lock),
        # behind the listeners subscribed before us. Emitting only hands the
        # event to the SDK, whose handlers run on its own executor, so nothing
        # here can block.
        # Race: not ordered against _on_health: after an outage the store tells
        # "in_sync" (our PROVIDER_READY) once the flags reloaded, while the
        # reload's changes may still wait here behind a slow listener. Holding
        # READY for them would make our status hostage to every other listener
        # (STALE for good behind one that never returns): see docs, "Event order".
        refresher = self._refresher
        if refresher is not None:
            refresher.changed()  # a plan may come with it: re-read on its worker
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=[change.flag], message=change.reason)
        )

    def _on_health(self, name: str, data: Mapping[str, Any]) -> None:
        store = self._flags.store
        if not isinstance(store, _HEALTH_STORES) or not is_about(store, data):
            return
        # Race: another store object on the same namespace and URL, or path (another
        # FeatureFlags in this process) emits the same events, so the event is
        # only a trigger; our own store's state decides. The store emits
        # "stale" after marking itself stale and "in_sync" after marking itself
        # synced, from its listener thread, so the state read here is the one
        # the event announces.
        with self._lock:
            # FATAL is final: a STALE or READY after it would make the SDK report a
            # provider that can never answer again as stale, then healthy.
            if not self._unsubscribe or self._fatal:
                return  # shut down, or gone fatal, meanwhile (see _report_fatal)
            stale = store.stale
            if stale == self._stale:
                return
            self._stale = stale
            # Emitted under the lock so that transitions reach the SDK in order.
            if stale:
                self.emit_provider_stale(
                    ProviderEventDetails(
                        message=f"flag store lost its backend: {data.get('error')}"
                    )
                )
            else:
                self.emit_provider_ready(ProviderEventDetails(message="flag store back in sync"))

    # ----------------------------------------------------------- resolutions

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a boolean flag (``TYPE_MISMATCH`` for a typed one)."""
        return self._resolve(flag_key, default_value, evaluation_context, "boolean")

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Resolve a string flag."""
        return self._resolve(flag_key, default_value, evaluation_context, "string")

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        """Resolve an integer flag (or a float flag whose value is integral)."""
        return self._resolve(flag_key, default_value, evaluation_context, "integer")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Resolve a float flag (or an integer flag, converted when exact)."""
        return self._resolve(flag_key, default_value, evaluation_context, "float")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: _ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[_ObjectValue]:
        """Resolve an object flag; the value is read-only (a ``dict``/``list`` subclass,
        shared between callers): change a copy (``dict(value)``)."""
        return self._resolve(flag_key, default_value, evaluation_context, "object")

    # The async variants are AbstractProvider's: they call the sync ones, which
    # never block (one in-memory evaluation), so no thread hop is needed.

    def _resolve(
        self, key: str, default: V, context: EvaluationContext | None, want: str
    ) -> FlagResolutionDetails[V]:
        # One try around it all (free when nothing raises): a hostile key or
        # context (a __hash__, __eq__ or __repr__ that raises) never escapes.
        try:
            try:
                kind = self._kinds.get(key)
            except Exception:  # an unhashable key, or one whose __hash__/__eq__ raises
                kind = None
            if kind is None:
                # Closed first, as for a declared key: `names` raises Closed (-> below)
                # once flags is closed, so an unknown key is PROVIDER_FATAL then too.
                _ = self._flags.names
                # bounded_repr: a huge key, or one whose __repr__ raises, gives a short message.
                return _error(
                    default, ErrorCode.FLAG_NOT_FOUND, f"unknown flag {bounded_repr(key)}"
                )
            if kind != want and not _NUMERIC.get((kind, want), False):
                # Closed first here too: PROVIDER_FATAL whatever the key and kind.
                _ = self._flags.names
                return _error(
                    default,
                    ErrorCode.TYPE_MISMATCH,
                    f"{bounded_repr(key)} is {a_kind(kind)} flag, read as {want}",
                )
            # The targeting key is the actor by FeatureFlags' own rule, one rule for
            # every bridge: evaluate() normalises it (a str subclass as the plain
            # string, an int as str(n), "" as no actor, as the SDK's context merge
            # treats it) and refuses any other key, whatever the flag's state, with
            # InvalidFlagValue (-> INVALID_CONTEXT in _failure).
            actor = None if context is None else context.targeting_key
            evaluation = self._evaluate(key, actor)  # raises: see the except below
            return self._details(key, default, kind, want, evaluation)
        except Exception as exc:  # never raise out of a resolution
            if isinstance(exc, Closed):
                self._report_fatal(str(exc))
            return _failure(key, default, exc)

    def _report_fatal(self, message: str) -> None:
        """Emit ``PROVIDER_ERROR`` with ``PROVIDER_FATAL`` once: ``flags`` was closed.

        ``FeatureFlags.close()`` tells no listener, so the first resolution that
        finds it closed reports the transition (spec 2.8.1); the SDK then sets
        the status ``FATAL`` and answers ``PROVIDER_FATAL`` without calling us.
        """
        with self._lock:
            # Race: resolutions in several threads may find flags closed at once;
            # the flag, read and set under the lock, lets exactly one emit.
            if self._fatal or not self._unsubscribe:
                return  # reported already, or not initialized (no SDK to tell)
            self._fatal = True
            detach, self._detach_health = self._detach_health, []
        # Store health no longer matters: FATAL is final. Race: a health callback
        # already in flight (telemetry read its listeners before this detach)
        # takes the lock and finds _fatal set, so it emits nothing; one that took
        # the lock before us emitted its STALE/READY before the error below, which
        # the SDK therefore records last. Detaching is idempotent (shutdown()
        # detaches again).
        for undo in detach:
            undo()
        # Emitted outside the lock: the SDK only updates its status and queues
        # the handlers on its own pool. Race: a shutdown() landing between the
        # check and the emit is harmless: the SDK detaches a provider after
        # shutting it down (emit then does nothing), and a status it records for
        # a provider no longer registered is never read.
        try:
            self.emit_provider_error(
                ProviderEventDetails(
                    message=f"the flags were closed: {message}",
                    error_code=ErrorCode.PROVIDER_FATAL,
                )
            )
        except Exception:  # called from a resolution, which never raises
            _log.exception("reporting closed flags to the OpenFeature SDK failed")

    def _details(
        self, key: str, default: V, kind: str, want: str, evaluation: Evaluation
    ) -> FlagResolutionDetails[V]:
        """The resolution of ``evaluation`` of a ``kind`` flag read as ``want`` (cached)."""
        metadata = self._metadata[key]
        if want == kind:
            cached = self._resolved.get(key)
            # Race: initialize() or the plan refresher's worker may swap the
            # metadata while a resolution built with the old one is stored;
            # comparing it too keeps that one out.
            if (
                cached is not None
                and cached[0] is evaluation
                and cached[1].flag_metadata is metadata
            ):
                return cached[1]  # same flag, same kind
        reason = evaluation.reason
        if reason == "DISABLED":
            # The caller's default, with the off variant ("off", or the default
            # variant) as OFREP reports it: one answer over either bridge.
            return FlagResolutionDetails(
                value=default,
                variant=evaluation.variant,
                reason=Reason.DISABLED,
                flag_metadata=metadata,
            )
        value = evaluation.value
        if kind != want:  # an integer/float pair: convert only when exact
            converted = _convert(value, want)
            if converted is _MISMATCH:
                return _error(
                    default,
                    ErrorCode.TYPE_MISMATCH,
                    f"{bounded_repr(key)} is {a_kind(kind)} flag; "
                    f"its value {value!r} is not exactly a {want}",
                )
            value = converted
        resolved = FlagResolutionDetails(
            value=value,
            reason=_REASONS.get(reason, reason),
            variant=evaluation.variant,
            flag_metadata=metadata,
        )
        if want == kind:
            self._resolved[key] = (evaluation, resolved)
        return resolved

    def __repr__(self) -> str:
        state = "initialized" if self._unsubscribe else "not initialized"
        return f"<FoundationProvider {state} over {self._flags!r}>"


# evaluate()'s reasons as the SDK's enum (a StrEnum: equal to the plain strings).
_REASONS: Final[dict[str, Reason]] = {r.value: r for r in Reason}

# (flag kind, requested kind) pairs answered by a lossless numeric conversion.
_NUMERIC: Final = {("integer", "float"): True, ("float", "integer"): True}
_MISMATCH: Final = object()


def _convert(value: Any, want: str) -> Any:
    """The number as the requested kind, or ``_MISMATCH`` when that would lose information."""
    if want == "float":  # an integer flag
        try:
            as_float = float(value)
        except OverflowError:  # beyond any float
            return _MISMATCH
        # int == float compares exactly in Python: 2**62 is exact, 2**53 + 1 is not.
        return as_float if as_float == value else _MISMATCH
    # want == "integer", a float flag: integral and a signed 64-bit integer (what
    # OFREP clients and other SDKs hold), so 1e300 is no 301-digit answer.
    if math.isfinite(value) and float(value).is_integer() and _INT_MIN <= value < _INT_LIMIT:
        return int(value)
    return _MISMATCH


def _failure(key: object, default: V, exc: Exception) -> FlagResolutionDetails[V]:
    """The error resolution for an exception out of ``evaluate()`` (or, ``GENERAL``,
    out of anything else a hostile key or context can make raise); bounded."""
    if isinstance(exc, InvalidFlagValue):
        return _error(default, ErrorCode.INVALID_CONTEXT, f"targeting key: {exc}")
    if isinstance(exc, Closed):
        return _error(default, ErrorCode.PROVIDER_FATAL, str(exc))
    if isinstance(exc, UnknownFlag):
        return _error(default, ErrorCode.FLAG_NOT_FOUND, str(exc))
    _log.error("evaluating flag %s failed", bounded_repr(key), exc_info=exc)
    return _error(default, ErrorCode.GENERAL, _describe(exc))


_MAX_MESSAGE: Final = 500


def _describe(exc: BaseException) -> str:
    """``"Type: message"``, bounded, even when ``str(exc)`` raises."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__} (unprintable)"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _error(default: V, code: ErrorCode, message: str) -> FlagResolutionDetails[V]:
    return FlagResolutionDetails(
        value=default, reason=Reason.ERROR, error_code=code, error_message=message
    )
