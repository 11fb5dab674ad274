"""The ACL user of docs/redis.md, word for word, and what a missing permission looks like.

The documented ``ACL SETUSER`` line is read from the page (:data:`DOCUMENTED_ACL`),
so the page and this test cannot drift apart. As that user, on a real
redis-server of this module's own: two registry nodes write and tail, a flag
store writes and another one's listener follows, a ``RedisObserver`` reads, and
the ``foundation`` command (``agents list``/``count``/``watch``, ``flags``) runs;
``ACL LOG`` then shows Redis refused nothing but the two optional commands
(``INFO``, ``ROLE``). Without a permission, the failure is ``BackendUnavailable``
saying ``NOPERM, the ACL user lacks a permission`` and naming the command, the
same inside a Lua script (Redis 7.0 names none there: the library reads it from
the script's line) as outside, at construction or at the first write as the
page says.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation import RedisRegistry, errors, spawn_thread
from foundation._redis_conn import translate_error
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.registry._redis._observer import RedisObserver
from tests.cli._support import cli_env, ok_json, start_cli
from tests.cli._support import run_cli as _run_cli
from tests.redis_support import RedisServer

_PAGE = Path(__file__).resolve().parents[2] / "docs" / "redis.md"
_LINE = re.compile(r"^ACL SETUSER (\S+) on >(\S+) (.+)$", re.MULTILINE)


def _documented() -> tuple[str, str, list[str]]:
    found = _LINE.findall(_PAGE.read_text(encoding="utf-8"))
    assert len(found) == 1, f"docs/redis.md: one ACL SETUSER line expected, found {found}"
    user, password, rules = found[0]
    return user, password, rules.split()


USER, PASSWORD, RULES = _documented()
DOCUMENTED_ACL = ("SETUSER", USER, "on", f">{PASSWORD}", *RULES)
"""``ACL`` arguments of the documented line (namespace ``shop``)."""
NAMESPACE = "shop"
OPTIONAL = {"info", "role"}
"""Commands the page calls optional: refused, they fail nothing."""
_BOUND = 60.0  # a CLI run still going then has hung


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        srv.command("ACL", *DOCUMENTED_ACL)
        yield srv


def _url(server: RedisServer, user: str = USER, password: str = PASSWORD) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def _user(server: RedisServer, name: str, *changes: str) -> str:
    """An ACL user with the documented rules, then ``changes``; its URL."""
    server.command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *RULES, *changes)
    return _url(server, name)


def _refusals(server: RedisServer) -> list[dict[str, str]]:
    """``ACL LOG``: what Redis refused, as dicts of text."""
    out = []
    for entry in server.command("ACL", "LOG", "1000"):
        d = dict(zip(entry[::2], entry[1::2], strict=True))
        out.append({_text(k): _text(v) for k, v in d.items()})
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _closing(*objs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for obj in reversed(objs):
            obj.close()


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # sleep-ok: polling with a deadline


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    env = cli_env(FOUNDATION_CACHE_DIR=str(cache))
    return _run_cli(*args, cwd=tmp_path, env=env, timeout=_BOUND)


def _lines(stream: Any) -> tuple[queue.Queue[str], threading.Thread]:
    """A queue of ``stream``'s lines ("" at EOF) and the thread reading them."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with stream:
            for line in stream:
                lines.put(line)
        lines.put("")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return lines, reader


