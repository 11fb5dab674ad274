"""The rollout hash: which actors a percentage lets in.

The formula, reproducible in any language::

    h = first 8 bytes of SHA-256(utf8(flag) + b"\\x00" + utf8(actor)), as a big-endian
        unsigned 64-bit integer
    the actor is in a rollout of p percent  <=>  h * 100 < p * 2**64   (exact arithmetic)
    bucket(flag, actor) = h / 2**64 * 100      (a float in [0, 100), for display)

``utf8`` is UTF-8 with lone surrogates passed through (Python's
``"surrogatepass"``): a valid string encodes exactly as plain UTF-8, so this
changes no bucket, and an actor that is not valid Unicode (``"\\ud800"``, say,
from a decoded-with-errors header) still gets a stable bucket instead of an
error. It depends on nothing but the two strings, so every process and machine agrees,
and it is monotonic in p: raising p only ever adds actors. The flag name is part
of the input so that two flags at 10% do not select the same 10% of actors.

Typed flags split actors across variants by weighted rendezvous hashing::

    for each variant v with share w_v > 0 (percent):
        h_v = first 8 bytes of SHA-256(utf8(flag) + b"\\x00" + utf8(v) + b"\\x00" + utf8(actor)),
              as a big-endian unsigned 64-bit integer
        u_v = (float64(h_v) + 0.5) / 2**64            (IEEE double arithmetic, in (0, 1])
        score_v = -ln(u_v) / w_v
    the actor gets the variant with the lowest score (a tie: the one declared first)

Each score is an exponential variable of rate w_v, so variant v gets w_v / 100
of actors; it is stable (only the three strings matter) and monotonic: raising
v's share while no other share rises (others lowered or unchanged) only lowers
v's score and raises or keeps the others', so it never moves an actor out of v.
Raising two shares at once promises nothing (an actor may move from v to w).
See ``split_variant``.

Example:
    >>> round(bucket("new_checkout", "user-42"), 6)
    42.380763
    >>> in_rollout = threshold(42.4)
    >>> actor_hash("new_checkout", "user-42") < in_rollout
    True
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from typing import Any


def _sha256_without_openssl() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (the same digests as ``hashlib``'s).

    ``import hashlib`` loads OpenSSL, about 4 ms of every ``import foundation``;
    for inputs this short the built-in module is no slower. Its name changed
    in 3.12; ``hashlib`` is the fallback.
    """
    for name in ("_sha2", "_sha256"):  # Python >= 3.12, Python 3.11
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except ImportError:
            continue
    from hashlib import sha256  # pragma: no cover - a Python built without them

    return sha256  # pragma: no cover


sha256 = _sha256_without_openssl()
"""``sha256(data)``: a hash object with ``digest()`` and ``hexdigest()``."""

__all__ = [
    "HASH_SPACE",
    "actor_hash",
    "bucket",
    "hash_input",
    "sha256",
    "split_exponent",
    "split_variant",
    "threshold",
]

HASH_SPACE = 1 << 64


def hash_input(prefix: str, actor: str) -> bytes:
    """The bytes hashed for ``prefix`` (``flag + "\\0"``) and ``actor``: UTF-8, surrogates passed.

    >>> hash_input("f\\0", "é"), hash_input("f\\0", "\\ud800")
    (b'f\\x00\\xc3\\xa9', b'f\\x00\\xed\\xa0\\x80')
    """
    return (prefix + actor).encode("utf-8", "surrogatepass")


def actor_hash(flag: str, actor: str) -> int:
    """The 64-bit rollout hash ``h`` of (flag, actor) (see the module docs)."""
    return int.from_bytes(sha256(hash_input(f"{flag}\0", actor)).digest()[:8], "big")


def bucket(flag: str, actor: str | int) -> float:
    """Where ``actor`` falls for ``flag``, in [0, 100); the actor is in a p% rollout iff below p.

    The float is for display; membership is decided exactly by ``h * 100 < p * 2**64``.

    Example:
        >>> 0 <= bucket("beta", "alice") < 100
        True
    """
    from foundation.errors import InvalidFlagValue, bounded_repr

    if not isinstance(flag, str):
        raise InvalidFlagValue(f"a flag name is a str, not {bounded_repr(flag)}")
    if not isinstance(actor, str):
        # The actors of FeatureFlags.enabled: a str, or an int normalised with str().
        if isinstance(actor, bool) or not isinstance(actor, int) or not -(2**63) <= actor < 2**63:
            raise InvalidFlagValue(
                f"an actor must be a str or an int (64-bit), not {bounded_repr(actor)}"
            )
        actor = str(int(actor))
    return actor_hash(flag, actor) / HASH_SPACE * 100


def threshold(percentage: float) -> int:
    """The integer T with ``h < T  <=>  h * 100 < percentage * 2**64`` for every integer h."""
    from fractions import Fraction

    exact = Fraction(percentage) * HASH_SPACE / 100
    # h < x  <=>  h < ceil(x) for an integer h, so the comparison stays exact.
    return -((-exact.numerator) // exact.denominator)


def split_exponent(flag: str, variant: str, actor: str) -> float:
    """``-ln(u)`` for (flag, variant, actor) in the split formula (see the module docs).

    The score of the variant is this divided by its share; it depends only on the
    three strings, so it may be cached.

    >>> h = int.from_bytes(sha256(b"color\\0red\\0user-1").digest()[:8], "big")
    >>> split_exponent("color", "red", "user-1") == -math.log((h + 0.5) / 2**64)
    True
    """
    h = int.from_bytes(sha256(hash_input(f"{flag}\0{variant}\0", actor)).digest()[:8], "big")
    # int + float converts h to the nearest double first: float64(h) + 0.5, as documented.
    return -math.log((h + 0.5) / HASH_SPACE)


def split_variant(flag: str, shares: Iterable[tuple[str, float]], actor: str) -> str | None:
    """The variant a split gives ``actor``: ``shares`` are (variant, percent) in declaration
    order; variants with a share of 0 never win. None when no share is positive.

    Example:
        >>> split_variant("color", [("red", 100.0), ("blue", 0.0)], "user-1")
        'red'
        >>> split_variant("color", [("red", 50.0), ("blue", 50.0)], "user-1") in ("red", "blue")
        True
    """
    best: str | None = None
    best_score = math.inf
    for variant, share in shares:
        if share > 0:
            score = split_exponent(flag, variant, actor) / share
            if score < best_score:  # strict: a tie keeps the variant declared first
                best, best_score = variant, score
    return best
