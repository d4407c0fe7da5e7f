"""Steady POST traffic during a fault, and what each request met.

Synopsis::

    stop, outcomes = threading.Event(), []
    thread = threading.Thread(target=post_until, args=(app.http, stop, outcomes))
    ...                                                  # cut, stall or restart the broker
    stop.set(); thread.join()
    print(figures(o.seconds for o in outcomes if o.status == 201))
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs
import httpx

from .events import unique_user
from .services import ServiceHandle

__all__ = ["HealthSample", "Outcome", "figures", "post", "post_until", "watch_health"]


@attrs.frozen
class Outcome:
    """One POST /events/generate: when it started and ended, and what came back."""

    started: float
    ended: float
    status: int
    event_id: str | None
    retry_after: str | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def post(client: httpx.Client) -> Outcome:
    """POST one valid event; any status is returned, a transport error or timeout raises."""
    started = time.monotonic()
    response = client.post("/events/generate", json={"userId": unique_user(), "eventType": "LOGIN"})
    ended = time.monotonic()
    event_id = response.json()["eventId"] if response.status_code == 201 else None
    return Outcome(
        started, ended, response.status_code, event_id, response.headers.get("Retry-After")
    )


def post_until(client: httpx.Client, stop: threading.Event, outcomes: list[Outcome]) -> None:
    """POST one event after another until ``stop`` is set (list appends are thread-safe)."""
    while not stop.is_set():
        outcomes.append(post(client))


def figures(seconds: Iterable[float]) -> str:
    """Count, minimum, median and maximum of some durations, for a test's printout."""
    values = sorted(seconds)
    if not values:
        return "none"
    return (
        f"n={len(values)} min={values[0]:.3f} s median={statistics.median(values):.3f} s "
        f"max={values[-1]:.3f} s"
    )


@attrs.frozen
class HealthSample:
    """One GET /health: when, its status, and each actor's state and detail."""

    at: float
    status: int
    states: dict[str, str]
    details: dict[str, str]
    counters: dict[str, int]


def watch_health(app: ServiceHandle, stop: threading.Event, samples: list[HealthSample]) -> None:
    """Sample GET /health about every 50 ms until ``stop`` (list appends are thread-safe)."""
    with httpx.Client(base_url=app.base_url, timeout=2) as client:
        while not stop.is_set():
            response = client.get("/health")
            body: dict[str, Any] = response.json()
            samples.append(
                HealthSample(
                    time.monotonic(),
                    response.status_code,
                    {name: actor["state"] for name, actor in body["actors"].items()},
                    {name: actor.get("detail", "") for name, actor in body["actors"].items()},
                    body["counters"],
                )
            )
            time.sleep(0.05)  # paces the samples
