"""Compiling a flag's effective state into the rules its reads follow.

Each rule is built once per state and never changed, so readers use it
without a lock: ``_compile`` gives ``enabled``'s answer and rule, ``_Compiled``
(``_compile_boolean``, ``_compile_typed``) every ``Evaluation``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from foundation.flags._declared import Flag
from foundation.flags._hashing import HASH_SPACE, split_exponent, threshold
from foundation.flags._hashing import sha256 as _sha256
from foundation.flags._store import FlagState
from foundation.flags._typed import Evaluation

__all__ = ["HASH_CACHE_SIZE", "MAX_CACHED_ACTOR"]

HASH_CACHE_SIZE = 16_384
"""Rollout hashes remembered per flag (actor -> h), and split hashes per typed flag
and variant (actor -> -ln(u)). A hash never changes, so a cache is never stale;
when one is full it is emptied and refills (at most about 1.5 MB per flag with a
percentage, or per variant with a share). A hit saves the SHA-256 (~1 us -> ~0.1 us)."""

MAX_CACHED_ACTOR = 256
"""Longest actor (in characters) whose hash the caches above keep. A longer one is
hashed on every read instead: each cache entry keeps its actor string alive, so
caching actors of any length (an OFREP ``targetingKey`` of 200 kB) would let
``HASH_CACHE_SIZE`` distinct ones hold gigabytes per flag. Only the miss path
tests the length: a cached actor is found before it."""

# A rule for evaluating with an actor: a constant answer when the actor cannot
# matter, else (deny, allow, hash limit, hash prefix "flag\0", the flag's hash cache).
_Rule = bool | tuple[frozenset[str], frozenset[str], int, str, dict[str, int]]


def _compile(name: str, state: FlagState, cache: dict[str, int]) -> tuple[bool, _Rule]:
    """(answer without an actor, rule for an actor) for one effective state."""
    if not state.switch:
        return False, False
    p = state.percentage
    plain = p is None or p >= 100.0
    untargeted = not state.deny and not state.allow
    if untargeted and plain:
        return plain, True
    if untargeted and p == 0.0:
        return plain, False
    limit = HASH_SPACE if p is None else threshold(p)
    # f"{name}\0" is the hash prefix, so the hot path only appends the actor.
    return plain, (state.deny, state.allow, limit, f"{name}\0", cache)


_STATIC, _TARGETED, _SPLIT, _DISABLED, _DEFAULT = (
    "STATIC",
    "TARGETING_MATCH",
    "SPLIT",
    "DISABLED",
    "DEFAULT",
)


class _Compiled:
    """One flag's evaluation compiled from one effective state; never changed once built.

    ``bare`` answers without an actor; ``fixed`` (when not None) answers every
    actor. Otherwise, for an actor: ``deny`` -> ``deny_eval``; ``targets``
    (allow, or assignments) -> its evaluation; then a boolean percentage
    (``limit``: hash below it is on) or a typed split; else ``rest``.
    Every ``Evaluation`` is built here, so a read allocates nothing.
    """

    __slots__ = (
        "bare",
        "cache",
        "deny",
        "deny_eval",
        "fixed",
        "limit",
        "name",
        "off_split",
        "on_split",
        "rest",
        "split",
        "targets",
        "typed",
    )

    def __init__(self, name: str, typed: bool, bare: Evaluation) -> None:
        self.name = name
        self.typed = typed
        self.bare = bare
        self.fixed: Evaluation | None = bare
        self.rest = bare
        self.deny: frozenset[str] = frozenset()
        self.deny_eval = bare
        self.targets: dict[str, Evaluation] = {}
        self.limit: int | None = None
        self.cache: dict[str, int] = {}
        self.on_split = self.off_split = bare
        self.split: tuple[tuple[Evaluation, float, dict[str, float]], ...] = ()

    def evaluate(self, actor: str) -> Evaluation:
        fixed = self.fixed
        if fixed is not None:
            return fixed
        if actor in self.deny:
            return self.deny_eval
        target = self.targets.get(actor)
        if target is not None:
            return target
        if self.split:
            # Weighted rendezvous (see _hashing): the lowest -ln(u)/share wins; a tie
            # keeps the variant declared first (strict <).
            best = self.rest
            best_score = math.inf
            for evaluation, share, exponents in self.split:
                e = exponents.get(actor)
                if e is None:
                    e = split_exponent(self.name, evaluation.variant, actor)
                    _remember(exponents, actor, e)
                score = e / share
                if score < best_score:
                    best, best_score = evaluation, score
            return best
        limit = self.limit
        if limit is None:
            return self.rest
        cache = self.cache
        h = cache.get(actor)
        if h is None:
            h = int.from_bytes(
                _sha256(f"{self.name}\0{actor}".encode("utf-8", "surrogatepass")).digest()[:8],
                "big",
            )
            _remember(cache, actor, h)
        return self.on_split if h < limit else self.off_split


def _remember(cache: dict[str, Any], actor: str, h: float) -> None:
    """Keep ``actor``'s hash ``h`` in ``cache`` (emptied when full), unless the actor
    is longer than ``MAX_CACHED_ACTOR``. Called on a miss only: a hit never pays
    for the length test."""
    if len(actor) <= MAX_CACHED_ACTOR:
        if len(cache) >= HASH_CACHE_SIZE:
            cache.clear()  # racing readers at worst recompute: never wrong
        cache[actor] = h


def _compile_boolean(name: str, state: FlagState, cache: dict[str, int]) -> _Compiled:
    """The evaluation of a boolean flag; agrees with ``_compile`` (``enabled``) on values."""

    def ev(value: bool, reason: str) -> Evaluation:
        return Evaluation(name, value, "on" if value else "off", reason, "boolean")

    if not state.switch:
        return _Compiled(name, False, ev(False, _DISABLED))
    p = state.percentage
    if p is None:
        c = _Compiled(name, False, ev(True, _STATIC))
    else:
        c = _Compiled(name, False, ev(True, _SPLIT) if p >= 100.0 else ev(False, _DEFAULT))
        _set_rollout(c, p, cache, ev(True, _SPLIT), ev(False, _SPLIT))
    c.deny = state.deny
    c.deny_eval = ev(False, _TARGETED)
    on = ev(True, _TARGETED)
    c.targets = {a: on for a in state.allow if a not in state.deny}
    # The percentage, allow and deny apply; a record's typed fields (another version's) do not.
    c.fixed = c.rest if not c.deny and not c.targets and c.limit is None else None
    _untargeted_is_default(c)
    return c


def _untargeted_is_default(c: _Compiled) -> None:
    """A flag with rules (deny, allow, assignments) that pick nobody else answers
    others with its default, reason ``DEFAULT`` (OpenFeature: evaluation "yielded
    no result"), not ``STATIC``, kept for a flag with no rules at all."""
    rest = c.rest
    if (c.deny or c.targets) and rest.reason == _STATIC:
        default = Evaluation(rest.flag, rest.value, rest.variant, _DEFAULT, rest.kind)
        if c.bare is rest:
            c.bare = default
        c.rest = default


def _set_rollout(
    c: _Compiled, p: float, cache: dict[str, int], on: Evaluation, off: Evaluation
) -> None:
    """Give a boolean flag's evaluation its percentage ``p``: ``on`` below the threshold."""
    c.on_split, c.off_split = on, off
    if p >= 100.0:
        c.rest = c.on_split
    elif p == 0.0:
        c.rest = c.off_split
    else:
        c.limit = threshold(p)
        c.cache = cache


def _compile_typed(flag: Flag, state: FlagState, caches: dict[str, dict[str, float]]) -> _Compiled:
    """The evaluation of a typed flag. Assignments and shares naming variants this
    declaration does not have (another version's) are ignored, as are a percentage
    and an allow set (written when the flag was boolean)."""
    name, kind, variants = flag.name, flag.kind, flag.variants
    assert variants is not None
    assert isinstance(flag.default, str)
    default = flag.default

    def ev(variant: str, reason: str) -> Evaluation:
        return Evaluation(name, variants[variant], variant, reason, kind)

    if not state.switch:
        return _Compiled(name, True, ev(default, _DISABLED))
    c = _compile_split(name, default, variants, state.split or {}, caches=caches, ev=ev)
    c.deny = state.deny
    c.deny_eval = ev(default, _TARGETED)
    c.targets = _assigned(state, variants, ev)
    c.fixed = c.rest if not c.deny and not c.targets and not c.split else None
    _untargeted_is_default(c)
    return c


def _compile_split(
    name: str,
    default: str,
    variants: Mapping[str, Any],
    shares: Mapping[str, float],
    *,
    caches: dict[str, dict[str, float]],
    ev: Callable[[str, str], Evaluation],
) -> _Compiled:
    """A switched-on typed flag's evaluation from its split (declared variants only)."""
    split = [(v, shares[v]) for v in variants if shares.get(v, 0.0) > 0.0]
    if len(split) == 1:  # everyone gets it, with or without an actor
        c = _Compiled(name, True, ev(split[0][0], _SPLIT))
        split = []
    elif split:
        c = _Compiled(name, True, ev(default, _DEFAULT))
        c.rest = ev(default, _STATIC)  # never used: a split always picks a variant
    else:
        c = _Compiled(name, True, ev(default, _STATIC))
    c.split = tuple((ev(v, _SPLIT), w, caches.setdefault(v, {})) for v, w in split)
    return c


def _assigned(
    state: FlagState, variants: Mapping[str, Any], ev: Callable[[str, str], Evaluation]
) -> dict[str, Evaluation]:
    """Each assigned actor's evaluation: not denied, and assigned a declared variant."""
    targeted = {v: ev(v, _TARGETED) for v in set(state.assign.values()) if v in variants}
    return {
        a: targeted[v] for a, v in state.assign.items() if v in targeted and a not in state.deny
    }
