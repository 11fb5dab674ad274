"""The connection and recovery state of one ``RedisRegistry`` node: one state machine.

Every thread (API callers, the lease thread, the tail thread) reports what it
saw to :class:`Link`; only :meth:`Link._to` changes the state, under one lock,
and every change is logged under ``foundation.registry.redis`` (a flap, the
same failure right after each recovery, is said once at WARNING, its repeats
at DEBUG, its end at INFO once the node stays connected, or at WARNING if it
ends in an outage; a failure with another cause is never damped:
``foundation._flap``).

==============  ==============================================================
state           meaning (and who leaves it)
==============  ==============================================================
CONNECTED       Redis answers, the lease is held, the mirror follows the stream.
DEGRADED        Redis answers with error replies (READONLY, OOM, LOADING, BUSY,
                MASTERDOWN, ...): writes fail; the lease thread retries recovery
                with backoff.
DISCONNECTED    Redis cannot be reached (refused, reset, timed out, not Redis).
RECOVERING      Redis answers but the mirror must be rebuilt (a version gap or
                reset on the stream, or a write whose outcome is unknown).
LEASE_LOST      Our lease was reaped (we were frozen or cut off) or Redis lost it
                (restarted empty): every live local registration is re-asserted.
CLOSED          ``close()`` was called; terminal.
==============  ==============================================================

Recovery is one procedure, run by the lease thread (or inline by a write that
needs it), always in this order: heartbeat, re-assert every live local
registration (a no-op for those Redis still has), resynchronise the mirror
from a snapshot. Only a recovery that completes with no new fault reported
meanwhile (an ``epoch`` check) moves the state to CONNECTED.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from foundation import _flap, _redis_conn

__all__ = ["Link", "LinkState", "log"]

log = logging.getLogger("foundation.registry.redis")


class LinkState(enum.Enum):
    """The states of :class:`Link` (see the module docstring)."""

    CONNECTED = "connected"
    DEGRADED = "degraded"
    DISCONNECTED = "disconnected"
    RECOVERING = "recovering"
    LEASE_LOST = "lease_lost"
    CLOSED = "closed"


_NEEDS_RECOVERY = frozenset(
    {LinkState.DEGRADED, LinkState.DISCONNECTED, LinkState.RECOVERING, LinkState.LEASE_LOST}
)
_UNREACHABLE_KINDS = frozenset({"connection", "timeout", "protocol", "other"})
_DROPS = frozenset({LinkState.DEGRADED, LinkState.DISCONNECTED})


class Link:
    """The state machine of one node's connection to Redis (thread-safe)."""

    def __init__(
        self, node: str, *, namespace: str = "", wake: Callable[[], None] | None = None
    ) -> None:
        self._node = node
        self._namespace = namespace
        self._cond = threading.Condition(threading.Lock())
        self._state = LinkState.RECOVERING  # construction runs the first recovery
        self._epoch = 0  # bumped by every report that calls for a recovery
        self._wake = wake
        self.last_error: str | None = None
        # When public writes fail at once (a call timed out moments ago: fast_fail).
        self.no_answer = _redis_conn.NoAnswerWindow()
        self.recoveries = 0
        self.state_since = time.time()  # wall clock of the last state change (status())
        self._left_connected: float | None = None  # monotonic: when CONNECTED was left
        self._tls_warned: str | None = None  # the TLS failure logged at WARNING, this state
        # Flaps: a fault that hits some of the node's connections only (maxclients
        # reached, client eviction) fails its tail again right after each recovery
        # the lease thread makes on its own connection. One WARNING says so; the
        # changes of state that repeat it are logged at DEBUG (see _flap). The
        # damper is called under _cond only: up is CONNECTED, down all else.
        self._damper = _flap.FlapDamper()
        # A copy of _damper.flapping for ok()'s hot path (one attribute load), set
        # under _cond after each call that may change it. Race: ok() reading it as
        # it changes at worst takes the lock for nothing, or sees the end of the
        # flap at its next call (a heartbeat later).
        self._flapping = False

    @property
    def state(self) -> LinkState:
        return self._state

    def needs_recovery(self) -> bool:
        """A recovery is due (DEGRADED, DISCONNECTED, RECOVERING or LEASE_LOST)."""
        return self._state in _NEEDS_RECOVERY

    @property
    def reachable(self) -> bool:
        """Redis answered the last call normally (``status().connected``)."""
        return self._state in (LinkState.CONNECTED, LinkState.RECOVERING, LinkState.LEASE_LOST)

    @property
    def epoch(self) -> int:
        return self._epoch

    # ------------------------------------------------------------------ reports

    def ok(self) -> None:
        """A Redis call succeeded (it does not end a recovery by itself)."""
        self.no_answer.answered()
        if self._flapping:  # (one attribute load on the hot path)
            self._flap_over()

    def _flap_over(self) -> None:
        """End a flap once the node has stayed CONNECTED ``FLAP_WINDOW`` s, with an
        INFO line: its recoveries were logged at DEBUG, so without this line the
        operator's log would end at the flap's WARNING. Called by ``ok()``: the
        lease thread's heartbeats make one within a heartbeat of the window."""
        with self._cond:
            over = self._damper.over()
            self._flapping = self._damper.flapping
        if over is None:
            return
        log.info(
            "node %s (namespace %r): connected for %.0f s since the last of %d repeated "
            "failure(s) (%s): the flap is over; the mirror is current; reads and writes "
            "are normal",
            self._node,
            self._namespace,
            over.seconds,
            over.drops,
            over.cause,
            extra={"node": self._node, "namespace": self._namespace, "state": "connected"},
        )

    def failed(self, exc: BaseException, message: str) -> None:
        """A Redis call failed with ``exc`` (``message``: the translated error)."""
        kind = _redis_conn.error_kind(exc)
        new = LinkState.DISCONNECTED if kind in _UNREACHABLE_KINDS else LinkState.DEGRADED
        # Race: _to() wakes the lease thread, whose recovery may succeed (ok())
        # before the next line runs; the time is taken first, so a recovery that
        # quick still counts as later than this timeout and writes go on.
        failed_at = time.monotonic()
        self._to(new, message, error=message)
        if kind == "timeout":
            self.no_answer.timed_out(message, at=failed_at)

    def resync_needed(self, why: str) -> None:
        """The mirror may be behind Redis (a gap, a reset, an unknown write outcome)."""
        self._to(LinkState.RECOVERING, why)

    def lease_lost(self, why: str) -> None:
        """Our lease is gone: re-assert everything we hold."""
        self._to(LinkState.LEASE_LOST, why)

    def recovered(self, epoch: int, why: str) -> bool:
        """A recovery that started at ``epoch`` completed: CONNECTED unless a new
        fault was reported meanwhile (then another recovery follows). True if
        the state is now CONNECTED."""
        with self._cond:
            if self._state is LinkState.CLOSED:
                return False
            self.recoveries += 1
        # Race: a fault reported after a separate epoch check would be
        # overwritten by CONNECTED; ``_to`` checks the epoch in the same critical
        # section that changes the state.
        return self._to(LinkState.CONNECTED, why, expect_epoch=epoch)

    def close(self) -> None:
        self._to(LinkState.CLOSED, "closed")

    def fast_fail(self, window: float) -> str | None:
        """Why a public write should fail at once, or None (``NoAnswerWindow``: a
        call got no answer in time less than ``window`` seconds ago and none has
        succeeded since); the operator is told once per outage."""
        if not self.no_answer.is_open(window):
            return None
        if self.no_answer.first_report():
            log.warning(
                "node %s (namespace %r): Redis did not answer in time (%s); writes fail at "
                "once with BackendUnavailable until a call succeeds or %.1f s pass without "
                "a new timeout, instead of each waiting its own timeout",
                self._node,
                self._namespace,
                self.no_answer.error,
                window,
            )
        return self.no_answer.error or "no answer in time"

    # ------------------------------------------------------------------ waiting

    def wait_connected(self, timeout: float) -> bool:
        """Block until CONNECTED (True) or CLOSED/``timeout`` (False)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._state in (LinkState.CONNECTED, LinkState.CLOSED), timeout
            )
            return self._state is LinkState.CONNECTED

    # ------------------------------------------------------------------ the one transition

    def _to(
        self,
        new: LinkState,
        why: str,
        *,
        error: str | None = None,
        expect_epoch: int | None = None,
    ) -> bool:
        """Move to ``new`` (every state change goes through here); False when
        nothing changed (closed, already there, or ``expect_epoch`` is stale)."""
        with self._cond:
            old = self._state
            if old is LinkState.CLOSED:
                return False  # terminal
            if expect_epoch is not None and self._epoch != expect_epoch:
                return False  # a new fault since the recovery began: another follows
            if error is not None:
                self.last_error = error
            if new in _NEEDS_RECOVERY:
                self._epoch += 1
            new = _kept_recovery(old, new)
            tls = None if error is None else _redis_conn.tls_failure(error)
            if new is old:
                self._stay(old, why, tls)
                return new is LinkState.CONNECTED
            self._tls_warned = tls  # the change itself is logged at WARNING (or INFO)
            self._state = new
            self.state_since = time.time()
            outage = self._outage(old, new)
            flap = self._flap(old, new, why)
            self._cond.notify_all()
        if flap == "first":
            self._log_flap(new, why)
        self._log_change(old, new, why, outage, quiet=flap != "usual")
        if new in _NEEDS_RECOVERY and self._wake is not None:
            self._wake()
        return True

    def _stay(self, old: LinkState, why: str, tls: str | None) -> None:
        """Log a report that changes nothing (lock held)."""
        if self._flapping:
            self._flap_lingers(old, why)
        if tls is not None and tls != self._tls_warned:
            # An outage that turns into a TLS failure (a certificate the
            # clients do not trust) needs an operator: once at WARNING.
            self._tls_warned = tls
            log.warning("node %s stays %s: %s", self._node, old.value, why)
        else:
            log.debug("node %s stays %s: %s", self._node, old.value, why)

    def _log_flap(self, new: LinkState, why: str) -> None:
        """The one WARNING of a flap (its changes of state are then logged at DEBUG)."""
        log.warning(
            "node %s (namespace %r): Redis failed again, with the same error, right after "
            "the node recovered (%s): a fault that hits some of its connections only "
            "(maxclients reached, client eviction); the node goes on recovering by "
            "itself; its changes of state are logged at DEBUG until it stays connected "
            "%.0f s",
            self._node,
            self._namespace,
            why,
            _flap.FLAP_WINDOW,
            extra={"node": self._node, "namespace": self._namespace, "state": new.value},
        )

    def _flap_lingers(self, state: LinkState, why: str) -> None:
        """Say at WARNING that a flap ended in an outage (lock held): its last drop
        was logged at DEBUG ``FLAP_WINDOW`` s ago and the node never recovered since
        (the server went away meanwhile, say). Called at each report while down:
        each failed retry of the lease thread makes one."""
        gone = self._damper.lingers()
        self._flapping = self._damper.flapping
        if gone is None:
            return
        log.warning(
            "node %s (namespace %r): still %s %.0f s after the last of %d repeated "
            "failure(s) (%s): %s; %s",
            self._node,
            self._namespace,
            state.value,
            gone.seconds,
            gone.drops,
            gone.cause,
            why,
            _DOING[state],
            extra={"node": self._node, "namespace": self._namespace, "state": state.value},
        )

    def _flap(self, old: LinkState, new: LinkState, why: str) -> _flap.Verdict:
        """How to log the change ``old -> new`` (lock held): ``_flap.FlapDamper``
        decides, CONNECTED being up. A drop from CONNECTED (to DEGRADED or
        DISCONNECTED) with the last drop's cause, right after the recovery in
        between, is a flap: ``"first"`` (one WARNING), then ``"quiet"`` for its
        drops and every change but CLOSED that follows them.

        A drop of another kind ends the flap wherever it starts from (a
        recovery of the flap refused by a server that now wants a password,
        say): a different outage is logged as any other, never at DEBUG. (A
        server gone is ``unreachable`` as the cuts were: the damper says it
        at WARNING once the window has passed, ``lingers``.)"""
        error = why if new in _DROPS else None
        if old is LinkState.CONNECTED:
            verdict = self._damper.drop(error)
        elif new is LinkState.CONNECTED:
            verdict = "quiet" if self._damper.up() else "usual"
        else:
            quiet = self._damper.again(error) and new is not LinkState.CLOSED
            verdict = "quiet" if quiet else "usual"
        self._flapping = self._damper.flapping
        return verdict

    def _outage(self, old: LinkState, new: LinkState) -> float | None:
        """Seconds since CONNECTED was left, when ``new`` ends that (lock held)."""
        if old is LinkState.CONNECTED:
            self._left_connected = time.monotonic()
        elif new is LinkState.CONNECTED and self._left_connected is not None:
            return time.monotonic() - self._left_connected
        return None

    def _log_change(
        self, old: LinkState, new: LinkState, why: str, outage: float | None, *, quiet: bool
    ) -> None:
        """Log the change ``old -> new`` (INFO to CONNECTED or CLOSED, else WARNING;
        DEBUG when ``quiet``: a flap): where (node, namespace), why, what the
        registry does now, and after a recovery how long it lasted."""
        level = logging.INFO if new in (LinkState.CONNECTED, LinkState.CLOSED) else logging.WARNING
        if quiet:
            level = logging.DEBUG
        doing = _DOING[new]
        if outage is not None:
            doing = f"{doing} (after {outage:.1f} s)"
        log.log(
            level,
            "node %s (namespace %r): %s -> %s: %s; %s",
            self._node,
            self._namespace,
            old.value,
            new.value,
            why,
            doing,
            extra={
                "node": self._node,
                "namespace": self._namespace,
                "state": new.value,
                "old_state": old.value,
                "error": None if new is LinkState.CONNECTED else why,
                "outage_seconds": outage,
            },
        )


# What the registry does in each state: the second half of every transition's log line.
_DOING = {
    LinkState.CONNECTED: "the mirror is current; reads and writes are normal",
    LinkState.DEGRADED: (
        "reads answer from this node's mirror (stale); writes raise BackendUnavailable;"
        " retrying with backoff"
    ),
    LinkState.DISCONNECTED: (
        "reads answer from this node's mirror (stale); writes raise BackendUnavailable;"
        " reconnecting with backoff"
    ),
    LinkState.RECOVERING: "reloading the mirror from a snapshot",
    LinkState.LEASE_LOST: "writing this node's registrations back",
    LinkState.CLOSED: "no more calls",
}


def _kept_recovery(old: LinkState, new: LinkState) -> LinkState:
    """The state a report of ``new`` leads to from ``old``: ``old`` when the
    recovery under way already covers ``new``."""
    if new is LinkState.RECOVERING and old in _NEEDS_RECOVERY:
        # Already recovering for a stronger reason (unreachable, error
        # replies, lost lease): the same recovery covers a resync.
        return old
    if new is LinkState.LEASE_LOST and old in (LinkState.DEGRADED, LinkState.DISCONNECTED):
        return old  # the recovery that follows re-asserts anyway
    return new
