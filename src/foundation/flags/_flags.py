"""``FeatureFlags``: lock-free evaluation of the declared flags, audited writes.

Concurrency contract of ``FeatureFlags``:

- Reads (``enabled``, ``value``, ``variant``, ``evaluate``, ``state``) take
  no lock. They look a name up in answer tables that writers never mutate: a
  writer builds new tables and swaps the attribute (one atomic store), so a
  reader sees the state before or after a write, never half of one. A read
  of many flags (internal, ``_snapshot``: OFREP's bulk answer, the flag
  lists) reads them all from one swap, so it never shows half of a write
  that changed several (a migration step) either.
- Writes are serialised by one lock per instance and by the store's own
  transaction (which also serialises writers in other processes sharing it).
  The lock is a ``FairRLock`` (waiters get it in arrival order): a thread
  writing in a loop cannot starve the store's notification thread, which
  needs it to apply another process's change (a kill switch).
  A write reads the flag's current state inside the store transaction, so two
  writers never lose each other's update.
- Listeners never run under the lock, nor on the store's thread. A change is
  queued under the lock (so in commit order) and delivered once it is released
  (``foundation._listeners.DeliveryQueue``): by the writing thread before its
  write returns, unless another thread is delivering at that moment, which then
  delivers it too; a change made elsewhere (the store's notification thread)
  is applied under the lock and delivered by a short-lived courier thread
  (``foundation-flags-events``). One thread delivers at a time, one change
  after another, so a slow listener delays only the listeners of later
  changes: never a write, nor the reload of another process' change (a kill
  switch). A listener may read and write flags, and wait for other threads.
- Swap hooks (internal, ``_watch_tables``) are for what must not wait for
  the listeners: each is called (with this object) after the answer tables
  were swapped, in the thread that swapped them (the writer's, or the
  store's for another process's change), once the lock is released and
  before any listener runs. ``MigratingRegistry`` follows its flag with one,
  so a stuck listener cannot keep it on the old side.
- After ``close()`` every public call (reads included) raises
  ``errors.Closed``. Readers need no check for it: ``close()`` swaps the
  answer tables for ones that raise ``Closed`` on any lookup, so the hot path
  stays one dict lookup.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import replace as _replace
from typing import Any, Final, NoReturn, TypeVar

from foundation import _fork, telemetry
from foundation._fork import forked_closed
from foundation._listeners import DeliveryQueue, Listeners
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FlagError,
    InvalidFlagValue,
    UnknownFlag,
)
from foundation.flags._change_log import log_change
from foundation.flags._config import (
    Source,
    check_audit_text,
    nearest,
    parse_config,
    short_repr,
)
from foundation.flags._declared import Flag, _by_name, _declared_states
from foundation.flags._fair_lock import FairRLock
from foundation.flags._hashing import HASH_SPACE
from foundation.flags._hashing import sha256 as _sha256
from foundation.flags._rules import (
    HASH_CACHE_SIZE,
    MAX_CACHED_ACTOR,
    _compile,
    _compile_boolean,
    _compile_typed,
    _Compiled,
    _Rule,
)
from foundation.flags._store import (
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    StoreTransaction,
    check_percentage,
    writing_as,
)
from foundation.flags._typed import (
    Evaluation,
    a_kind,
    check_split,
    check_variant,
    is_valid_unicode,
)

__all__ = ["Evaluation", "FeatureFlags", "Flag", "Listener"]

_log = logging.getLogger("foundation.flags")

T = TypeVar("T")
Listener = Callable[[FlagChange], None]
Actor = str | int


class _ProcessEnvironment:
    """The default of ``load_from_config(env=...)``: ``os.environ``, read at call time.

    A sentinel rather than ``os.environ`` itself, so that the signature (and
    so ``help(FeatureFlags)``) never prints the environment and its secrets.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<the process environment>"


PROCESS_ENV: Final = _ProcessEnvironment()


class _ClosedTable(dict[str, Any]):
    """An empty answer table whose every lookup raises ``Closed`` (a closed FeatureFlags)."""

    __slots__ = ()

    def __missing__(self, key: str) -> NoReturn:
        raise Closed("this FeatureFlags is closed")


_CLOSED_TABLE: Final = _ClosedTable()


class _ForkedTable(dict[str, Any]):
    """The answer table of a FeatureFlags inherited across ``fork()`` (see
    ``_inherited_by_fork``): every lookup raises ``Closed`` naming the fork."""

    __slots__ = ()

    def __missing__(self, key: str) -> NoReturn:
        raise _forked_closed()


_FORKED_TABLE: Final = _ForkedTable()


def _forked_closed() -> Closed:
    return forked_closed("FeatureFlags", create="a new FeatureFlags (and its store)")


def _actor(actor: object) -> str:
    """Actors are strings; an int is accepted and normalised with ``str()``."""
    if isinstance(actor, str):
        # A str subclass (a StrEnum member) as the plain string it equals: that is what
        # every store keeps, and its own __eq__/__hash__ never run in the sets.
        return actor if actor.__class__ is str else str.__str__(actor)
    if isinstance(actor, int) and not isinstance(actor, bool) and -(2**63) <= actor < 2**63:
        return str(int(actor))
    raise InvalidFlagValue(
        f"an actor must be a str or an int (64-bit), not {type(actor).__name__}: "
        f"{short_repr(actor)}"
    )


def _stored_actor(actor: object) -> str:
    """An actor a write persists (allow, deny, assign): not empty or blank, valid Unicode.

    Reads hash any str (lone surrogates passed, see ``_hashing``), but a stored
    actor is served as JSON (admin API, CLI, history), which cannot carry a lone
    surrogate: refused before anything is written. A blank one (``"   "``, an
    unset shell variable quoted) names nobody and shows as nothing in a table.
    """
    a = _actor(actor)
    if not a:  # reads take "" for no actor: an entry for it could never match
        raise InvalidFlagValue('an actor written to the store must not be empty ("" is no actor)')
    if not a.strip():
        raise InvalidFlagValue(
            f"an actor written to the store must not be blank, not {short_repr(a)}"
        )
    if not is_valid_unicode(a):
        raise InvalidFlagValue(
            f"an actor written to the store must be valid Unicode (no lone surrogates), "
            f"not {short_repr(a)}"
        )
    return a


