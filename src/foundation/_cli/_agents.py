"""``foundation agents ...``: a Redis registry namespace seen through a read-only observer."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from foundation._cli._common import (
    Output,
    Settings,
    UsageError,
    json_text,
    key_from_text,
    key_to_json,
    positive_int,
    shortened,
    value_from_text,
)

__all__ = [
    "LINK_POLL",
    "WATCH_BACKLOG",
    "LinkReporter",
    "add_parser",
    "entry_data",
    "event_data",
    "open_observer",
    "plain_error",
    "warn_if_unused",
]

LINK_POLL = 0.25
"""Seconds between two looks at the registry's connection state during ``watch``
(an outage shorter than that still prints one line: see ``LinkReporter.check``)."""

WATCH_BACKLOG = 10_000
"""Events ``watch`` holds while its stdout's reader is behind; later ones are
dropped and counted (a ``dropped`` line says how many once it catches up)."""

_REGISTRY_KEYS = ("lastbeat", "nodes", "leases", "ver", "log", "head", "meta", "owner")
"""Keys (under ``{namespace}:``) a ``RedisRegistry`` leaves in Redis once it ran
(``lastbeat`` stays after the last node closed)."""
_SCAN_ROUNDS = 20
"""SCAN calls (of COUNT 1000) spent looking for the namespaces in use: a bound."""


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("agents", help="live agents of a Redis registry", parents=[common])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="entries, optionally filtered", parents=[common])
    ls.add_argument(
        "--where",
        nargs=3,
        action="append",
        default=[],
        metavar=("PATH", "OP", "VALUE"),
        help="metadata criterion (OP: eq neq gt gte lt lte in not_in; VALUE as JSON, else text)",
    )
    ls.add_argument("--limit", type=positive_int, default=None, metavar="N")
    show = sub.add_parser("show", help="one entry (KEY as JSON, else text)", parents=[common])
    show.add_argument("key", metavar="KEY")
    sub.add_parser("count", help="entries, by kind and by node", parents=[common])
    watch = sub.add_parser("watch", help="print changes as they happen", parents=[common])
    watch.add_argument(
        "--count", type=positive_int, default=None, metavar="N", help="stop after N events"
    )


@contextmanager
def open_observer(settings: Settings) -> Iterator[Any]:
    from foundation.registry._redis._observer import RedisObserver

    observer = RedisObserver(settings.need_redis(), namespace=settings.namespace)
    try:
        yield observer
    finally:
        observer.close()


def warn_if_unused(count: int, settings: Settings) -> None:
    """One stderr line when no registry ever used ``settings.namespace`` on this
    Redis (a ``--namespace`` typo), naming the namespaces that are in use.

    Only when the namespace holds no agent (``count``); an empty namespace some
    registry used (its keys are there) says nothing: it is just empty.
    """
    if count != 0:
        return
    from foundation import _redis_conn
    from foundation.errors import FoundationError

    url = settings.need_redis()
    prefix = "{" + settings.namespace + "}:"
    try:
        client = _redis_conn.connect(url, op_timeout=2.0, name="foundation-cli")
    except FoundationError:  # the observer is connected: an outage just now; no line
        return
    try:
        with _redis_conn.translated(_redis_conn.redact_url(url), "looking for namespaces"):
            master = _master_of(client)
            if master is not None:  # not a typo: a replica holds only its master's keys
                _warn_replica(url, master)
                return
            if client.exists(*(prefix + k for k in _REGISTRY_KEYS)):
                return
            seen = _namespaces_in_use(client)
    except FoundationError:
        return
    finally:
        client.close()
    others = ", ".join(repr(n) for n in seen[:10]) + (", ..." if len(seen) > 10 else "")
    print(
        f"warning: no registry has used namespace {settings.namespace!r} on "
        f"{_redis_conn.redact_url(url)} ("
        + (f"namespaces in use: {others}; " if seen else "")
        + "--namespace NS names another)",
        file=sys.stderr,
        flush=True,
    )


def _master_of(client: Any) -> str | None:
    """``host:port`` of the master when the server is a read-only replica (``ROLE``),
    else None (a server that refuses ``ROLE``, an ACL say, counts as no replica)."""
    import redis

    try:
        role = [r.decode("utf-8", "replace") if isinstance(r, bytes) else r for r in client.role()]
    except redis.ResponseError:  # NOPERM, a proxy without ROLE: the typo hint stands
        return None
    if not role or role[0] not in ("slave", "replica"):
        return None
    return f"{role[1]}:{role[2]}"


def _warn_replica(url: str, master: str) -> None:
    """The stderr line of an empty namespace on a replica: registries cannot write
    there, so its agents may live on nodes that cannot re-assert them."""
    from foundation import _redis_conn

    print(
        f"warning: {_redis_conn.redact_url(url)} is a read-only replica of {master}: "
        "it shows only what its master holds, and registries using it cannot "
        "write (point --redis at the master)",
        file=sys.stderr,
        flush=True,
    )


def _namespaces_in_use(client: Any) -> list[str]:
    """The registry namespaces with a ``lastbeat`` key, from a bounded SCAN."""
    found: set[str] = set()
    cursor = 0
    for _ in range(_SCAN_ROUNDS):
        # Braces are plain characters to Redis's glob: "{*}:lastbeat" is every namespace's.
        cursor, keys = client.scan(cursor, match="{*}:lastbeat", count=1000)
        for key in keys:
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            found.add(text[1 : -len("}:lastbeat")])
        if not cursor:
            break
    return sorted(found)


def entry_data(entry: Any) -> dict[str, Any]:
    agent = entry.agent
    return {
        "key": key_to_json(entry.key),
        "node": entry.node,
        "kind": getattr(agent, "kind", None),
        "pid": getattr(agent, "pid", None),
        "name": getattr(agent, "name", None),
        "registered_at": entry.registered_at,
        "metadata": entry.metadata,
    }


def event_data(event: Any) -> dict[str, Any]:
    down = event.down
    return {
        "event": event.kind,
        "reason": event.reason,
        "down": None
        if down is None
        else {"reason": down.reason, "exit_code": down.exit_code, "signal": down.signal},
        "at": time.time(),
        **entry_data(event.entry),
    }


def _age(at: float, now: float) -> str:
    return f"{max(0.0, now - at):.0f}s"


def _rows(entries: Iterable[Any]) -> Iterator[list[Any]]:
    """A table row per entry, as the entries come (ages as of the first one)."""
    now = time.time()
    for e in entries:
        yield [
            e.key if isinstance(e.key, str) else json.dumps(key_to_json(e.key)),
            getattr(e.agent, "kind", "?"),
            e.node,
            getattr(e.agent, "pid", None),
            _age(e.registered_at, now),
            shortened(dict(e.metadata)),  # cut in the table; --json keeps it whole
        ]


def _show_text(data: dict[str, Any], out: Output) -> None:
    """One entry for a person: key and metadata as JSON (pasteable back into
    ``show`` and ``--where``), the registration time in UTC with its age."""
    at = data["registered_at"]
    when = datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    for name, value in data.items():
        if name in ("key", "metadata"):
            shown = json_text(value)
        elif name == "registered_at":
            shown = f"{when} UTC ({_age(at, time.time())} ago)"
        else:
            shown = "-" if value is None else str(value)
        out.line(f"{name}: {shown}")


def _matching(reader: Any, compiled: Sequence[Any], limit: int | None) -> Iterator[Any]:
    """The entries matching ``compiled`` (all if empty), oldest first, up to ``limit``,
    read a chunk at a time."""
    from foundation.registry._query import matches

    keys = reader.oldest_first()
    if not compiled and limit is not None:
        keys = keys[:limit]  # no filter: only these are read
    shown = 0
    for entry in reader.entries(keys):
        if limit is not None and shown >= limit:
            return
        if compiled and not matches(entry.metadata, compiled):
            continue
        shown += 1
        yield entry


def _list_agents(reader: Any, args: argparse.Namespace, out: Output) -> None:
    """Print the live agents matching ``--where`` (all if none), oldest first, up
    to --limit: each row as it is read (JSON), or the table once every row's
    text is in (its column widths need them all)."""
    headers = ["key", "kind", "node", "pid", "age", "metadata"]
    from foundation.errors import InvalidCriteria
    from foundation.registry._query import compile_criteria

    criteria = [(path, op, value_from_text(v)) for path, op, v in args.where]
    try:
        compiled = compile_criteria(criteria)  # every criterion checked: nothing read yet
    except InvalidCriteria as exc:  # bad --where: a usage error
        raise UsageError(str(exc), label="InvalidCriteria") from exc
    entries = _matching(reader, compiled, args.limit)
    if out.json:
        out.json_array(entry_data(e) for e in entries)
    else:
        empty = "no agents" + (" match" if criteria else "")
        out.table(headers, _rows(entries), empty=empty)


def _count_agents(reader: Any, settings: Settings, out: Output) -> None:
    """Print how many agents are live, by kind and by node (the heads alone: no
    metadata read)."""
    kinds, nodes = reader.breakdown()
    # The entries this library can read, as `list` shows them (Redis's own number,
    # HLEN, counts an entry written by something else too).
    count = sum(kinds.values())
    data = {"count": count, "by_kind": dict(kinds), "by_node": dict(nodes)}

    def text() -> None:
        out.line(f"{count} agents in namespace {settings.namespace!r}")
        for what, counter in (("kind", kinds), ("node", nodes)):
            for name, n in counter.most_common():
                out.line(f"  {what} {name}: {n}")

    out.emit(data, text)


def _read(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """``list`` and ``count``: straight from Redis, a chunk at a time (no observer:
    its start decodes every entry whole; see ``registry._redis._chunked_reads``)."""
    from foundation.registry._redis._chunked_reads import NamespaceReader

    reader = NamespaceReader(settings.need_redis(), settings.namespace)
    try:
        count = reader.count()
        warn_if_unused(count, settings)
        if args.action == "list":
            _list_agents(reader, args, out)
        else:
            _count_agents(reader, settings, out)
    finally:
        reader.close()
    return 0


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    if args.action in ("list", "count"):
        return _read(args, settings, out)
    with open_observer(settings) as observer:
        warn_if_unused(observer.count(), settings)
        action = args.action
        if action == "show":
            from foundation.errors import NotRegistered

            key = key_from_text(args.key)
            entry = _lookup(observer, args.key, key)
            if entry is None:
                raise NotRegistered(key)
            data = entry_data(entry)
            out.emit(data, lambda: _show_text(data, out))
        elif action == "watch":
            return _watch(observer, args.count, out)
        return 0


def _lookup(observer: Any, text: str, key: Any) -> Any:
    """``observer.lookup(key)``, ``key`` read from ``text`` as JSON: a refused key
    (``true`` is the bool True) says how to look up the string instead."""
    from foundation.errors import InvalidKey

    try:
        return observer.lookup(key)
    except InvalidKey as exc:
        if isinstance(key, str):
            raise
        quoted = json.dumps(text, ensure_ascii=False)
        raise InvalidKey(
            f"{exc}; {text[:100]!r} was read as JSON: for the string key, quote it "
            f"(foundation agents show '{quoted[:100]}')"
        ) from exc


class LinkReporter:
    """Prints one stderr line per change of a registry's connection state.

    The CLI logs the library's WARNING and INFO lines nowhere (errors only), so
    ``watch`` says itself when it loses Redis, when Redis answers with errors
    and when it is connected again (and for how long it was not).

    A flap (the same failure right after each return: ``CLIENT KILL`` in a
    loop, a flapping proxy) is said once, as the library's own logs say it
    (``foundation._flap``): the first cut as any outage, the first repeat as
    one "flapping" line, the next repeats counted silently, and one "steady
    again" line once connected ``FLAP_WINDOW`` s (or "still disconnected" once
    down that long since the last cut). Another failure is never folded.
    """

    def __init__(self, registry: Any, name: str) -> None:
        from foundation._flap import FlapDamper
        from foundation.metrics import connection_state

        self._read = functools.partial(connection_state, registry)
        self._status = getattr(registry, "status", None)
        self._name = name
        first = self._read()
        self._state = None if first is None else first.state
        self._since = self._state_since()
        self._left_connected = time.monotonic()  # when the state last left "connected"
        # Called from check() only (the watch loop's one thread): no lock.
        self._damper = FlapDamper()
        if self._state == "connected":
            self._damper.up()
        self._error: str | None = None if first is None else first.last_error
        self._last_drop = 0.0  # monotonic: the last cut seen
        self._flap_began = 0.0  # monotonic: the cut a flap repeats (its first)

    def _state_since(self) -> float | None:
        """When the registry entered its state (``status().state_since``), if it says."""
        try:
            since = getattr(self._status(), "state_since", None) if self._status else None
        except Exception:  # a closed registry, say: only the state lines then
            return None
        return since if isinstance(since, float) else None

    def check(self) -> None:
        """Print a line if the state changed since the last check (or a flap began or ended)."""
        now = self._read()
        if now is None:
            return
        # Race: this looks between events, every LINK_POLL. An outage shorter
        # than that (down and back between two looks) leaves the same state,
        # but the state was entered again since: state_since moved. Read after
        # the state, so a change between the two reads shows on the next check.
        # Several cuts between two looks show as one (a flap's count is a floor).
        since = self._state_since()
        moved = since is not None and self._since is not None and since != self._since
        self._since = since
        if now.state == self._state:
            if now.state != "connected":
                self._still_down(now.state, now.last_error)
            elif moved:
                self._blip(now.last_error)
            else:
                self._steady()
            return
        old, self._state = self._state, now.state
        if old == "connected":
            self._left_connected = time.monotonic()
        self._changed(old, now.state, now.last_error)

    def _say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _drop(self, error: str | None) -> str:
        """Feed a cut (connected -> down) to the damper; its verdict."""
        at = time.monotonic()
        verdict = self._damper.drop(error)
        if verdict == "first":
            self._flap_began = self._last_drop
        self._last_drop = at
        return verdict

    def _changed(self, old: str | None, state: str, error: str | None) -> None:
        """The state went from ``old`` to ``state``: a line, unless part of a flap."""
        self._error = error
        if old == "connected":
            verdict = self._drop(error if state in ("disconnected", "degraded") else None)
            if verdict == "first":
                self._say(self._flapping_line(error))
                return
            quiet = verdict == "quiet"
        elif state == "connected":
            quiet = self._damper.up()
        else:
            quiet = self._damper.again(error) and state != "closed"
        if not quiet:
            elapsed = time.monotonic() - self._left_connected
            self._say(self._line(state, error, elapsed))

    def _blip(self, error: str | None) -> None:
        """Down and back between two looks: a cut, then a return."""
        verdict = self._drop(error)
        self._damper.up()
        if verdict == "usual":
            self._say(self._blip_line(error))
        elif verdict == "first":
            self._say(self._flapping_line(error))

    def _steady(self) -> None:
        """Connected since the last look: a flap that ended says so, once."""
        over = self._damper.over()
        if over is None:
            return
        back = time.monotonic() - over.seconds  # the flap's last return
        self._say(
            f"registry {self._name!r} steady again: connected {over.seconds:.1f}s since "
            f"the last cut; it flapped for {max(0.0, back - self._flap_began):.1f}s, "
            f"{over.drops + 1} cuts ({over.cause}), {over.drops - 1} of them not printed; "
            "changes made meanwhile printed as events"
        )

    def _still_down(self, state: str, error: str | None) -> None:
        """Down since the last look: within a flap, another failure is a new
        outage (its line now), and a flap that ended down says so, once."""
        if not self._damper.flapping:
            return
        if error != self._error:
            self._error = error
            if not self._damper.again(error):
                self._say(self._line(state, error, time.monotonic() - self._left_connected))
                return
        gone = self._damper.lingers()
        if gone is not None:
            why = f" ({plain_error(error)})" if error else ""
            self._say(
                f"registry {self._name!r} still {state} {gone.seconds:.1f}s after the last "
                f"of {gone.drops + 1} cuts ({gone.cause}){why}; showing the last state seen "
                "until Redis is back"
            )

    def _flapping_line(self, error: str | None) -> str:
        from foundation._flap import FLAP_WINDOW

        why = f" ({plain_error(error)})" if error else ""
        return (
            f"registry {self._name!r} is flapping: Redis cut it again right after it "
            f"reconnected{why}; further cuts with the same cause are counted, not printed, "
            f"until it stays connected {FLAP_WINDOW:.0f}s; changes made meanwhile print "
            "as events"
        )

    def _blip_line(self, error: str | None) -> str:
        why = f" (last error: {plain_error(error)})" if error else ""
        return (
            f"registry {self._name!r} lost Redis and was connected again between two "
            f"checks{why}; changes made meanwhile print as events"
        )

    def _line(self, state: str, error: str | None, elapsed: float) -> str:
        who = f"registry {self._name!r}"
        why = f" ({plain_error(error)})" if error else ""
        if state == "connected":
            return (
                f"{who} connected again after {elapsed:.1f}s; "
                "changes made meanwhile print as events"
            )
        if state == "disconnected":
            return f"{who} disconnected{why}; showing the last state seen until Redis is back"
        if state == "degraded":
            why = f": {plain_error(error)}" if error else ""
            return f"{who} degraded (Redis answers with errors){why}"
        return f"{who} {state}{why}"


_DOING = re.compile(r" failed while [^:]*: ")
_SENTENCE_END = re.compile(r"\.\s+(?=\S)")


def plain_error(error: str, width: int = 300) -> str:
    """A backend error as part of one sentence: one line, without what the
    registry was doing inside (``failed while taking a snapshot``) nor inner
    full stops (``... 127.0.0.1:6379. Connection refused.``), cut to ``width``.

    >>> plain_error("Redis at redis://h:1/0 failed while taking a snapshot: "
    ...             "unreachable: Error 111 connecting to h:1. Connection refused.")
    'Redis at redis://h:1/0 unreachable: Error 111 connecting to h:1, Connection refused'
    """
    text = " ".join(error.split())
    text = _DOING.sub(" ", text, count=1)
    text = _SENTENCE_END.sub(", ", text).rstrip(" .;,")
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True, slots=True)
class Dropped:
    """``count`` events ``watch`` dropped, seen from ``first_at`` to ``last_at`` (Unix times)."""

    count: int
    first_at: float
    last_at: float


class Backlog:
    """The events ``watch`` has yet to print: at most ``limit``; past it, events
    are dropped and counted, and a :class:`Dropped` takes their place in the
    order (before the next event kept, or once the backlog is empty).

    ``put`` is the observer's listener (on its courier thread: it never
    blocks); ``get`` is the printing loop's, which a stdout nobody reads
    blocks. One stderr line says when dropping starts (the loop cannot say
    it: it is the one blocked).
    """

    def __init__(self, limit: int = WATCH_BACKLOG) -> None:
        self._items: deque[Any] = deque()
        self._limit = limit
        self._ready = threading.Condition()
        self._dropped: Dropped | None = None  # dropped since the last Dropped handed out

    def put(self, event: Any) -> None:
        """Keep ``event``, or drop it (the backlog is full)."""
        now = time.time()
        with self._ready:
            if len(self._items) >= self._limit:
                first = self._dropped is None
                self._dropped = _one_more(self._dropped, now)
            else:
                first = False
                if self._dropped is not None:  # in order: the gap, then this event
                    self._items.append(self._dropped)
                    self._dropped = None
                self._items.append(event)
                self._ready.notify()
        if first:  # outside the lock: a blocked stderr never holds up get()
            _say_dropping(self._limit)

    def get(self, timeout: float) -> Any:
        """The next event or :class:`Dropped`, waiting up to ``timeout`` s; None if none."""
        with self._ready:
            if not self._items and self._dropped is None:
                self._ready.wait(timeout)
            if self._items:
                return self._items.popleft()
            # Caught up (empty): the drops since, if any, are said now.
            dropped, self._dropped = self._dropped, None
            return dropped


def _one_more(dropped: Dropped | None, now: float) -> Dropped:
    if dropped is None:
        return Dropped(1, now, now)
    return Dropped(dropped.count + 1, dropped.first_at, now)


def _say_dropping(limit: int) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr gone: the dropped line still counts
        print(
            f"warning: stdout's reader is not keeping up: {limit} events wait to be "
            "printed; later events are dropped and counted (a 'dropped' line says how "
            "many once it reads again)",
            file=sys.stderr,
            flush=True,
        )


def _print_event(item: Any, out: Output) -> None:
    """One event (or the count of those dropped) on stdout."""
    if isinstance(item, Dropped):
        if out.json:
            data = {"event": "dropped", "dropped": item.count, "first_at": item.first_at,
                    "last_at": item.last_at, "at": time.time()}  # fmt: skip
            out.json_line(data)
        else:
            out.line(
                f"dropped: {item.count} events (stdout's reader was behind; "
                "'foundation agents list' shows the current state)"
            )
        return
    data = event_data(item)
    if out.json:
        out.json_line(data)
    else:
        why = f" ({item.reason})" if item.kind == "unregistered" else ""
        down = f" {item.down.reason}" if item.down is not None else ""
        out.line(f"{item.kind}{why}{down}: {data['key']} on {data['node']}")


def _watch(observer: Any, count: int | None, out: Output) -> int:
    """Print each event until ``count`` events, Ctrl-C, SIGTERM or SIGHUP; connection
    state changes go to stderr. SIGTERM is the orderly stop (exit 0); Ctrl-C
    exits 130, SIGHUP 129 (``foundation._cli._signals``). At most ``WATCH_BACKLOG`` events
    wait for a slow stdout (``Backlog``)."""
    from foundation._cli._signals import Terminated

    link = LinkReporter(observer, observer.namespace)
    events = Backlog()
    unsubscribe = observer.subscribe(events.put)  # called on the observer's courier thread
    seen = 0
    try:
        # On stderr, so stdout stays pure JSON Lines; once printed, every later
        # change is reported (the observer took its snapshot before subscribe).
        print(
            f"watching {observer.namespace!r} ({observer.count()} agents); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while count is None or seen < count:
            link.check()
            item = events.get(timeout=LINK_POLL)
            if item is None:
                continue
            if not isinstance(item, Dropped):  # --count N counts events printed
                seen += 1
            _print_event(item, out)
    except Terminated as exc:  # SIGTERM: watching until stopped, this is its end
        exc.exit_code = 0  # (SIGHUP keeps its 129: see Terminated)
        raise
    finally:
        unsubscribe()
    return 0