def _line_with(lines: queue.Queue[str], needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line, f"the stream ended before a line with {needle!r}"
        if needle in line:
            return line


def test_the_documented_acl_user_runs_every_client_and_command(
    server: RedisServer, tmp_path: Path, stop: threading.Event
) -> None:
    url = _url(server)
    server.command("ACL", "LOG", "RESET")
    a = RedisRegistry(url, namespace=NAMESPACE, lease_ttl=3.0)
    b = RedisRegistry(url, namespace=NAMESPACE, lease_ttl=3.0)
    store = RedisFlagStore(url, namespace=NAMESPACE, cache_path=None)
    other = RedisFlagStore(url, namespace=NAMESPACE, cache_path=None)
    flags = FeatureFlags([Flag("f"), Flag("kill", default=True)], store=store)
    seen = FeatureFlags([Flag("f"), Flag("kill", default=True)], store=other)
    with _closing(a, b, store, other, flags, seen):
        # Registry writes (scripts), read back by the other node's tail (XREAD).
        a.register("k1", spawn_thread(stop.wait), {"role": "x"})
        a.register_many([(("m", i), spawn_thread(stop.wait), {"i": i}) for i in range(3)])
        a.update_metadata("k1", {"role": "y"})
        assert a.unregister(("m", 0))
        assert b.wait_for_version(a.status().written)
        entry = b.lookup("k1")
        assert entry is not None
        assert entry.metadata["role"] == "y"
        assert b.lookup(("m", 0)) is None
        # Flag writes (WATCH/MULTI/EXEC) and the other store's listener (XREAD).
        flags.enable("f")
        flags.disable("kill", by="ops", reason="acl test")
        status = store.status()
        assert (status.pending, status.stale, status.connected) == (0, False, True), status
        _wait(lambda: seen.enabled("f") and not seen.enabled("kill"), "the other store")
        # The observer (MULTI/EXEC reads, the snapshot script, the tail).
        observer = RedisObserver(url, namespace=NAMESPACE)
        with _closing(observer):
            _wait(lambda: observer.count() == 3, "the observer's mirror")
            assert observer.lookup("k1") is not None

        # The command line, as that user.
        redis_args = ("--redis", url, "--namespace", NAMESPACE)
        listed = ok_json(_cli(tmp_path, *redis_args, "agents", "list"))
        assert len(listed) == 3, listed
        ok_json(_cli(tmp_path, *redis_args, "agents", "count"))
        store_args = ("--store", f"{url}?namespace={NAMESPACE}")
        ok_json(_cli(tmp_path, *store_args, "flags", "list"))
        for action, on in (("disable", False), ("enable", True)):
            result = _cli(tmp_path, *store_args, "flags", action, "f")
            assert result.returncode == 0, (result.returncode, result.stderr)
            _wait(lambda on=on: seen.enabled("f") is on, f"the CLI's {action} at the other store")
        _watch_sees_a_registration(tmp_path, url, a, stop)

        assert a.status().state == "connected"
        assert b.status().state == "connected"
    refused = {(r["reason"], r["object"]) for r in _refusals(server) if r["username"] == USER}
    assert {obj for _reason, obj in refused} <= OPTIONAL, refused


def _watch_sees_a_registration(
    tmp_path: Path, url: str, registry: RedisRegistry, stop: threading.Event
) -> None:
    """``foundation agents watch`` prints a registration made while it runs."""
    watch = start_cli("--redis", url, "--namespace", NAMESPACE, "agents", "watch", cwd=tmp_path)
    assert watch.stdout is not None
    assert watch.stderr is not None
    (out, out_reader), (err, err_reader) = _lines(watch.stdout), _lines(watch.stderr)
    try:
        # Race: a registration before the watch took its snapshot would be in the
        # snapshot, not an event: register only once it says it is watching.
        _line_with(err, "watching")
        registry.register("while-watching", spawn_thread(stop.wait))
        event = json.loads(_line_with(out, "while-watching"))
        assert event["event"] == "registered", event
    finally:
        watch.terminate()
        watch.wait(timeout=_BOUND)
        out_reader.join(timeout=_BOUND)
        err_reader.join(timeout=_BOUND)
    assert watch.returncode == 0, watch.returncode


# ------------------------------------------------------------------ a missing permission


def _noperm(exc: BaseException, refused: str) -> str:
    text = str(exc)
    assert isinstance(exc, errors.BackendUnavailable), repr(exc)
    assert "NOPERM, the ACL user lacks a permission (" + refused in text, text
    assert PASSWORD not in text, text
    return text


def test_a_command_refused_inside_a_script_is_a_noperm_naming_it(
    server: RedisServer, stop: threading.Event
) -> None:
    """Without ``XADD`` a node constructs (its lease script does not stream) and
    its first register fails naming ``XADD``; without ``TIME`` (the lease
    script's first command) construction fails naming ``TIME``."""
    url = _user(server, "no-xadd", "-xadd")
    node = RedisRegistry(url, namespace=NAMESPACE, op_timeout=1.0)
    with _closing(node):
        with pytest.raises(errors.BackendUnavailable) as caught:
            node.register("k", spawn_thread(stop.wait))
        _noperm(caught.value, "the command XADD, inside a Lua script): The user executing")
        # register_many: another script, sent in a pipeline.
        with pytest.raises(errors.BackendUnavailable) as caught:
            node.register_many([(("b", i), spawn_thread(stop.wait), {}) for i in range(2)])
        _noperm(caught.value, "the command XADD, inside a Lua script): The user executing")

    url = _user(server, "no-time", "-time")
    with pytest.raises(errors.BackendUnavailable) as caught:
        RedisRegistry(url, namespace=NAMESPACE, op_timeout=1.0).close()
    _noperm(caught.value, "the command TIME, inside a Lua script)")


def test_keys_outside_the_patterns_fail_at_construction(server: RedisServer) -> None:
    url = _user(server, "other-keys", "resetkeys", "~{other}:*")
    with pytest.raises(errors.BackendUnavailable) as caught:
        RedisRegistry(url, namespace=NAMESPACE, op_timeout=1.0).close()
    _noperm(caught.value, "a key outside its key patterns): ")
    with pytest.raises(errors.BackendUnavailable) as caught:
        RedisFlagStore(url, namespace=NAMESPACE, timeout=1.0, cache_path=None).close()
    _noperm(caught.value, "a key outside its key patterns)")


def test_a_flag_store_without_transactions_constructs_and_fails_its_first_write(
    server: RedisServer, tmp_path: Path, stop: threading.Event
) -> None:
    """The documented list before it named ``@transaction``: construction reads
    only, so it succeeds; the first write is refused, naming ``WATCH``; and
    ``foundation agents list`` exits 69 naming ``MULTI``."""
    url = _user(server, "no-transaction", "-@transaction")
    store = RedisFlagStore(url, namespace=NAMESPACE, timeout=1.0, cache_path=None)
    flags = FeatureFlags([Flag("f")], store=store)
    with _closing(store, flags), pytest.raises(errors.BackendUnavailable) as caught:
        flags.enable("f")
    _noperm(caught.value, "the command WATCH): ")
    node = RedisRegistry(_url(server), namespace=NAMESPACE)  # an entry to list
    with _closing(node):
        node.register("listed", spawn_thread(stop.wait))
        result = _cli(tmp_path, "--redis", url, "--namespace", NAMESPACE, "agents", "list")
    assert result.returncode == 69, (result.returncode, result.stderr)
    assert "NOPERM, the ACL user lacks a permission (the command MULTI)" in result.stderr


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        # Redis >= 7.2 names the command inside a script.
        (
            "ACL failure in script: User app has no permissions to run the 'xadd' command "
            "script: 71943db82c3605650a96551e76a2febd41240ea2, on @user_script:48.",
            "the command XADD, inside a Lua script)",
        ),
        (
            "ACL failure in script: No permissions to access a key script: "
            "71943db82c3605650a96551e76a2febd41240ea2, on @user_script:48.",
            "a key outside its key patterns, inside a Lua script)",
        ),
        # A pipeline's wrapping of a script's refusal.
        (
            "Command # 2 (EVALSHA 71943db82c3605650a96551e76a2febd41240ea2 1 {shop}:log) of "
            "pipeline caused error: ACL failure in script: User app has no permissions to "
            "run the 'xadd' command script: 71943db82c3605650a96551e76a2febd41240ea2, on "
            "@user_script:48.",
            "the command XADD, inside a Lua script)",
        ),
        # Redis 7.0 (its reply, seen on 7.0.15), a key.
        (
            "The user executing the script can't access at least one of the keys mentioned "
            "in the command arguments script: 7539fea99ce7bc2dd0866891d56053ea23920be3, on "
            "@user_script:1.",
            "a key outside its key patterns, inside a Lua script)",
        ),
        # Redis 7.0, a script the library does not know: the line only.
        (
            "The user executing the script can't run this command or subcommand script: "
            + "0" * 40
            + ", on @user_script:7.",
            "a command at line 7 of a Lua script)",
        ),
    ],
)
def test_other_forms_of_a_refusal_inside_a_script(reply: str, refused: str) -> None:
    import redis

    err = translate_error(redis.exceptions.ResponseError(reply), url="redis://h:1/0", doing="x")
    _noperm(err, refused)
