"""Two actor rules of ``FeatureFlags``' reads.

- The empty actor is no actor: ``enabled/value/variant/evaluate(name, "")``
  answer as without an actor, as OpenFeature, OFREP, the CLI and the admin page
  already did. Before the fix, ``""`` was hashed as an actor: at a percentage
  just above its bucket ``enabled("roll", "")`` was True while ``enabled("roll")``
  (and OpenFeature's answer for the same key) was False.
- A long actor's hash is not cached (``MAX_CACHED_ACTOR``). Before the fix every
  distinct actor string was kept in the per-flag caches: 1,500 OFREP requests
  with 200 kB targeting keys grew the server's RSS from 34 to 322 MB.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import pytest

from foundation.errors import InvalidFlagValue
from foundation.flags import FeatureFlags, Flag, bucket
from foundation.flags._rules import MAX_CACHED_ACTOR


class Blank(enum.StrEnum):
    NONE = ""


DECLARED = (
    Flag("roll"),
    Flag("zero"),
    Flag("size", variants={"s": 1, "m": 2, "l": 3}, default="s"),
)


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    f = FeatureFlags(DECLARED)
    # "" lands in the rollout (its bucket is below p), no actor does not (p < 100).
    p = bucket("roll", "") + 0.5
    assert p < 100
    f.set_percentage("roll", p)
    f.set_percentage("zero", 0)
    f.set_split("size", {"m": 50, "l": 50})
    yield f
    f.close()


@pytest.mark.parametrize("empty", ["", Blank.NONE])
def test_an_empty_actor_is_no_actor(flags: FeatureFlags, empty: str) -> None:
    assert flags.enabled("roll", empty) is flags.enabled("roll") is False
    assert flags.evaluate("roll", empty) == flags.evaluate("roll")
    assert flags.evaluate("roll", empty).reason == "DEFAULT"
    # 0%: everyone with an actor is SPLIT off, no actor is DEFAULT.
    assert flags.evaluate("zero", "ana").reason == "SPLIT"
    assert flags.evaluate("zero", empty) == flags.evaluate("zero")
    assert flags.evaluate("zero", empty).reason == "DEFAULT"
    # A split: no actor gets the default variant.
    assert flags.value("size", empty) == flags.value("size") == 1
    assert flags.variant("size", empty) == flags.variant("size") == "s"
    assert flags.evaluate("size", empty) == flags.evaluate("size")


@pytest.mark.parametrize("empty", ["", Blank.NONE])
def test_a_write_refuses_an_empty_actor_and_stores_nothing(flags: FeatureFlags, empty: str) -> None:
    # An entry for "" could never match: reads take it for no actor.
    before = (flags.state("roll"), flags.state("size"), len(flags.history()))
    for write in (
        lambda: flags.allow("roll", empty),
        lambda: flags.deny("roll", empty),
        lambda: flags.assign("size", empty, "l"),
    ):
        with pytest.raises(InvalidFlagValue, match="must not be empty"):
            write()
    assert (flags.state("roll"), flags.state("size"), len(flags.history())) == before


def test_an_int_zero_is_still_an_actor(flags: FeatureFlags) -> None:
    flags.set_percentage("roll", 50)
    assert flags.evaluate("roll", 0) == flags.evaluate("roll", "0")
    assert flags.evaluate("roll", 0).reason == "SPLIT"


def _cached(flags: FeatureFlags) -> tuple[int, int]:
    """(rollout hashes of "roll", split hashes of "size") cached."""
    split = sum(len(c) for c in flags._split_cache["size"].values())
    return len(flags._hash_cache["roll"]), split


@pytest.mark.parametrize("length", [1, MAX_CACHED_ACTOR])
def test_a_short_actor_hash_is_cached(flags: FeatureFlags, length: int) -> None:
    flags.set_percentage("roll", 50)
    actor = "a" * length
    flags.enabled("roll", actor)
    flags.evaluate("size", actor)
    assert _cached(flags) == (1, 2)


@pytest.mark.parametrize("length", [MAX_CACHED_ACTOR + 1, 200_000])
def test_a_long_actor_hash_is_not_cached(flags: FeatureFlags, length: int) -> None:
    flags.set_percentage("roll", 50)
    for i in range(20):
        actor = f"{i:03}" + "a" * (length - 3)
        # Every read path with a hash: enabled(), evaluate() of a boolean
        # rollout and of a typed split; answers still exact.
        assert flags.enabled("roll", actor) is (bucket("roll", actor) < 50)
        assert flags.evaluate("roll", actor).value is (bucket("roll", actor) < 50)
        assert flags.evaluate("size", actor).reason == "SPLIT"
        assert flags.value("size", actor) == flags.evaluate("size", actor).value
    assert _cached(flags) == (0, 0)
