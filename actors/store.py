"""The store actor: the only owner of the processed events.

Writes arrive one at a time through its inbox, so "check the eventId, then append" needs no lock:
serializing them is the actor's job. Events are kept as their canonical JSON bytes, so listing
a large store joins byte strings instead of re-encoding objects.
"""

from __future__ import annotations

import trio

from actors.health import ActorState, Health
from actors.messages import Duplicate, ListEvents, Put, PutOutcome, StoreCommand, Stored, reply

__all__ = ["ProcessedEvents", "run_store"]


class ProcessedEvents:
    """Events in the order they were first stored, idempotent by eventId."""

    def __init__(self) -> None:
        self._encoded: list[bytes] = []
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._encoded)

    def put_if_absent(self, event_id: str, encoded: bytes) -> PutOutcome:
        if event_id in self._ids:
            return Duplicate()
        self._ids.add(event_id)
        self._encoded.append(encoded)
        return Stored()

    def snapshot(self) -> tuple[bytes, ...]:
        return tuple(self._encoded)


async def run_store(
    *,
    inbox: trio.MemoryReceiveChannel[StoreCommand],
    health: Health,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply store commands in arrival order until every sender has closed the inbox.

    Cancellation: safe at any await; a write is applied whole or not at all.
    """
    events = ProcessedEvents()
    health.report("store", ActorState.RUNNING)
    task_status.started()
    async for command in inbox:
        match command:
            case Put(event=event, reply=channel):
                outcome = events.put_if_absent(event.event_id, event.to_json())
                health.count("stored" if isinstance(outcome, Stored) else "duplicates")
                reply(channel, outcome)
            case ListEvents(reply=channel):
                reply(channel, events.snapshot())
    health.report("store", ActorState.STOPPED)
