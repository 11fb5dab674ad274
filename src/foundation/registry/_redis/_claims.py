"""Claiming keys locally for a registration, and the death of a local agent.

A writer makes its registration known here (pending) and monitors its agent
BEFORE Redis has it (``begin``, ``begin_all``); the monitor's callback
(``on_down``) drops a dead agent's entry from the mirror at once and hands its
delete in Redis to the lease thread.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from foundation.errors import AlreadyRegistered, RegistryError
from foundation.liveness import Down, Monitor, is_alive
from foundation.registry._redis import _scripts
from foundation.registry._redis._prepare import Prepared
from foundation.registry._redis._shared import Own, Shared
from foundation.registry._types import RegistryEvent

if TYPE_CHECKING:
    from foundation.registry._redis._lease import Lease

__all__ = ["begin", "begin_all", "end_unregistering", "monitor_own", "on_down", "unregistering"]


def begin(sh: Shared, lease: Lease, p: Prepared, replace: bool) -> None:
    """Make ``p`` known locally (pending) and monitor it (holding wlock), and
    build REGISTER's ``p.argv``; raises ``AlreadyRegistered`` if this node
    holds the key and not ``replace``. (``begin_all`` does this for a batch.)"""
    key, own = p.key, p.own
    lease.flush_pending_down(key)
    prev = sh.own.get(key)
    prev_alive = prev is not None and is_alive(prev.agent)
    if prev_alive and not replace:
        raise AlreadyRegistered(key, sh.entries.get(key))
    p.prev = prev
    # Race: the registration is known locally (pending) BEFORE Redis has
    # it, so the tail, seeing our own record first, finds the live agent.
    with sh.mlock:
        # Race: prev's death reported since the check (on_down took it, told "down").
        gone = prev is not None and sh.own.get(key) is not prev
        sh.own[key] = own
    try:
        own.monitor = monitor_own(sh, key, p.agent, own)
    except BaseException:
        sh.forget_own(key, own, prev)  # nothing of a failed register may stay
        raise
    p.own_dead = own_dead = gone or _own_dead(prev, prev_alive)
    p.argv = _scripts.register_argv(
        maxlen=sh.maxlen,
        node=sh.node,
        ek=own.ek,
        head=own.head,
        meta=own.meta,
        ix=own.ix,
        mode="r" if replace else "n",
        own_dead=own_dead,
        writer=sh.node,
        grace_ms=sh.grace_ms,
    )


def begin_all(
    sh: Shared,
    lease: Lease,
    items: list[tuple[int, Prepared]],
    replace: bool,
    outcomes: list[RegistryError | None],
) -> list[tuple[int, Prepared]]:
    """Claim every key of ``items`` locally (holding wlock); returns those to send.

    ``begin`` for a batch of distinct keys, in three passes: the checks (a
    key this node holds alive gets its ``AlreadyRegistered`` outcome now),
    every claim under ONE ``mlock``, then the monitors (outside ``mlock``:
    a monitor of an agent already dead reports at once, and its ``on_down``
    takes ``mlock``). On any other error every claim is undone and the error
    propagates.
    """
    mine = sh.own
    claimed = _claimable(sh, lease, items, replace, outcomes)
    # Race: as in begin, every key is known locally (pending) BEFORE Redis
    # has it, so the tail or a resync seeing our records finds the live agents.
    with sh.mlock:
        for _, p in claimed:
            if p.prev is not None and mine.get(p.key) is not p.prev:
                p.own_dead = True  # Race: as in begin
            mine[p.key] = p.own
    try:
        for _, p in claimed:
            p.own.monitor = monitor_own(sh, p.key, p.agent, p.own)
    except BaseException:
        for _, p in claimed:
            sh.forget_own(p.key, p.own, p.prev)  # nothing of a failed batch stays
        raise
    return claimed


def _claimable(
    sh: Shared,
    lease: Lease,
    items: list[tuple[int, Prepared]],
    replace: bool,
    outcomes: list[RegistryError | None],
) -> list[tuple[int, Prepared]]:
    """The items of ``begin_all`` this node may claim (their ``prev`` and
    ``own_dead`` set); a key it holds alive gets ``AlreadyRegistered`` unless
    ``replace``. A pending delete of a key is flushed first (if that fails,
    nothing is claimed yet)."""
    mine = sh.own
    pending = sh.pending_downs
    claimable: list[tuple[int, Prepared]] = []
    for i, p in items:
        key = p.key
        if key in pending:
            lease.flush_pending_down(key)
        prev = mine.get(key)
        prev_alive = prev is not None and is_alive(prev.agent)
        if prev_alive and not replace:
            outcomes[i] = AlreadyRegistered(key, sh.entries.get(key))
            continue
        p.prev = prev
        p.own_dead = _own_dead(prev, prev_alive)
        claimable.append((i, p))
    return claimable


def _own_dead(prev: Own | None, prev_alive: bool) -> bool:
    """REGISTER's ``own_dead``: the script drops a registration of this node
    under the key as ``"down"`` (else ``"replaced"``). A dead agent of ours is
    ``"down"``, with or without ``replace`` (as every backend: docs/contract.md);
    None of ours here (Redis holds one no local agent backs): ``"down"``."""
    return prev is None or not prev_alive


def monitor_own(sh: Shared, key: Hashable, agent: Any, own: Own) -> Monitor:
    """Watch ``agent``, registered as ``own`` under ``key``: its death goes to ``on_down``."""
    return sh.manager.monitor(agent, lambda down: on_down(sh, key, own, down))


def on_down(sh: Shared, key: Hashable, own: Own, down: Down) -> None:
    """A local agent died: drop it from the mirror NOW, delete it in Redis soon."""
    with sh.mlock:
        if sh.own.get(key) is not own:
            return  # unregistered or replaced meanwhile
        if own.unregistering:
            # Race: an unregister() of the key has its script on its way to
            # Redis (it holds wlock). That script decides how the registration
            # ended: "unregistered" if it removed it (the record every other
            # node reads), else the death. So leave all to that call (the
            # mirror entry, its one event, the delete): it reads ``died``
            # after the reply (or, if the script failed, runs this again).
            own.died = down
            return
        del sh.own[key]
        entry = sh.entries.get(key)
        if entry is not None and entry.agent is own.agent and entry.node == sh.node:
            m = sh.mirror
            # Keep its version: any later record for the key still applies.
            m.remove(key, m.versions.get(key, m.floor))
            if sh.listeners:
                sh.queue([RegistryEvent("unregistered", entry, reason="down", down=down)])
        sh.pending_downs[key] = (own.ek, own.head, down)
    sh.jobs.put(("down", key))
    # A courier runs the listeners: this may be a monitor thread (a slow
    # listener would delay every death it watches) or a writer holding wlock
    # (an agent found dead as its monitor started).
    sh.hand_off()


def unregistering(sh: Shared, key: Hashable) -> Own | None:
    """Mark this node's registration of ``key`` (if any) as being unregistered by
    the caller (holding wlock), before its script is sent; returns it.

    Race: from here on a death of its agent (``on_down``) leaves the outcome
    to the caller, so the reason its node reports is the one Redis recorded.
    A death reported before this is handled as usual (its delete is pending:
    the caller flushes it first, and Redis records "down").
    """
    with sh.mlock:
        own = sh.own.get(key)
        if own is not None:
            own.unregistering = True
        return own


def end_unregistering(sh: Shared, key: Hashable, own: Own | None) -> None:
    """Undo ``unregistering`` after the script failed (the outcome is unknown):
    a death reported meanwhile is handled now as ``on_down`` would have."""
    if own is None:
        return
    with sh.mlock:
        own.unregistering = False
        down, own.died = own.died, None
    if down is not None:
        on_down(sh, key, own, down)
