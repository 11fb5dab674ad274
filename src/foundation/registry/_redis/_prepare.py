"""A registration on its way: checked and encoded, not yet sent (``Prepared``).

``prepare`` does it for ``register``, ``prepare_batch`` for every item of a
``register_many`` call; no lock is held and Redis is not asked.
"""

from __future__ import annotations

import itertools
import json
import json.encoder
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from foundation.errors import InvalidKey, InvalidMetadata, NotAlive, RegistryError, UnsupportedAgent
from foundation.liveness import describe_agent, is_alive
from foundation.liveness._types import AGENT_TYPES
from foundation.registry._redis._codec import metadata_json, normal_key
from foundation.registry._redis._shared import Own, Shared
from foundation.registry._validation import (
    MAX_METADATA_BYTES,
    check_metadata_size,
    freeze_metadata,
)

__all__ = ["Prepared", "prepare", "prepare_batch"]


_seq = itertools.count(1)
_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
_str_json: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _agent_json(agent: Any) -> str:
    """``{"kind", "pid", "name"}`` of ``describe_agent`` as JSON, without its costly
    parts (host name, process start time) for the in-process kinds."""
    if isinstance(agent, threading.Thread):
        return f'{{"kind":"thread","pid":{os.getpid()},"name":{_str_json(agent.name)}}}'
    if isinstance(agent, AGENT_TYPES.aio_task):
        return f'{{"kind":"task","pid":{os.getpid()},"name":{_str_json(agent.get_name())}}}'
    if isinstance(agent, (AGENT_TYPES.aio_future, AGENT_TYPES.cf_future)):
        return f'{{"kind":"future","pid":{os.getpid()},"name":null}}'
    d = describe_agent(agent)
    return _dumps({"kind": d["kind"], "pid": d["pid"], "name": d["name"]})


class Prepared:
    """One registration on its way (checked, encoded, not yet sent)."""

    __slots__ = (
        "agent",
        "argv",
        "died",
        "frozen",
        "key",
        "own",
        "own_dead",
        "prev",
        "registered_at",
    )

    def __init__(
        self, key: Hashable, agent: Any, frozen: Mapping[str, Any], at: float, own: Own
    ) -> None:
        self.key = key
        self.agent = agent
        self.frozen = frozen
        self.registered_at = at
        self.own = own
        self.prev: Own | None = None  # this node's registration it replaces
        self.argv: list[Any] = []  # REGISTER's ARGV (single register only)
        self.own_dead = False  # this node's previous agent under the key is dead
        self.died = False  # the agent died while its script ran


def prepare(sh: Shared, key: Hashable, agent: Any, metadata: Mapping[str, Any] | None) -> Prepared:
    """Check and encode one registration (no lock, no Redis); raises what
    ``register`` raises for bad input."""
    key, ek, frozen, meta, prefix = _encoded(sh, key, agent, metadata, None)
    registered_at = time.time()
    head = f'{prefix}{registered_at!r},"s":{next(_seq)}}}'
    own = Own(agent, ek, head, meta, sh.ix_for(frozen) if sh.indexed else "")
    return Prepared(key, agent, frozen, registered_at, own)


def prepare_batch(
    sh: Shared,
    batch: list[tuple[Hashable, Any, Mapping[str, Any] | None]],
    outcomes: list[RegistryError | None],
    replace: bool,
) -> list[list[tuple[int, Prepared]]]:
    """``_prepare`` of every item of a ``register_many`` call (no lock, no
    Redis): an invalid item gets its outcome now; the valid ones are split
    into rounds of distinct keys, each in input order. A key met again goes
    to a round after the one of its previous item (it meets it as a second
    ``register`` call would). With ``replace``, that item is also heard
    (``replaced``, ``registered``), so no later item goes to an earlier round
    than it: a round's events are heard once its round trip is back, so the
    events follow the input order. Without ``replace``, such an item is
    refused by its key's earlier item (no event), so the other items stay
    in their rounds: the n-th item of a key goes to round n-1, and a round
    whose every key this node holds alive is refused locally
    (``_claims.begin_all``), without a round trip. An item refused here
    (``NotAlive`` included) takes no round: its key's next item takes its place.

    The items of one round share one ``registered_at`` (one call registers
    them); a later round takes a time of its own, as a second ``register``
    of the key would.
    """
    ix_for = sh.ix_for if sh.indexed else None
    encoded = _encoded
    new_own, new_prepared, seq = Own, Prepared, _seq
    prefixes: dict[int, str] = {}
    rounds: list[list[tuple[int, Prepared]]] = [[]]
    times = [_now()]
    last: dict[Hashable, int] = {}  # key: the round of its latest item
    floor = 0  # with replace: the round of the latest item
    for i, (given, agent, metadata) in enumerate(batch):
        try:
            key, ek, frozen, meta, prefix = encoded(sh, given, agent, metadata, prefixes)
        except (InvalidKey, InvalidMetadata, UnsupportedAgent, NotAlive) as exc:
            outcomes[i] = exc
            continue
        r = last.get(key, -1) + 1  # key: normalised (equal keys, one slot)
        if r < floor:
            r = floor
        elif r == len(rounds):
            rounds.append([])
            times.append(_now())
        if replace:
            floor = r
        # Race: without replace, a repeat whose earlier item did not end
        # registered although the checks above passed (its agent died as the
        # script ran, or the key's holder, on any node, was freed between the
        # rounds) registers in its later round: heard after the items of the
        # earlier rounds given after it, not in input order (docs/redis.md).
        # An agent dead before the call is NotAlive above: no round, no race.
        last[key] = r
        at, at_text = times[r]
        # "s" makes every registration's head unique (the compare-and-delete token).
        head = f"{prefix}{at_text}{next(seq)}}}"
        own = new_own(agent, ek, head, meta, "" if ix_for is None else ix_for(frozen))
        rounds[r].append((i, new_prepared(key, agent, frozen, at, own)))
    return rounds


def _encoded(
    sh: Shared,
    key: Hashable,
    agent: Any,
    metadata: Mapping[str, Any] | None,
    prefixes: dict[int, str] | None,
) -> tuple[Hashable, str, Mapping[str, Any], bytes, str]:
    """``(key, its JSON, frozen metadata, its JSON bytes, the head's prefix)``
    of one registration; raises what ``register`` raises for bad input.

    The head: who owns it, a description of the agent, when (the caller
    appends the time and a sequence number). ``prefixes``: the head prefixes
    of one ``register_many`` call by ``id(agent)`` (the batch holds every
    agent alive for the call, so an id names one agent).
    """
    key, ek = normal_key(key)  # the one key rule (InvalidKey)
    frozen = freeze_metadata(metadata)
    meta = sh.utf8(metadata_json(frozen))
    if len(meta) > MAX_METADATA_BYTES:
        check_metadata_size(meta.decode(), MAX_METADATA_BYTES)  # raises InvalidMetadata
    prefix = None if prefixes is None else prefixes.get(id(agent))
    if prefix is None:
        if not is_alive(agent):  # UnsupportedAgent for a kind that cannot be monitored
            raise NotAlive(key, agent)
        prefix = f'{{"n":{sh.node_json},"a":{_agent_json(agent)},"t":'
        if prefixes is not None:
            prefixes[id(agent)] = prefix
    # else: found alive for an earlier item of this batch. Race: if it died
    # since, its monitor fires at once (_claims.begin_all) and the item is NotAlive.
    return key, ek, frozen, meta, prefix


def _now() -> tuple[float, str]:
    """The time now, and its text in a head followed by the ``"s"`` field's name."""
    at = time.time()
    return at, f'{at!r},"s":'
