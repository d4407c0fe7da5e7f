"""Backoff: doubling from ``initial``, the ``maximum`` cap, and the bounds of equal jitter."""

from __future__ import annotations

import pytest

from actors.runtime.backoff import Backoff, equal_jitter, no_jitter


def test_delays_double_from_initial() -> None:
    """Each retry waits twice as long as the one before, starting at ``initial``."""
    backoff = Backoff(initial=0.1, maximum=100.0, jitter=no_jitter)
    delays = [backoff.delay(attempt) for attempt in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_custom_multiplier() -> None:
    """``multiplier`` replaces the default factor of two."""
    backoff = Backoff(initial=1.0, maximum=100.0, multiplier=3.0, jitter=no_jitter)
    assert [backoff.delay(attempt) for attempt in (1, 2, 3)] == [1.0, 3.0, 9.0]


def test_delay_is_capped_at_maximum() -> None:
    """Once doubling passes ``maximum``, every delay is ``maximum``."""
    backoff = Backoff(initial=0.1, maximum=2.0, jitter=no_jitter)
    assert [backoff.delay(attempt) for attempt in (5, 6, 7, 20)] == [1.6, 2.0, 2.0, 2.0]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """An attempt number far past the cap still gives ``maximum``, not an OverflowError."""
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=no_jitter)
    assert backoff.delay(10_000) == 30.0


def test_default_jitter_stays_in_the_upper_half() -> None:
    """Equal jitter (the default) picks a delay between half the nominal one and all of it."""
    backoff = Backoff(initial=0.1, maximum=2.0)
    for attempt, nominal in [(1, 0.1), (3, 0.4), (5, 1.6), (9, 2.0)]:
        delays = [backoff.delay(attempt) for _ in range(500)]
        assert all(nominal / 2 <= delay <= nominal for delay in delays)
        # The jitter really spreads the delays (not always one end of the range).
        assert max(delays) - min(delays) > nominal / 4


def test_equal_jitter_bounds() -> None:
    """``equal_jitter(d)`` is never below ``d / 2`` nor above ``d``."""
    samples = [equal_jitter(8.0) for _ in range(1000)]
    assert min(samples) >= 4.0
    assert max(samples) <= 8.0


def test_no_jitter_is_identity() -> None:
    """``no_jitter`` returns the delay unchanged, for tests asserting exact times."""
    assert no_jitter(0.375) == 0.375