class _Writer:
    """What a FeatureFlags transaction body sees: audited updates through one store txn."""

    def __init__(self, flags: FeatureFlags, txn: StoreTransaction, config: dict[str, FlagState]):
        self.flags = flags
        self.txn = txn
        self.config = config
        self.writes: dict[str, tuple[FlagState | None, FlagChange]] = {}
        self._pending: dict[str, FlagState] | None = None  # see ``served``

    def base(self, name: str) -> FlagState:
        return _first(self.config.get(name), self.flags._defaults[name])

    def current(self, name: str) -> FlagState:
        return _first(self.txn.get(name), self.base(name))

    def served(self, name: str, stored: FlagState | None) -> FlagState | None:
        """The runtime state this node serves for ``name``: ``stored`` (the committed
        one, ``txn.get``) with the node's pending kill switches on it applied
        (``RedisFlagStore`` keeps a kill switch made during an outage pending,
        served at once, committed when Redis takes writes again)."""
        if self._pending is None:  # one read per transaction run, inside it
            self._pending = _pending_kill_switches(self.flags._store)
        off = self._pending.get(name)
        if off is None:
            return stored  # the common case: no kill switch pending on this flag
        return off if stored is None else _replace(stored, switch=False)

    def update(
        self,
        name: str,
        mutate: Callable[[FlagState], FlagState | None],
        by: str | None,
        reason: str | None,
    ) -> FlagChange | None:
        """Store ``mutate(effective state)`` (None: clear); a no-op write records nothing.

        A no-op leaves both the committed state and the one this node serves
        (``served``) as they are; ``old`` is the state this node served.
        """
        check_audit_text(by, "by")  # every write passes here: one rule on every store
        check_audit_text(reason, "reason")
        stored = self.txn.get(name)
        new_stored = mutate(_first(stored, self.base(name)))
        served = self.served(name, stored)
        # Race (a write over a pending kill switch): on a read-only or out-of-memory
        # Redis, disable("f") is kept pending (f served off here, on in Redis).
        # enable("f") compared its result with Redis' state only, found it equal
        # ("on") and wrote nothing, without an error: acknowledged, f stayed off,
        # and the kill switch was committed once Redis took writes again. It is a
        # change for this node (off -> on), so it is written: refused while Redis
        # refuses writes (BackendUnavailable, nothing changed). Once Redis takes
        # writes, the store commits this node's pending kill switches before any
        # write (RedisFlagStore.transaction) and runs this again on the state they
        # left: the write is then later than the kill switch, never superseding
        # it (an allow("f", ...) turned a killed f back on; docs/flags-outages.md).
        # Computed on the committed state, as every write (a kill switch pending
        # here may be stale: committed and superseded elsewhere, see NodeCache's
        # write-back). The pending list is read inside the store's transaction:
        # its lock keeps new kill switches out; one committed meanwhile is in
        # Redis' state too, and the overlay is idempotent.
        if new_stored == stored and new_stored == served:
            return None
        old = _first(served, self.base(name))
        change = FlagChange(name, old, _first(new_stored, self.base(name)), by, reason, time.time())
        self.txn.put(name, new_stored, change)
        self.writes[name] = (new_stored, change)
        return change


