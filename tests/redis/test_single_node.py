"""RedisRegistry on one node: serialisation, bad input, connections, local deaths."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import redis

from foundation import errors
from foundation.liveness import Down, spawn_thread
from foundation.registry import RegistryEvent
from foundation.registry._redis import MAX_METADATA_BYTES, RedisRegistry, RemoteAgent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import ROOT, wait_until
from tests.redis_support import RedisServer, free_port


def _raw(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_keys_of_str_int_and_nested_tuples_are_restored_as_given(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry()
    b = make_registry()
    keys = [
        "w",
        7,
        -(2**63),  # the smallest int key (docs/keys-and-metadata.md)
        ("job", 1, ("sub", 2)),
        (),
        "ünïcødé \ud800",
        2.5,
        None,
        frozenset({"x", 1, (2, "y")}),
        ("mixed", frozenset(), -0.5),
    ]
    for k in keys:
        a.register(k, agents(), {"k": 1})
    assert b.wait_for_version(a.status().written)
    for k in keys:
        entry = b.lookup(k)
        assert entry is not None
        assert entry.key == k
        assert type(entry.key) is type(k)
        assert isinstance(entry.agent, RemoteAgent)


def test_keys_python_considers_equal_are_one_key_across_nodes(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry()
    b = make_registry()
    a.register(2, agents())
    with pytest.raises(errors.AlreadyRegistered):
        b.register(2.0, agents())
    a.register(frozenset({1, 2}), agents())
    with pytest.raises(errors.AlreadyRegistered):
        b.register(frozenset({2.0, 1}), agents())
    assert b.wait_for_version(a.status().written)
    assert b.lookup(2.0) is not None
    assert b.lookup(2.0).key == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "key", [True, float("nan"), float("inf"), b"bytes", ("ok", [1]), frozenset({True})]
)
def test_keys_that_are_not_json_keys_are_invalid_and_store_nothing(
    make_registry: MakeRegistry, redis_server: RedisServer, agents, key: object
) -> None:
    reg = make_registry()
    with pytest.raises(errors.InvalidKey):
        reg.register(key, agents())  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidKey):
        reg.unregister(key)  # type: ignore[arg-type]
    assert reg.count() == 0


def test_unhashable_lookup_is_invalid_key(make_registry: MakeRegistry) -> None:
    reg = make_registry()
    with pytest.raises(errors.InvalidKey):
        reg.lookup(["x"])  # type: ignore[arg-type]
    assert ["x"] not in reg


@pytest.mark.parametrize(
    "metadata",
    [
        {"f": object()},
        {"nan": float("nan")},
        {1: "non-str key"},
        {"blob": "x" * (MAX_METADATA_BYTES + 1)},
        "not a mapping",
    ],
    ids=["object", "nan", "int-key", "huge", "str"],
)
def test_bad_metadata_is_rejected_before_anything_is_stored(
    make_registry: MakeRegistry, redis_server: RedisServer, ns: str, agents, metadata: object
) -> None:
    reg = make_registry()
    reg.register("kept", agents(), {"v": 1})
    with pytest.raises(errors.InvalidMetadata):
        reg.register("k", agents(), metadata)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidMetadata):
        reg.update_metadata("kept", metadata)  # type: ignore[arg-type]
    assert reg.lookup("k") is None
    assert dict(reg.lookup("kept").metadata) == {"v": 1}  # type: ignore[union-attr]
    with _raw(redis_server) as raw:
        assert raw.hlen("{" + ns + "}:head") == 1
        assert raw.xlen("{" + ns + "}:log") == 1


def test_metadata_is_json_and_comes_back_frozen_on_every_node(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry(indexed=("tags",))
    b = make_registry(indexed=("tags",))
    a.register("k", agents(), {"tags": ["x", "y"], "n": {"deep": [1, 2.5, None, True]}})
    assert b.wait_for_version(a.status().written)
    for reg in (a, b):
        md = reg.lookup("k").metadata  # type: ignore[union-attr]
        assert md["tags"] == ("x", "y")
        assert md["n"]["deep"] == (1, 2.5, None, True)
        with pytest.raises(TypeError):
            md["tags"] = ()  # type: ignore[index]
        assert [e.key for e in reg.find_by_attribute("tags", "y")] == ["k"]


def test_a_local_agent_that_dies_is_unregistered_on_every_node(
    make_registry: MakeRegistry,
) -> None:
    a = make_registry()
    b = make_registry()
    seen: list[RegistryEvent] = []
    b.subscribe(seen.append)
    stop = threading.Event()
    worker = spawn_thread(stop.wait)
    a.register("w", worker)
    assert b.wait_for_version(a.status().written)
    assert b.lookup("w") is not None
    stop.set()
    worker.join()
    assert wait_until(lambda: a.lookup("w") is None)
    assert wait_until(lambda: b.lookup("w") is None)
    # b's listeners hear it from a courier thread, once its mirror applied it.
    assert wait_until(lambda: any(e.kind == "unregistered" for e in seen))
    downs = [e for e in seen if e.kind == "unregistered"]
    assert [(e.reason, e.down) for e in downs] == [("down", Down("normal"))]
    assert a.unregister("w") is False


def test_registering_an_already_dead_agent_is_not_alive(make_registry: MakeRegistry) -> None:
    reg = make_registry()
    dead = spawn_thread(lambda: None)
    dead.join()
    with pytest.raises(errors.NotAlive):
        reg.register("d", dead)
    assert reg.lookup("d") is None


def test_a_wrong_url_is_backend_unavailable_at_construction() -> None:
    with pytest.raises(errors.BackendUnavailable) as info:
        RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", op_timeout=0.5)
    assert isinstance(info.value, ConnectionError)


def test_a_malformed_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RedisRegistry("http://127.0.0.1:1/0")


def test_a_wrong_password_is_backend_unavailable_and_the_right_one_works(agents) -> None:
    with RedisServer(password="s3cret") as server:
        wrong = server.url.replace("s3cret", "nope")
        with pytest.raises(errors.BackendUnavailable) as info:
            RedisRegistry(wrong, op_timeout=1.0)
        assert "nope" not in str(info.value)  # the password is never echoed
        with pytest.raises(errors.BackendUnavailable):
            RedisRegistry(server.url.replace(":s3cret@", ""), op_timeout=1.0)
        with RedisRegistry(server.url, namespace="auth") as reg:
            reg.register("k", agents())
            assert reg.lookup("k") is not None


def test_namespaces_isolate_deployments_on_one_redis(make_registry: MakeRegistry, agents) -> None:
    a = make_registry(namespace="tenant-a")
    b = make_registry(namespace="tenant-b")
    a.register("same", agents())
    b.register("same", agents())  # no conflict: another namespace
    assert a.lookup("same").node == a.node  # type: ignore[union-attr]
    assert b.lookup("same").node == b.node  # type: ignore[union-attr]


def test_clean_close_takes_the_nodes_registrations_with_it(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry()
    b = make_registry()
    seen: list[RegistryEvent] = []
    b.subscribe(seen.append)
    a.register("x", agents())
    a.register("y", agents())
    assert b.wait_for_version(a.status().written)
    a.close()
    assert wait_until(lambda: b.count() == 0)
    # The events are delivered after the mirror changed (another thread): wait.
    assert wait_until(lambda: len([e for e in seen if e.kind == "unregistered"]) >= 2)
    assert sorted((e.kind, e.reason, e.entry.key) for e in seen if e.kind == "unregistered") == [
        ("unregistered", "unregistered", "x"),
        ("unregistered", "unregistered", "y"),
    ]
    with pytest.raises(errors.Closed):
        a.register("z", agents())
    with pytest.raises(errors.Closed):
        a.count()


def test_construction_without_the_redis_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from foundation import RedisRegistry\n"
        "try:\n"
        "    RedisRegistry('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "foundation[redis]" in out.stdout


def test_an_acl_user_works_through_the_url_and_one_without_rights_is_unavailable(
    redis_server: RedisServer, ns: str, agents
) -> None:
    user, denied = f"app-{ns}", f"denied-{ns}"
    with _raw(redis_server) as raw:
        # The registry's part of what docs/redis.md documents (the flag store and
        # the CLI also need +@transaction: test_acl_permissions), namespace keys only.
        raw.acl_setuser(
            user,
            enabled=True,
            passwords=["+pw"],
            keys=["{" + ns + "}:*"],
            commands=["+@read", "+@write", "+@scripting", "+@connection", "+time"],
        )
        raw.acl_setuser(denied, enabled=True, passwords=["+pw"], keys=[], commands=["+ping"])
        try:
            base = f"127.0.0.1:{redis_server.port}/0"
            with RedisRegistry(f"redis://{user}:pw@{base}", namespace=ns) as reg:
                reg.register("k", agents(), {"role": "r"})
                reg.update_metadata("k", {"role": "s"})
                assert reg.unregister("k") is True
            with pytest.raises(errors.BackendUnavailable):
                RedisRegistry(f"redis://{denied}:pw@{base}", namespace=ns, op_timeout=1.0)
            with pytest.raises(errors.BackendUnavailable):
                RedisRegistry(f"redis://{user}:pw@{base}", namespace="other", op_timeout=1.0)
        finally:
            raw.acl_deluser(user, denied)
