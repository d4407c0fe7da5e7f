"""Exponential backoff with jitter, shared by publish retries and actor restarts.

Synopsis::

    backoff = Backoff(initial=0.1, maximum=2.0)
    backoff.delay(1)   # between 0.05 and 0.1
    backoff.delay(5)   # between 0.8 and 1.6
    Backoff(initial=0.1, maximum=2.0, jitter=no_jitter).delay(3)   # exactly 0.4
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

__all__ = ["Backoff", "equal_jitter", "no_jitter"]


def equal_jitter(delay: float) -> float:
    """Somewhere in the upper half of ``delay``: spreads retries while keeping a floor."""
    return random.uniform(delay / 2, delay)


def no_jitter(delay: float) -> float:
    """The delay itself; for tests that assert exact virtual times."""
    return delay


@attrs.frozen(kw_only=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum`` (seconds), then jittered."""

    initial: float
    maximum: float
    multiplier: float = 2.0
    jitter: Callable[[float], float] = equal_jitter

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1 for the first retry)."""
        exponent = min(attempt - 1, 64)  # past this the cap applies anyway; avoids overflow
        return self.jitter(min(self.maximum, self.initial * self.multiplier**exponent))