class FeatureFlags:
    """Declared feature flags with lock-free reads, rollouts and an audit trail.

    ``enabled(name, actor=None)`` decides, in order: switch off -> False; actor
    in ``deny`` -> False; actor in ``allow`` -> True; a percentage p is set ->
    with an actor, its rollout bucket < p (see ``bucket``), without one only
    p == 100; otherwise True. The effective state of a flag is its runtime
    state (persisted in the store), else the config layer, else the declared
    default. Actors are strings (an int is normalised with ``str()``, a ``str``
    subclass such as a ``StrEnum`` member with ``str.__str__``); the empty string
    is no actor, as over OpenFeature and OFREP: ``enabled(name, "")`` answers as
    ``enabled(name)`` (so do ``value``, ``variant`` and ``evaluate``).
    Rollout hashes are remembered per flag in a bounded cache
    (``HASH_CACHE_SIZE`` actors; emptied when full), since a hash never changes;
    an actor longer than ``MAX_CACHED_ACTOR`` (256) characters is hashed each time.

    Typed flags (declared with ``variants``) are read with ``value``,
    ``variant`` and ``evaluate`` (which also says why: see there) and changed
    with ``assign`` and ``set_split`` as well as the common writes; reading
    one with ``enabled`` (or a boolean flag with ``value``) is
    ``InvalidFlagValue``.

    ``store`` defaults to a new ``MemoryFlagStore`` owned (and closed) by this
    object; a store you pass stays yours to close, after ``close()`` here.
    After ``close()`` every call (reads, ``names`` and ``subscribe`` included)
    raises ``errors.Closed``, except ``store``, so that a store you passed can
    still be closed.

    Example:
        >>> flags = FeatureFlags([Flag("beta"), Flag("dark_mode", default=True)])
        >>> flags.enabled("beta"), flags.enabled("dark_mode")
        (False, True)
        >>> flags.set_percentage("beta", 50, by="ana", reason="half of users")
        >>> flags.enabled("beta"), flags.enabled("beta", actor="user-7")
        (False, True)
        >>> flags.disable("beta")       # the kill switch; the rollout is kept
        >>> flags.enabled("beta", actor="user-7")
        False
        >>> flags.enable("beta")        # resumes the 50% rollout
        >>> flags.state("beta").percentage
        50.0
        >>> flags.enabled("btea")
        Traceback (most recent call last):
        ...
        foundation.errors.UnknownFlag: unknown flag 'btea' (did you mean 'beta'?)
        >>> flags.close()
    """

    # Slots make the hot path's attribute and method loads the cheapest kind.
    __slots__ = (
        "__weakref__",
        "_closed",
        "_compiled",
        "_config",
        "_declared",
        "_defaults",
        "_delivery",
        "_effective",
        "_evals",
        "_forked",
        "_hash_cache",
        "_listeners",
        "_lock",
        "_names",
        "_owns_store",
        "_plain",
        "_released",
        "_remote",
        "_rules",
        "_runtime",
        "_split_cache",
        "_store",
        "_swap_hooks",
        "_told",
        "_unsubscribe",
    )

    def __init__(self, declared: Iterable[Flag], *, store: FlagStore | None = None) -> None:
        if isinstance(declared, str | bytes | Flag) or not isinstance(declared, Iterable):
            raise InvalidFlagValue(f"declare an iterable of Flag(...), not {short_repr(declared)}")
        if store is not None and not isinstance(store, FlagStore):
            raise InvalidFlagValue(f"store must be a FlagStore or None, not {short_repr(store)}")
        tool = _FROM_STORE.get()
        flags = _by_name(declared, tool=tool)
        self._declared = flags
        self._names = tuple(flags)
        self._defaults = _declared_states(flags)
        self._owns_store = store is None
        self._store: FlagStore = MemoryFlagStore() if store is None else store
        self._lock = FairRLock()
        self._listeners: Listeners[FlagChange] = Listeners("flag change listener", area="flags")
        # Changes queued under the lock, delivered after it (see the module docs).
        self._delivery: DeliveryQueue[FlagChange] = DeliveryQueue(
            self,
            "_delivered_to",
            "flag change listener",
            area="flags",
            courier_name="foundation-flags-events",
        )
        # Internal hooks called after each swap of the answer tables (``_watch_tables``).
        self._swap_hooks: Listeners[FeatureFlags] = Listeners("flag table swap hook", area="flags")
        self._closed = False
        self._forked = False  # inherited across fork(): closed in the child
        self._released = False  # close() ran to its end: unsubscribed, own store closed
        self._config: dict[str, FlagState] = {}
        self._runtime: dict[str, FlagState] = {}
        # Answer tables, replaced wholesale on every write (never mutated in place).
        self._plain: dict[str, bool] = {}
        self._rules: dict[str, _Rule] = {}
        self._effective: dict[str, FlagState] = {}
        self._evals: dict[str, _Compiled] = {}  # every flag, both kinds
        # Flags whose last news to listeners (a remote record's ``new``) is not
        # what the table serves: flag -> that news (see ``_on_remote``).
        self._told: dict[str, FlagState] = {}
        # name -> (state, its compiled evaluation, plain, rule): reused while a state is
        # equal. Replaced whole by each rebuild, never mutated: one read of it is every
        # flag as one swap left it (``_snapshot``).
        self._compiled: dict[str, tuple[FlagState, _Compiled, bool, _Rule]] = {}
        # Per flag, kept across writes: a hash depends only on (flag, actor).
        self._hash_cache: dict[str, dict[str, int]] = {n: {} for n in self._names}
        # Per typed flag and variant: actor -> -ln(u), which depends only on the three strings.
        self._split_cache: dict[str, dict[str, dict[str, float]]] = {n: {} for n in self._names}
        if not tool:
            _record_catalogue(self._store, flags.values())
        with self._lock:
            self._reload()
            # Subscribe after the first load: a remote change that lands in
            # between is seen by that load or reported by the store later.
            # One bound method, kept: the store knows this subscriber by identity,
            # so that it does not report our own writes back (``writing_as``).
            self._remote = self._on_remote
            self._unsubscribe = self._store.subscribe(self._remote)
        _fork.track(self)  # closed in a forked child (see _inherited_by_fork)

    @classmethod
    def from_store(cls, store: FlagStore) -> FeatureFlags:
        """A ``FeatureFlags`` over ``store`` declaring its recorded catalogue (for tools).

        The flags are those some application declared on the store (with their
        defaults); the config layer of those applications is not known here.
        Nothing is recorded. ``store`` stays the caller's to close.

        Example:
            >>> store = MemoryFlagStore()
            >>> FeatureFlags([Flag("beta", description="new")], store=store).close()
            >>> tool = FeatureFlags.from_store(store)
            >>> tool.names, tool.flag("beta").description
            (('beta',), 'new')
            >>> tool.enable("btea")
            Traceback (most recent call last):
            ...
            foundation.errors.UnknownFlag: unknown flag 'btea' (did you mean 'beta'?)
            >>> tool.close(); store.close()
        """
        catalogue = store.catalogue()
        declared = [
            Flag(i.name, i.default, i.description, i.variants) for _, i in sorted(catalogue.items())
        ]
        token = _FROM_STORE.set(True)
        try:
            return cls(declared, store=store)
        finally:
            _FROM_STORE.reset(token)

    # ------------------------------------------------------------------ reads

    def enabled(self, name: str, actor: Actor | None = None) -> bool:
        """Whether flag ``name`` is on (for ``actor``, if given). Always a real bool.

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``actor`` is neither a str nor an int.
        """
        if actor is None:
            # Hot path: one dict lookup in a table that is swapped, never mutated.
            try:
                return self._plain[name]
            except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
                raise self._miss(name) from None  # typed flags are absent from the table
        return self._for_actor(name, actor)

    def _uncounted(self, name: str) -> bool:
        """``enabled(name)``, never counted in ``foundation_flag_evaluations_total``.

        For the library's own reads of a flag's state (``Migration.status()``, which
        the admin page polls): metrics counts the application's evaluations only
        (``foundation.metrics`` counts by wrapping ``enabled``, not this method).
        """
        try:
            return self._plain[name]
        except (KeyError, TypeError):
            raise self._miss(name) from None

    def _for_actor(self, name: str, actor: Actor) -> bool:
        # Kept out of enabled(): fewer locals make the actor-less call's frame cheaper.
        try:
            rule = self._rules[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._miss(name) from None
        if actor.__class__ is not str:
            actor = _actor(actor)  # checked whatever the rule: a bad actor is always refused
        if rule is False or rule is True:
            return rule  # also the answer without an actor (see _compile)
        if not actor:
            return self._plain[name]  # "" is no actor: the answer without one
        deny, allow, limit, prefix, cache = rule
        if actor in deny:
            return False
        if actor in allow:
            return True
        if limit >= HASH_SPACE:
            return True
        h = cache.get(actor)
        if h is None:
            # Inlined actor_hash(): first 8 bytes of sha256(flag \0 actor), big-endian.
            # UTF-8 with surrogates passed (see _hashing): an invalid actor still hashes.
            h = int.from_bytes(
                _sha256((prefix + actor).encode("utf-8", "surrogatepass")).digest()[:8], "big"
            )
            if len(actor) <= MAX_CACHED_ACTOR:  # a long actor is hashed each time, never kept
                if len(cache) >= HASH_CACHE_SIZE:
                    cache.clear()  # racing readers at worst recompute a hash: never wrong
                cache[actor] = h
        return h < limit

    def value(self, name: str, actor: Actor | None = None) -> Any:
        """The value of typed flag ``name`` (for ``actor``, if given); see ``evaluate``.

        Object values are read-only (``dict``/``list`` subclasses); copy to change.

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``name`` is a boolean flag (read it with ``enabled``),
                or ``actor`` is neither a str nor an int.
        """
        try:
            compiled = self._evals[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._unknown(name) from None
        if not compiled.typed:
            raise InvalidFlagValue(
                f"{name!r} is a boolean flag; read it with enabled() or variant()"
            )
        if actor is None:
            return compiled.bare.value
        if actor.__class__ is not str:
            actor = _actor(actor)  # checked even when the actor cannot matter
        fixed = compiled.fixed
        if fixed is not None:
            return fixed.value  # the value without an actor too (only reasons differ)
        if not actor:
            return compiled.bare.value  # "" is no actor
        return compiled.evaluate(actor).value

    def variant(self, name: str, actor: Actor | None = None) -> str:
        """The variant of ``name`` (for ``actor``, if given): a typed flag's variant
        name, or ``"on"``/``"off"`` for a boolean flag; see ``evaluate``.

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``actor`` is neither a str nor an int.
        """
        return self.evaluate(name, actor).variant

    def evaluate(self, name: str, actor: Actor | None = None) -> Evaluation:
        """The full answer for ``name`` (and ``actor``): value, variant, reason, kind.

        In order: switch off -> the default variant (boolean: False, ``"off"``),
        ``DISABLED``; actor denied -> the default variant (boolean: False),
        ``TARGETING_MATCH``; actor allowed (boolean) or assigned (typed) -> on /
        its variant, ``TARGETING_MATCH``; a percentage or split -> with an
        actor, its bucket / split variant, ``SPLIT``; without one, on / the
        variant holding 100% (``SPLIT``) if there is one, else off / the
        default variant (``DEFAULT``); otherwise on / the default variant:
        ``DEFAULT`` if the flag has a deny, allow or assignment that did not
        pick the actor (or there is no actor), else ``STATIC`` (no rules).

        Example:
            >>> flags = FeatureFlags([Flag("beta"), Flag("size", variants={"s": 1, "l": 3},
            ...                                          default="s")])
            >>> flags.set_percentage("beta", 100)
            >>> flags.evaluate("beta").reason, flags.evaluate("size").reason
            ('SPLIT', 'STATIC')
            >>> flags.disable("size")
            >>> flags.evaluate("size", actor="ana")
            Evaluation(flag='size', value=1, variant='s', reason='DISABLED', kind='integer')
            >>> flags.close()

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``actor`` is neither a str nor an int.
        """
        try:
            compiled = self._evals[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._unknown(name) from None
        if actor is None:
            return compiled.bare
        if actor.__class__ is not str:
            actor = _actor(actor)  # checked even when the actor cannot matter
        if not actor:
            # "" is no actor. Before `fixed`: without an actor the reason may differ
            # (a 0% rollout answers everyone SPLIT, no actor DEFAULT).
            return compiled.bare
        fixed = compiled.fixed
        if fixed is not None:
            return fixed
        return compiled.evaluate(actor)

    def state(self, name: str) -> FlagState:
        """The effective state of ``name`` (runtime, else config, else default).

        Raises:
            UnknownFlag: ``name`` was never declared.
            Closed: this object is closed (as every call here).
        """
        try:
            return self._effective[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._unknown(name) from None

    @property
    def names(self) -> tuple[str, ...]:
        """The declared flag names, in declaration order."""
        self._check_open()
        return self._names

    def flag(self, name: str) -> Flag:
        """The declaration of ``name``."""
        self._check_open()
        try:
            return self._declared[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._unknown(name) from None

    def _snapshot(self) -> _Snapshot:
        """Every flag as one swap of the answer tables left it, for reading many (internal).

        Race: ``evaluate`` and ``state`` each read the newest tables, so a loop
        over the flags could straddle a reload that changed several at once (a
        migration step: one store transaction, published as whole tables) and
        show a state no transaction committed, half the step on. The snapshot
        reads the rebuild's memo (``_compiled``: every flag's state and compiled
        evaluation, replaced whole) once, and answers every read from it. For
        bulk reads (OFREP's bulk evaluation, the admin's and the CLI's flag
        lists); the single reads stay as they are (no extra cost on them).

        Raises:
            Closed: this object is closed (a snapshot taken before ``close()``
                still answers, as a read racing ``close()`` may).
        """
        self._check_open()
        return _Snapshot(self, self._compiled)

    def history(self, name: str | None = None) -> list[FlagChange]:
        """Every recorded runtime change (of ``name``, or of all flags), oldest first."""
        self._check_open()
        if name is not None:
            name = self._check_name(name)
        return self._store.history(name)

    @property
    def store(self) -> FlagStore:
        """The flag store. Still answers after ``close()``: a store you passed is
        yours to close then (``flags.close(); flags.store.close()``)."""
        return self._store

    # ----------------------------------------------------------------- writes

    def enable(self, name: str, *, by: str | None = None, reason: str | None = None) -> None:
        """Turn the switch on; percentage and actor sets stay as they were."""
        self._update(name, lambda s: _replace(s, switch=True), by, reason)

    def disable(self, name: str, *, by: str | None = None, reason: str | None = None) -> None:
        """Turn the switch off (the kill switch); nothing else changes.

        On a store that keeps kill switches through outages (``RedisFlagStore``),
        this works while the backend is unreachable: it takes effect here at
        once and is committed when the backend returns (``FlagStore.kill_switch``).
        """
        name = self._check_name(name)
        self._transact(
            lambda w: w.update(name, lambda s: _replace(s, switch=False), by, reason),
            kill_switch=True,
        )

    def set(
        self, name: str, value: bool, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """``enable`` or ``disable`` by value; a non-bool is InvalidFlagValue.

        ``set(name, False)`` is ``disable``: the kill switch, kept through an outage
        on a store that keeps kill switches.
        """
        self._check_open()  # Closed first, whatever the arguments (as every call)
        if not isinstance(value, bool):
            raise InvalidFlagValue(
                f"set({short_repr(name)}, ...) takes a bool, not {short_repr(value)}"
            )
        if value:
            self.enable(name, by=by, reason=reason)
        else:
            self.disable(name, by=by, reason=reason)

    def set_percentage(
        self, name: str, percentage: float, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Roll out to ``percentage`` (0..100, fractions allowed) of actors; switch on."""
        self._boolean_only(name, "set_percentage", "set_split")
        p = check_percentage(percentage) + 0.0  # -0.0 + 0.0 is 0.0: no "-0%" stored
        self._update(name, lambda s: _replace(s, switch=True, percentage=p), by, reason)

    def allow(
        self, name: str, actor: Actor, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Add ``actor`` to the allow set (on for it unless denied or switched off).

        A stored actor must be valid Unicode, neither empty nor blank: one with
        a lone surrogate (which reads still hash) or ``"   "`` is
        ``InvalidFlagValue`` here, and nothing is written; so are ``deny`` and
        ``assign``.
        """
        self._boolean_only(name, "allow", "assign")
        a = _stored_actor(actor)
        self._update(name, lambda s: _replace(s, allow=s.allow | {a}), by, reason)

    def deny(
        self, name: str, actor: Actor, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Add ``actor`` to the deny set (off, or a typed flag's default variant, for it,
        whatever else holds)."""
        name = self._check_name(name)  # first, as allow(): Closed before the actor is judged
        a = _stored_actor(actor)
        self._update(name, lambda s: _replace(s, deny=s.deny | {a}), by, reason)

    def assign(
        self,
        name: str,
        actor: Actor,
        variant: str | None,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Pin ``actor`` to ``variant`` of typed flag ``name`` (None: remove its pin).

        An assignment beats the split; a deny and the switch beat it.

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``name`` is a boolean flag (use ``allow``/``deny``),
                ``variant`` is not one of its variants (the nearest is named),
                ``actor`` is neither a str nor an int, or (pinning) is empty,
                blank or holds a lone surrogate; ``by`` is empty or blank.
        """
        flag = self._typed_flag(name, "assign", "allow() or deny()")
        # Removing a pin stores no actor: any str is accepted, so a bad one
        # left by an older version can still be removed.
        a = _actor(actor) if variant is None else _stored_actor(actor)
        if variant is not None:
            assert flag.variants is not None
            check_variant(name, variant, flag.variants)
            if variant.__class__ is not str:  # a StrEnum member: kept as its plain string
                variant = str.__str__(variant)

        def mutate(s: FlagState) -> FlagState:
            pins = dict(s.assign)
            if variant is None:
                pins.pop(a, None)
            else:
                pins[a] = variant
            return _replace(s, assign=pins)

        self._update(name, mutate, by, reason)

    def set_split(
        self,
        name: str,
        shares: Mapping[str, float],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Split actors of typed flag ``name`` across variants; turns the switch on.

        ``shares`` maps variant names to percents (0..100; absent variants get 0)
        summing to 100. An actor's variant is a stable, documented hash of
        (flag, variant, actor) (weighted rendezvous, see ``foundation.flags.bucket``'s
        module): raising a variant's share while no other variant's share rises
        (the others lowered or unchanged) never moves an actor out of it.

        Raises:
            UnknownFlag: ``name`` was never declared.
            InvalidFlagValue: ``name`` is a boolean flag (use ``set_percentage``),
                an unknown variant, a share outside 0..100, or a sum other than 100.
        """
        flag = self._typed_flag(name, "set_split", "set_percentage()")
        assert flag.variants is not None
        split = check_split(name, shares, flag.variants)
        self._update(name, lambda s: _replace(s, switch=True, split=split), by, reason)

    def clear(self, name: str, *, by: str | None = None, reason: str | None = None) -> None:
        """Drop the runtime state: config applies, else the declared default."""
        self._update(name, lambda s: None, by, reason)

    def reset_all(self, *, by: str | None = None, reason: str | None = None) -> None:
        """``clear`` every flag in one transaction; one FlagChange per flag that changes."""

        def body(w: _Writer) -> None:
            for name in self._names:
                w.update(name, lambda s: None, by, reason)

        self._transact(body)

    def load_from_config(
        self,
        source: Source = None,
        *,
        env: Mapping[str, str] | _ProcessEnvironment | None = PROCESS_ENV,
    ) -> None:
        """Replace the config layer from ``source`` then ``FOUNDATION_FLAG_<NAME>`` in ``env``.

        ``source``: a TOML file (``[flags]``, or ``[tool.foundation.flags]`` in a
        pyproject.toml) or a mapping ``{flag: value}``. Values: booleans,
        on/off/true/false (any case) or ``"<p>%"``. ``env`` defaults to the
        process environment as it is at call time (``os.environ``; a sentinel
        in the signature, so ``help()`` never shows it); ``env=None`` ignores
        the environment. The layer lives in memory under the runtime state and
        is never written to the store. All or nothing.

        Raises:
            UnknownFlag: listing every undeclared name (file, mapping or variable).
            InvalidFlagValue: listing every bad value; or an unreadable/malformed file.
        """
        self._check_open()
        environ = os.environ if isinstance(env, _ProcessEnvironment) else env
        layer, label = parse_config(source, environ, self._declared)
        with self._lock:
            self._check_open()
            before = self._effective
            self._config = layer
            self._rebuild()
            for name in self._names:  # effective changes are news for listeners
                if before[name] != self._effective[name]:
                    change = FlagChange(
                        name, before[name], self._effective[name], "config", label, time.time()
                    )
                    self._notify(change)
        self._swapped()
        self._deliver()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` after every change; returns an unsubscribe callable.

        Listeners hear changes made here, changes committed by other processes
        sharing the store (when the store reports them), and effective changes
        caused by a config load (``by="config"``, not in ``history()``), one
        change at a time. Order: the changes of one writer (this object, or
        one other ``FeatureFlags`` or process) are heard in their commit
        order; a change made through another ``FeatureFlags`` (even on the
        same store object) or another process may be heard after a later
        change made here, since this object tells its own at once and the
        other's arrives from the store's thread. There is no global commit
        order across writers: each change's ``old``/``new`` tell what it did,
        and ``enabled()`` always answers the latest state. Listeners run once
        the change is applied and no lock is held: in the writing thread
        before its write returns (unless another thread is delivering then: it
        delivers this change too), and for another writer's change in a
        short-lived courier thread
        (``foundation-flags-events``), never on the store's thread. So a slow
        listener delays only the listeners of later changes, never a write nor
        applying a remote change (``enabled()`` answers the new state at once).
        A listener that raises is ignored: logged under ``foundation.flags``
        and passed to ``sys.unraisablehook`` if one is installed. The
        unsubscribe callable is idempotent and removes this one subscription;
        after ``close()`` no listener is called.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        self._check_open()
        return self._listeners.subscribe(listener)

    def close(self) -> None:
        """Stop listening to the store and close it if this object created it. Idempotent.

        Every later call raises ``errors.Closed``.
        """
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before the unsubscribe or
        # its own store's close left the store subscribed (a SQLite store's
        # watcher thread calling us back) or open for good. So only a close()
        # run to its end (_released) makes the next one return; the others do
        # every step again (each is idempotent).
        with self._lock:
            if self._released:
                return
            self._closed = True
            # Readers take no lock: the closed tables make their next lookup
            # raise Closed (one racing with this swap answers from the old table).
            self._plain = self._rules = self._effective = self._evals = _CLOSED_TABLE
            self._listeners.clear()
            self._swap_hooks.clear()
        # Race: the store's notification thread may be waiting for self._lock
        # to apply a remote change; closing the store (which joins that thread)
        # while holding the lock would stall until the join gives up. The
        # callback finds _closed set and does nothing.
        self._unsubscribe()
        if self._owns_store:
            self._store.close()
        self._released = True

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O.

        The child has no store thread (a Redis or SQLite store served the
        fork-time state for ever) and may find the lock held for ever by a
        parent thread (its first write hung). So every call raises ``Closed``
        naming fork(), and ``close()`` does nothing (``_released``): the store,
        closed in the child too or private to it, is neither unsubscribed nor
        closed. The tables are swapped as ``close()`` does (nothing added to the
        hot path); the lock is reset in place (cheaper than a new one, in every
        ``preexec_fn`` child) and the listeners are new.
        """
        self._lock._after_fork_in_child()
        # An unsubscribe handed out before the fork captured the old listeners'
        # locks (a parent thread in subscribe/unsubscribe at the fork held one):
        # reset in place, so calling it in the child never hangs.
        _fork.reset_locks(self._listeners._lock, self._swap_hooks._lock)
        self._listeners = Listeners("flag change listener", area="flags")
        self._swap_hooks = Listeners("flag table swap hook", area="flags")
        self._closed = self._forked = self._released = True
        self._plain = self._rules = self._effective = self._evals = _FORKED_TABLE

    def __enter__(self) -> FeatureFlags:
        """``self``; ``Closed`` if closed (a closed service is not reused)."""
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FeatureFlags {len(self._names)} flags, store={type(self._store).__name__}>"

    # --------------------------------------------------------------- internals

    def _transact(self, body: Callable[[_Writer], T], *, kill_switch: bool = False) -> T:
        """Run ``body`` in one store transaction; apply its writes and notify (internal).

        Used by writes and by ``Migration``. ``body`` may run more than once
        (stores may retry), so it must act only through the writer it is given.
        ``kill_switch``: ``body`` only turns switches off, so the store may keep
        it through an outage (``FlagStore.kill_switch``).
        """
        tables = self._plain
        try:
            result = self._commit(body, kill_switch)
        finally:
            # Before the listeners (a stuck one must not hold the swap hooks).
            # Race: a Ctrl-C landing between the swap and the hooks left them
            # following the old table until the next write: a finally, and the
            # table's identity rather than "this call wrote" (another writer's
            # swap meanwhile calls them once more: they re-read, harmless).
            if self._plain is not tables:
                self._swapped()
        self._deliver()  # after the lock: a listener never stalls another writer
        return result

    def _commit(self, body: Callable[[_Writer], T], kill_switch: bool) -> T:
        """``_transact``'s commit under the lock: run ``body``, apply and queue its changes."""
        with self._lock:
            self._check_open()
            config = self._config
            attempts: list[dict[str, tuple[FlagState | None, FlagChange]]] = []

            def run(txn: StoreTransaction) -> T:
                writer = _Writer(self, txn, config)
                result = body(writer)
                attempts.append(writer.writes)
                return result

            commit = self._store.kill_switch if kill_switch else self._store.transaction
            # Other subscribers of the store (FeatureFlags sharing it) hear this
            # commit from the store; this object applies it below, so the store
            # skips it here (else our listeners heard it twice).
            with writing_as(self._remote):
                result = commit(run)
            writes = self._committed_writes(attempts)
            if writes:
                runtime = dict(self._runtime)
                for name, (stored, _) in writes.items():
                    if stored is None:
                        runtime.pop(name, None)
                    else:
                        runtime[name] = stored
                self._runtime = runtime
                self._rebuild()
                for _, change in writes.values():
                    log_change(change)
                    self._notify(change)
        return result

    def _committed_writes(
        self, attempts: list[dict[str, tuple[FlagState | None, FlagChange]]]
    ) -> dict[str, tuple[FlagState | None, FlagChange]]:
        """What a commit wrote: its last run's writes, and an earlier run's the store holds.

        Race: a store that ran the body again after a commit of an earlier run
        landed (``RedisFlagStore`` reads a lost reply back instead, but a store
        is any ``FlagStore``) leaves the new run finding those writes already
        there and writing nothing for them, while the store's listener skips them
        as this store's own: served from the last run's writes alone, this
        process would answer the state from before the commit (a flag killed
        everywhere else still on here) for good. A safeguard, free with one run.
        """
        writes = dict(attempts[-1]) if attempts else {}
        earlier: dict[str, tuple[FlagState | None, FlagChange]] = {}
        for attempt in attempts[:-1]:
            earlier.update((n, w) for n, w in attempt.items() if n not in writes)
        if not earlier:
            return writes  # the common case: one run
        try:
            stored = self._store.load_states()
        except (BackendUnavailable, FlagError, Closed):
            # Cannot tell now: the next reload (a resync) brings it; closed
            # meanwhile: nothing more to serve.
            return writes
        for name, (state, change) in earlier.items():
            if stored.get(name) == state:
                writes[name] = (state, change)
        return writes

    def _update(
        self,
        name: str,
        mutate: Callable[[FlagState], FlagState | None],
        by: str | None,
        reason: str | None,
    ) -> None:
        name = self._check_name(name)
        self._transact(lambda w: w.update(name, mutate, by, reason))

    def _reload(self) -> None:
        states = self._store.load_states()
        # States of flags this program does not declare (another version's) are ignored.
        self._runtime = {n: s for n, s in states.items() if n in self._declared}
        self._rebuild()

    def _rebuild(self) -> None:
        if self._closed:
            # Race: a write of the thread that forked, finishing in the child
            # (it held the lock through the fork: _inherited_by_fork), would
            # put live tables back in place of the fork's, and reads answered
            # again from a copy nothing updates. (A close() takes the lock, so
            # it never races a write in this process.)
            return
        effective: dict[str, FlagState] = {}
        plain: dict[str, bool] = {}
        rules: dict[str, _Rule] = {}
        evals: dict[str, _Compiled] = {}
        compiled = self._compiled
        memo: dict[str, tuple[FlagState, _Compiled, bool, _Rule]] = {}
        for name in self._names:
            state = _first(self._runtime.get(name), self._config.get(name), self._defaults[name])
            effective[name] = state
            previous = compiled.get(name)
            if previous is not None and (previous[0] is state or previous[0] == state):
                entry = previous  # compiled objects are immutable: share them
            else:
                flag = self._declared[name]
                if flag.variants is None:
                    answer, rule = _compile(name, state, self._hash_cache[name])
                    evaluation = _compile_boolean(name, state, self._hash_cache[name])
                else:
                    answer, rule = False, False  # unused: typed flags are not in plain/rules
                    evaluation = _compile_typed(flag, state, self._split_cache[name])
                entry = (state, evaluation, answer, rule)
            memo[name] = entry
            evals[name] = entry[1]
            if self._declared[name].variants is None:
                # Typed flags stay out of the boolean tables: enabled()'s miss path
                # tells them apart, so the hit path is unchanged.
                plain[name], rules[name] = entry[2], entry[3]
        self._compiled = memo
        # Each table is complete before it is published: readers see old or new.
        self._effective = effective
        self._evals = evals
        self._rules = rules
        self._plain = plain

    def _on_remote(self, changes: list[FlagChange]) -> None:
        """Store callback: another process or subscriber committed; reload, then tell our listeners.

        ``[]`` ("reload": after an outage, a resync, a superseded kill switch)
        carries no records, so listeners hear each effective change the reload
        made, as a ``FlagChange`` with ``by=None`` and reason ``"reload"``,
        from what they were last told (see ``_reload_news``).
        """
        with self._lock:
            if self._closed:
                return
            before = self._effective
            self._reload()
            if not changes:
                self._reload_news(before)
            told: dict[str, FlagState] = {}
            for change in changes:
                if change.flag in self._declared:
                    self._notify(change)
                    told[change.flag] = change.new
            # Race: Redis lost between the store's read of these records and
            # this reload (which then answered its node copy, older than them:
            # the store refreshes the copy after delivering), or a later commit
            # already in the reload (or a clear, whose ``new`` is the writer's
            # config, not ours). The table is not what the records said:
            # remember their news, so the next "reload" tells only what differs.
            for name, news in told.items():
                if news != self._effective[name]:
                    self._told[name] = news
        self._swapped()  # here, on the store's thread: hooks never wait (see there)
        if self._delivery.pending:
            # Never here: the store's thread applies the next remote change
            # (a kill switch) and replays pending kill switches; a listener
            # run on it, slow or waiting for a writer, would hold all of that.
            self._delivery.hand_off()

    def _reload_news(self, before: dict[str, FlagState]) -> None:
        """Tell each flag whose reloaded state is not what its listeners last heard.

        That is the table's state before the reload, unless a record told since
        is not what the table served (``_told``; see ``_on_remote``): a record
        whose reload answered the node copy (Redis lost meanwhile) is not told
        again when a reload catches up to it, and is told taken back (``old``
        the record's ``new``) when the reload shows it lost.
        """
        now = time.time()
        after = self._effective
        for name in self._names:
            heard = self._told.pop(name, before[name])
            if heard != after[name]:
                self._notify(FlagChange(name, heard, after[name], None, "reload", now))

    def _notify(self, change: FlagChange) -> None:
        """Queue ``change`` for the listeners and ``flag.changed`` (lock held:
        commit order); ``_deliver`` or ``hand_off`` delivers it once released.

        Race: a listener subscribed between this and the delivery may miss
        ``change`` (it reads the state anyway); one unsubscribed meanwhile
        does not get it (the listeners are read at delivery).
        """
        self._told.pop(change.flag, None)  # later news (``_on_remote`` may keep it)
        if self._listeners.current or telemetry.has_listeners("flag.changed"):
            self._delivery.pending.append((change, None))

    def _watch_tables(self, hook: Callable[[FeatureFlags], object]) -> Callable[[], None]:
        """Call ``hook(self)`` after every swap of the answer tables (internal).

        For what must follow the flags whatever the listeners do (a stuck one
        holds every later delivery): ``MigratingRegistry``'s cached flag. The
        hook runs in the thread that swapped (the writer, before its write
        returns and before any listener; the store's thread for another
        process's change), outside the lock (see ``_swapped``). It must be
        quick, do no I/O, write no flag and tolerate ``Closed``; one that
        raises is reported as a listener is. Returns an idempotent remove.
        ``close()`` (and a fork: ``_inherited_by_fork``) drops every hook.

        Raises:
            Closed: this object is closed.
            TypeError: ``hook`` is not callable.
        """
        self._check_open()
        return self._swap_hooks.subscribe(hook)

    def _swapped(self) -> None:
        """Call the swap hooks (``_watch_tables``) in this thread, after the lock.

        Outside the lock, so a hook taking its owner's lock never holds a
        writer, nor the store thread applying a kill switch. Races: a hook may
        run after a later swap than its own (it reads the tables when it runs:
        the newest), and hooks of two swaps run in either order; the last
        swap's hooks run after it, so a hook that re-reads under its own lock
        ends on the newest state. A ``close()`` racing this (which drops the
        hooks) may leave one call made to a tuple read before it: the hook
        then meets ``Closed``. (Under the lock only in a write nested in one
        of this thread's: its outer write calls them again.)
        """
        self._swap_hooks.dispatch(self)

    def _deliver(self) -> None:
        """Deliver the queued changes in this thread, unless it still holds the
        lock (a write nested in one of this thread: the outer one delivers once
        it releases it) or another thread is delivering (it delivers them)."""
        if self._delivery.pending and self._lock._owner != threading.get_ident():
            self._delivery.deliver()

    @property
    def _delivered_to(self) -> tuple[Callable[[FlagChange], object], ...]:
        """Who hears a change, in this order (read for each change delivered):
        the subscribed listeners, then telemetry's ``flag.changed``."""
        listeners = self._listeners.current
        if telemetry.has_listeners("flag.changed"):
            return (*listeners, _emit_changed)
        return listeners

    def _typed_flag(self, name: str, what: str, instead: str) -> Flag:
        name = self._check_name(name)
        flag = self._declared[name]
        if flag.variants is None:
            raise InvalidFlagValue(
                f"{what}() is for typed flags; {name!r} is boolean: use {instead}"
            )
        return flag

    def _boolean_only(self, name: str, what: str, instead: str) -> None:
        name = self._check_name(name)
        flag = self._declared[name]
        if flag.variants is not None:
            raise InvalidFlagValue(
                f"{what}() is for boolean flags; {name!r} is {a_kind(flag.kind)} flag:"
                f" use {instead}()"
            )

    def _miss(self, name: object) -> FlagError | Closed:
        """The error of a boolean-table miss: a typed flag is the wrong kind, else unknown."""
        if type(name) is str:
            flag = self._declared.get(name)
            if flag is not None and flag.variants is not None:
                return InvalidFlagValue(
                    f"{name!r} is {a_kind(flag.kind)} flag; read it with value() or variant()"
                )
        return self._unknown(name)

    def _check_name(self, name: str) -> str:
        """``name`` as the exact ``str`` it equals (a ``StrEnum`` member names its value,
        as it does for the reads); UnknownFlag for anything else ([] etc. included)."""
        self._check_open()
        if type(name) is not str and isinstance(name, str):
            name = str.__str__(name)  # the plain string: never the subclass's __eq__/__hash__
        if type(name) is not str or name not in self._declared:
            raise self._unknown(name)
        return name

    def _check_open(self) -> None:
        if self._closed:
            raise _forked_closed() if self._forked else Closed("this FeatureFlags is closed")

    def _unknown(self, name: object) -> UnknownFlag | Closed:
        if self._closed:  # an unhashable name misses even the closed tables: still Closed
            return _forked_closed() if self._forked else Closed("this FeatureFlags is closed")
        # Bounded: a huge or deeply nested name gives a short message, no suggestion.
        text = name if type(name) is str and len(name) <= 200 else short_repr(name)
        return UnknownFlag(text, suggestion=nearest(text, self._names) if text is name else None)


class _Snapshot:
    """One committed state of every flag (``FeatureFlags._snapshot``).

    ``evaluate`` and ``state`` answer, and fail, as ``FeatureFlags``' do, all
    from the tables of one rebuild. Use it at once: it never follows later writes.
    """

    __slots__ = ("_entries", "_flags")

    def __init__(
        self, flags: FeatureFlags, entries: Mapping[str, tuple[FlagState, _Compiled, bool, _Rule]]
    ) -> None:
        self._flags = flags
        self._entries = entries

    def evaluate(self, name: str, actor: Actor | None = None) -> Evaluation:
        """``FeatureFlags.evaluate(name, actor)`` in this snapshot."""
        try:
            compiled = self._entries[name][1]
        except (KeyError, TypeError):  # TypeError: an unhashable name, not a flag
            raise self._flags._unknown(name) from None
        if actor is None:
            return compiled.bare
        if actor.__class__ is not str:
            actor = _actor(actor)  # checked even when the actor cannot matter
        if not actor:
            return compiled.bare  # "" is no actor (see FeatureFlags.evaluate)
        return compiled.evaluate(actor)  # `fixed` first, as FeatureFlags.evaluate

    def state(self, name: str) -> FlagState:
        """``FeatureFlags.state(name)`` in this snapshot."""
        try:
            return self._entries[name][0]
        except (KeyError, TypeError):
            raise self._flags._unknown(name) from None


_FROM_STORE: ContextVar[bool] = ContextVar("foundation_flags_from_store", default=False)
"""Set while ``FeatureFlags.from_store`` constructs: a tool records no catalogue."""


def _record_catalogue(store: FlagStore, declared: Iterable[Flag]) -> None:
    """Record the declarations in ``store``; a backend that cannot take the write
    (unreachable, or a file on a full disk or read-only) only logs a warning: an
    application must start meanwhile, and it records again at its next start."""
    try:
        store.record_catalogue(
            [FlagInfo(f.name, f.default, f.description, f.variants) for f in declared]
        )
    except BackendUnavailable as exc:  # FlagStoreUnavailable included: first
        _log.warning("flag catalogue not recorded in %r: %s", store, exc)
    except FlagError as exc:
        if type(exc) is not FlagError:  # InvalidFlagValue, say: the caller's to fix
            raise
        _log.warning("flag catalogue not recorded in %r: %s", store, exc)


def _emit_changed(change: FlagChange) -> None:
    """Telemetry's ``flag.changed`` for ``change``, delivered as a listener
    (same thread and order; ``telemetry.emit`` reports its own errors)."""
    telemetry.emit("flag.changed", {"flag": change.flag, "change": change})


def _pending_kill_switches(store: FlagStore) -> dict[str, FlagState]:
    """Flag -> the state its pending kill switch stores if the flag has no runtime
    state (else it is switched off), for this node's kill switches kept through an
    outage (``RedisFlagStore.pending()``; other stores commit every write)."""
    pending = getattr(store, "pending", None)
    if not callable(pending):
        return {}
    flags: dict[str, FlagState] = {}
    for op in pending():
        for name, state in getattr(op, "stored", {}).items():
            flags.setdefault(name, state)  # the oldest: what the overlay applies first
    return flags


def _first(*states: FlagState | None) -> FlagState:
    """The first state that is not None (the layers: runtime, config, default)."""
    for state in states:
        if state is not None:
            return state
    raise AssertionError("the declared default is never None")
