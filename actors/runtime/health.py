"""Observable health of the actors, shared read-only with the HTTP actor.

Each actor reports its own state here; nothing else writes to its entry. The HTTP actor reads a
snapshot for ``GET /health``. States are :class:`trio_util.AsyncValue` so tests and the
supervisor can wait for a transition instead of polling::

    health = Health(("store", "consumer"))
    health.report("consumer", ActorState.RUNNING)
    await health.state("consumer").wait_value(ActorState.RUNNING)
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from typing import Any

from trio_util import AsyncValue

__all__ = ["ActorState", "Health"]


class ActorState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    #: Given up on by its supervisor: the service is ending (``GET /health/live`` fails).
    FAILED = "failed"


class Health:
    """Per-actor state, a short reason, monotonically increasing counters, and gauges (values
    that go up and down, such as how many events the store holds)."""

    def __init__(self, actors: Iterable[str]) -> None:
        self._states = {name: AsyncValue(ActorState.STARTING) for name in actors}
        self._details: dict[str, str] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.gauges: dict[str, int] = {}

    def state(self, actor: str) -> AsyncValue[ActorState]:
        return self._states[actor]

    def report(self, actor: str, state: ActorState, detail: str = "") -> None:
        """Record ``actor``'s state; ``detail`` says why it is not running, when it is not."""
        self._states[actor].value = state
        if detail:
            self._details[actor] = detail
        else:
            self._details.pop(actor, None)

    def detail(self, actor: str) -> str:
        """Why ``actor`` is not running ("" when it is, or when it gave no reason)."""
        return self._details.get(actor, "")

    def count(self, counter: str, amount: int = 1) -> None:
        self.counters[counter] += amount

    def gauge(self, name: str, value: int) -> None:
        self.gauges[name] = value

    def states(self) -> dict[str, ActorState]:
        return {name: value.value for name, value in self._states.items()}

    @property
    def live(self) -> bool:
        """No actor is being given up on (the process may be starting, degraded or stopping)."""
        return all(value.value is not ActorState.FAILED for value in self._states.values())

    @property
    def healthy(self) -> bool:
        return all(value.value is ActorState.RUNNING for value in self._states.values())

    def snapshot(self) -> dict[str, Any]:
        actors: dict[str, Any] = {}
        for name, value in self._states.items():
            actors[name] = {"state": value.value.value}
            if name in self._details:
                actors[name]["detail"] = self._details[name]
        return {
            "status": "ok" if self.healthy else "degraded",
            "actors": actors,
            "counters": dict(sorted(self.counters.items())),
            "gauges": dict(sorted(self.gauges.items())),
        }
