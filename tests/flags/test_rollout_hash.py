"""The rollout hash: documented, stable across processes, monotonic, uniform."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.flags import FeatureFlags, Flag, bucket
from foundation.flags._hashing import actor_hash, threshold

ACTORS = [f"user-{i}" for i in range(10_000)]

_CHILD = """
import json, sys
from foundation.flags import FeatureFlags, Flag, bucket
flags = FeatureFlags([Flag("beta")])
flags.set_percentage("beta", 37.5)
actors = [f"user-{i}" for i in range(2000)]
print(json.dumps({"buckets": [bucket("beta", a) for a in actors[:50]],
                  "in": [a for a in actors if flags.enabled("beta", actor=a)]}))
flags.close()
"""


def test_bucket_follows_the_documented_formula() -> None:
    digest = hashlib.sha256(b"beta\x00alice").digest()
    h = int.from_bytes(digest[:8], "big")
    assert actor_hash("beta", "alice") == h
    assert bucket("beta", "alice") == h / 2**64 * 100


def test_threshold_is_exact_at_the_edges() -> None:
    assert threshold(0) == 0
    assert threshold(100) == 2**64
    assert threshold(50) == 2**63
    h = actor_hash("beta", "alice")
    p = h * 100 / 2**64  # about the actor's own bucket
    assert (h < threshold(p)) == (h * 100 < p * 2**64)


def test_percentage_membership_is_identical_in_two_fresh_processes() -> None:
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=True
        )
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    # ... and identical to this process (PYTHONHASHSEED differs in each child).
    assert outputs[0]["buckets"] == [bucket("beta", f"user-{i}") for i in range(50)]
    assert 500 < len(outputs[0]["in"]) < 1000


@given(
    actor=st.text(max_size=40),
    flag=st.sampled_from(["beta", "new_checkout", "x"]),
    p1=st.floats(0, 100),
    p2=st.floats(0, 100),
)
def test_raising_the_percentage_never_drops_an_actor(
    actor: str, flag: str, p1: float, p2: float
) -> None:
    low, high = sorted((p1, p2))
    with FeatureFlags([Flag(flag)]) as flags:
        flags.set_percentage(flag, low)
        was_in = flags.enabled(flag, actor=actor)
        flags.set_percentage(flag, high)
        assert not was_in or flags.enabled(flag, actor=actor)


def test_half_of_ten_thousand_actors_land_in_a_fifty_percent_rollout() -> None:
    with FeatureFlags([Flag("beta")]) as flags:
        flags.set_percentage("beta", 50)
        share = sum(flags.enabled("beta", actor=a) for a in ACTORS) / len(ACTORS)
    assert 0.45 <= share <= 0.55


def test_different_flags_select_different_actors() -> None:
    with FeatureFlags([Flag("a"), Flag("b")]) as flags:
        flags.set_percentage("a", 10)
        flags.set_percentage("b", 10)
        in_a = {x for x in ACTORS if flags.enabled("a", actor=x)}
        in_b = {x for x in ACTORS if flags.enabled("b", actor=x)}
    assert len(in_a & in_b) < len(in_a) / 2


def test_cached_hashes_give_the_same_answers_as_fresh_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("foundation.flags._flags.HASH_CACHE_SIZE", 64)  # force many refills
    with FeatureFlags([Flag("beta")]) as flags:
        flags.set_percentage("beta", 30)
        for _ in range(3):  # cold, then warm, then after refills
            answers = [flags.enabled("beta", actor=a) for a in ACTORS[:500]]
            assert answers == [bucket("beta", a) < 30 for a in ACTORS[:500]]
        flags.set_percentage("beta", 70)  # a new percentage reuses the cached hashes
        assert [flags.enabled("beta", actor=a) for a in ACTORS[:500]] == [
            actor_hash("beta", a) < threshold(70) for a in ACTORS[:500]
        ]
