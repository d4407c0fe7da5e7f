"""Bounded waiting: poll a condition until it holds, and fail naming what was awaited.

Synopsis::

    listing = wait_until(lambda: app.processed() or None, 10, what="a processed event")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout: float, *, what: str, interval: float = 0.05
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; bounded.

    Raises:
        AssertionError: naming ``what`` and the last value seen, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last {value!r}"
            )
        time.sleep(interval)
