"""The library's one retry policy for background work: full-jitter exponential backoff.

Used by every loop that retries against a backend (the Redis lease and tail
threads, the Redis flag store's listener, a supervisor's registration retries
in degraded mode), so all of them back off the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

__all__ = ["RetryBackoff"]


class RetryBackoff:
    """Full-jitter exponential backoff: the n-th :meth:`next` is uniform in
    ``[0, min(cap, base * 2**n)]``; :meth:`reset` after a success.

    >>> b = RetryBackoff(base=0.05, cap=2.0)
    >>> all(0 <= b.next() <= 2.0 for _ in range(20))
    True
    """

    __slots__ = ("_attempt", "_rng", "base", "cap")

    def __init__(self, base: float = 0.05, cap: float = 2.0, *, rng: random.Random | None = None):
        if not 0 < base <= cap:
            raise ValueError("RetryBackoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._attempt = 0
        if rng is None:
            import random  # here, not at the top: keeps `import foundation` cheap

            rng = random.Random()
        self._rng = rng

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.base * 2.0 ** min(self._attempt, 32))

    def next(self) -> float:
        """The next delay in seconds (and count one more failure)."""
        delay = float(self._rng.uniform(0.0, self.ceiling()))
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``base`` (after a success)."""
        self._attempt = 0
