"""The store actor: the only owner of the processed events.

Writes arrive one at a time through its inbox, so "check the eventId, then append" needs no lock:
serializing them is the actor's job. Events are kept as their canonical JSON bytes, so a listing
joins byte strings instead of re-encoding objects.

The store is bounded by a number of events and by bytes. When a write goes past either bound,
the oldest events are forgotten, whole: their JSON and their eventId. Idempotency holds for
every event still held; an evicted event that Kafka delivers again (only a replay after a
rebalance or restart can do that, and replays start at the last committed offset, i.e. at recent
events) is stored again as a new one. Evictions are counted (``store_evicted``) and the first
one is logged.

Listings page through the store by *position* (a number given to each event in storage order and
never reused) rather than taking a snapshot, so no listing ever holds a second copy of the store
and no single answer takes long::

    page = ReadEvents(max_bytes=65536, reply=...)          -> EventsPage(events, next, end)
    ReadEvents(start=page.next, end=page.end, ...)         -> the following page, until page.last
"""

from __future__ import annotations

import logging

import trio

from actors.domain.events import UserEvent
from actors.domain.messages import (
    Duplicate,
    EventsPage,
    Put,
    PutMany,
    PutOutcome,
    ReadEvents,
    StoreCommand,
    Stored,
    reply,
)
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields

__all__ = ["EVENT_OVERHEAD_BYTES", "ProcessedEvents", "run_store"]

log = logging.getLogger(__name__)

#: Memory one stored event costs beyond its JSON bytes, counted against ``max_bytes``: the
#: bytes object's header (33), its eventId string (85) and its slots in the id set and the two
#: lists (about 60), measured with tracemalloc on CPython 3.11.
EVENT_OVERHEAD_BYTES = 180

#: Evicted slots at the head of the lists are dropped in one go once there are this many (and
#: they are at least half of the lists), which keeps eviction O(1) amortised.
_COMPACT_AFTER = 1024


class ProcessedEvents:
    """Events in the order they were first stored, idempotent by eventId, bounded.

    Args:
        max_events: most events held; the oldest go first beyond it.
        max_bytes: most bytes held, counting each event's JSON plus
            :data:`EVENT_OVERHEAD_BYTES`; the oldest go first beyond it, but the newest event
            is always kept.
    """

    def __init__(self, *, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        # Parallel lists; indexes below _head are evicted slots awaiting compaction.
        self._encoded: list[bytes] = []
        self._event_ids: list[str] = []
        self._head = 0
        self._known: set[str] = set()
        # Position of the event at index _head.
        self._first_position = 0
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._encoded) - self._head

    @property
    def end(self) -> int:
        """The position the next stored event will get."""
        return self._first_position + len(self)

    def put_if_absent(self, event_id: str, encoded: bytes) -> PutOutcome:
        if event_id in self._known:
            return Duplicate()
        self._known.add(event_id)
        self._encoded.append(encoded)
        self._event_ids.append(event_id)
        self.bytes += len(encoded) + EVENT_OVERHEAD_BYTES
        self._evict_beyond_bounds()
        return Stored()

    def _evict_beyond_bounds(self) -> None:
        while len(self) > self.max_events or (self.bytes > self.max_bytes and len(self) > 1):
            self._known.discard(self._event_ids[self._head])
            self.bytes -= len(self._encoded[self._head]) + EVENT_OVERHEAD_BYTES
            self._head += 1
            self._first_position += 1
            self.evicted += 1
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._encoded):
            del self._encoded[: self._head]
            del self._event_ids[: self._head]
            self._head = 0

    def read(self, start: int | None, end: int | None, max_bytes: int) -> EventsPage:
        """Events from ``start`` (or the oldest) up to ``end`` (or the newest), at most
        ``max_bytes`` of JSON but at least one event when there is any."""
        end = self.end if end is None else min(end, self.end)
        position = self._first_position if start is None else max(start, self._first_position)
        index = self._head + position - self._first_position
        stop = self._head + end - self._first_position
        taken = index
        size = 0
        while taken < stop and (taken == index or size + len(self._encoded[taken]) <= max_bytes):
            size += len(self._encoded[taken]) + 1
            taken += 1
        return EventsPage(
            events=tuple(self._encoded[index:taken]),
            next=position + (taken - index),
            end=end,
        )


async def run_store(
    *,
    inbox: trio.MemoryReceiveChannel[StoreCommand],
    health: Health,
    max_events: int,
    max_bytes: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply store commands in arrival order until every sender has closed the inbox.

    Cancellation: safe at any await; a write is applied whole or not at all.
    """
    events = ProcessedEvents(max_events=max_events, max_bytes=max_bytes)
    health.report("store", ActorState.RUNNING)
    _report_size(health, events)
    task_status.started()
    async for command in inbox:
        match command:
            case Put(event=event, reply=channel):
                reply(channel, _put_all(health, events, (event,))[0])
            case PutMany(events=batch, reply=channel):
                reply(channel, _put_all(health, events, batch))
            case ReadEvents(start=start, end=end, max_bytes=page_bytes, reply=channel):
                reply(channel, events.read(start, end, page_bytes))
    health.report("store", ActorState.STOPPED)


def _put_all(
    health: Health, events: ProcessedEvents, batch: tuple[UserEvent, ...]
) -> tuple[PutOutcome, ...]:
    """Store each event unless its eventId is held; counters and gauges once per batch."""
    evicted_before = events.evicted
    outcomes = tuple(events.put_if_absent(event.event_id, event.encoded) for event in batch)
    stored = sum(1 for outcome in outcomes if isinstance(outcome, Stored))
    if stored:
        health.count("stored", stored)
    if stored != len(outcomes):
        health.count("duplicates", len(outcomes) - stored)
    if events.evicted != evicted_before:
        _count_evictions(health, events, events.evicted - evicted_before)
    _report_size(health, events)
    return outcomes


def _count_evictions(health: Health, events: ProcessedEvents, evicted: int) -> None:
    if events.evicted == evicted:
        log_fields(
            log,
            logging.WARNING,
            "store full; forgetting the oldest events",
            maxEvents=events.max_events,
            maxBytes=events.max_bytes,
        )
    health.count("store_evicted", evicted)


def _report_size(health: Health, events: ProcessedEvents) -> None:
    health.gauge("store_events", len(events))
    health.gauge("store_bytes", events.bytes)
