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

A read may also take at most ``limit`` events and only those an :class:`EventFilter` wants; a
filtered read looks at no more than :data:`SCAN_EVENTS` events, so every answer stays short
however the store is filled. ``GetEvent`` finds one event by its eventId through an index
(O(1)), with the partition and offset the consumer read it from.

Stream subscribers live here too: each ``Subscribe`` gets a bounded channel that the store fills
with ``send_nowait`` as events are stored. A subscriber that lets its channel fill up is dropped
(its end closed), so no subscriber can slow the store or, behind it, the consumer.
"""

from __future__ import annotations

import bisect
import logging
from array import array

import attrs
import trio

from actors.domain.events import EVENT_ID_BYTES, EventFilter, UserEvent
from actors.domain.messages import (
    Duplicate,
    EventNotFound,
    EventsPage,
    FoundEvent,
    GetEvent,
    Placed,
    Put,
    PutMany,
    PutOutcome,
    ReadEvents,
    StoreCommand,
    Stored,
    StreamedEvent,
    Subscribe,
    Subscribed,
    SubscribeOutcome,
    TooManySubscribers,
    reply,
)
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields

__all__ = [
    "EVENT_OVERHEAD_BYTES",
    "SCAN_EVENTS",
    "ProcessedEvents",
    "StreamOptions",
    "Subscribers",
    "index_key",
    "run_store",
]

log = logging.getLogger(__name__)

#: Memory one stored event costs beyond its JSON bytes, counted against ``max_bytes``: the
#: bytes object's header (33), its eventId as a 16-byte key (49), that key's entry in the index
#: with the position it maps to (about 90), its slot in the list and in the partition, offset
#: and end arrays (28): 204 at most, right after the index grew, measured with tracemalloc on
#: CPython 3.11 (tests/unit/test_store_queries.py measures it again).
EVENT_OVERHEAD_BYTES = 210

#: Most events one filtered read looks at: a filter that matches rarely still answers within
#: a bounded time (a few milliseconds), with a short page and where to go on.
SCAN_EVENTS = 16_384

#: Evicted slots at the head of the lists are dropped in one go once there are this many (and
#: they are at least half of the lists), which keeps eviction O(1) amortised.
_COMPACT_AFTER = 1024

_EVERYTHING = EventFilter()


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
        # Parallel sequences; indexes below _head are evicted slots awaiting compaction.
        self._encoded: list[bytes] = []
        self._partitions = array("i")
        self._offsets = array("q")
        # The bytes of every event ever stored up to and including this one, each with the
        # comma that follows it in a listing: where a page of at most max_bytes ends is one
        # bisection instead of a loop over its events.
        self._ends = array("q")
        self._written = 0
        # Eviction finds an event's key again from the eventId in its encoding (at
        # EVENT_ID_BYTES, where every canonical encoding has it); this holds the keys of events
        # whose encoding does not carry their eventId there.
        self._keys_elsewhere: dict[int, bytes | str] = {}
        self._head = 0
        # eventId (as index_key makes it) -> position: idempotency and lookup by id in one index.
        self._positions: dict[bytes | str, int] = {}
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

    def put_if_absent(
        self, event_id: str, encoded: bytes, source: Placed | None = None
    ) -> PutOutcome:
        key = index_key(event_id)
        if key in self._positions:
            return Duplicate()
        if encoded[EVENT_ID_BYTES] != event_id.encode():
            self._keys_elsewhere[self.end] = key
        self._positions[key] = self.end
        self._encoded.append(encoded)
        self._written += len(encoded) + 1
        self._ends.append(self._written)
        self._partitions.append(-1 if source is None else source.partition)
        self._offsets.append(-1 if source is None else source.offset)
        self.bytes += len(encoded) + EVENT_OVERHEAD_BYTES
        self._evict_beyond_bounds()
        return Stored()

    def get(self, event_id: str) -> FoundEvent | EventNotFound:
        """The event with this eventId, if it is held: one dictionary lookup."""
        position = self._positions.get(index_key(event_id))
        if position is None:
            return EventNotFound()
        index = self._index(position)
        return FoundEvent(
            encoded=self._encoded[index],
            position=position,
            partition=self._partitions[index],
            offset=self._offsets[index],
        )

    def _index(self, position: int) -> int:
        return self._head + position - self._first_position

    def _evict_beyond_bounds(self) -> None:
        while len(self) > self.max_events or (self.bytes > self.max_bytes and len(self) > 1):
            del self._positions[self._key_of_oldest()]
            self.bytes -= len(self._encoded[self._head]) + EVENT_OVERHEAD_BYTES
            self._head += 1
            self._first_position += 1
            self.evicted += 1
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._encoded):
            del self._encoded[: self._head]
            del self._partitions[: self._head]
            del self._offsets[: self._head]
            del self._ends[: self._head]
            self._head = 0

    def _key_of_oldest(self) -> bytes | str:
        key = self._keys_elsewhere.pop(self._first_position, None)
        if key is not None:
            return key
        return index_key(self._encoded[self._head][EVENT_ID_BYTES].decode())

    def read(
        self,
        start: int | None,
        end: int | None,
        max_bytes: int,
        limit: int | None = None,
        wanted: EventFilter = _EVERYTHING,
    ) -> EventsPage:
        """Events from ``start`` (or the oldest) up to ``end`` (or the newest), at most
        ``max_bytes`` of JSON but at least one event when there is any, at most ``limit``,
        only those ``wanted`` lets through."""
        end = self.end if end is None else min(end, self.end)
        position = self._first_position if start is None else max(start, self._first_position)
        if wanted.everything:
            return self._read_run(position, end, max_bytes, limit)
        return self._read_filtered(position, end, max_bytes, limit, wanted)

    def _read_run(self, position: int, end: int, max_bytes: int, limit: int | None) -> EventsPage:
        index = self._index(position)
        stop = self._index(end)
        if limit is not None:
            stop = min(stop, index + limit)
        taken = index
        if index < stop:
            # Events index..t-1 and their commas, plus event t, fit in max_bytes exactly when
            # _ends[t] <= the bytes before event index + max_bytes + 1; the first always fits.
            before = self._ends[index] - len(self._encoded[index]) - 1
            fitting = bisect.bisect_right(self._ends, before + max_bytes + 1, index, stop)
            taken = max(fitting, index + 1)
        following = position + (taken - index)
        return EventsPage(
            events=tuple(self._encoded[index:taken]),
            next=following,
            end=end,
            positions=range(position, following),
        )

    def _read_filtered(
        self, position: int, end: int, max_bytes: int, limit: int | None, wanted: EventFilter
    ) -> EventsPage:
        """A page of the wanted events; ``next`` is the next wanted one found, or where the
        bounded scan stopped."""
        index = self._index(position)
        stop = min(self._index(end), index + SCAN_EVENTS)
        events: list[bytes] = []
        positions: list[int] = []
        size = 0
        scanned = index
        while scanned < stop:
            encoded = self._encoded[scanned]
            if wanted.matches(encoded):
                full = limit is not None and len(events) >= limit
                if full or (events and size + len(encoded) > max_bytes):
                    break
                events.append(encoded)
                positions.append(position + scanned - index)
                size += len(encoded) + 1
            scanned += 1
        return EventsPage(
            events=tuple(events),
            next=position + scanned - index,
            end=end,
            positions=tuple(positions),
        )


def index_key(event_id: str) -> bytes | str:
    """How the index keys an eventId: a canonical UUID (``str(uuid.UUID(x)) == x``: lowercase
    hex, hyphens after digits 8, 12, 16 and 20) as its 16 bytes (49 B instead of the string's
    85), anything else as it is, so that no two eventIds share a key.

    # NOTE: read with bytes.fromhex rather than through uuid.UUID and back to text, which cost
    # as much as the rest of storing an event.
    """
    if (
        len(event_id) != 36
        or not event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-"
    ):
        return event_id
    digits = event_id.replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return event_id
    # 16 bytes: all 32 characters left were hex digits (fromhex skips whitespace); no capitals.
    canonical = len(raw) == 16 and event_id.lower() == event_id
    return raw if canonical else event_id


@attrs.frozen(kw_only=True)
class StreamOptions:
    """Bounds on stream subscribers: how many at once, and how far each may fall behind."""

    max_subscribers: int = 64
    buffer_events: int = 1000


@attrs.define
class _Subscriber:
    channel: trio.MemorySendChannel[StreamedEvent]
    wanted: EventFilter


class Subscribers:
    """The open stream subscriptions, fed without ever blocking.

    Args:
        options: how many subscriptions at once and how many events each may have unread.
        health: ``stream_subscribers`` gauge, ``stream_overflows`` counter.
    """

    def __init__(self, options: StreamOptions, health: Health) -> None:
        self._options = options
        self._health = health
        self._open: list[_Subscriber] = []
        self._report()

    def __len__(self) -> int:
        return len(self._open)

    def subscribe(self, wanted: EventFilter, live_from: int) -> SubscribeOutcome:
        self._drop_departed()
        if len(self._open) >= self._options.max_subscribers:
            return TooManySubscribers(limit=self._options.max_subscribers)
        send, receive = trio.open_memory_channel[StreamedEvent](self._options.buffer_events)
        self._open.append(_Subscriber(send, wanted))
        self._report()
        return Subscribed(events=receive, live_from=live_from)

    def publish(self, position: int, encoded: bytes) -> None:
        """Offer a newly stored event to every subscriber that wants it; drop the ones that
        are full (they resume with Last-Event-ID) or gone."""
        if not self._open:
            return
        item = StreamedEvent(position=position, encoded=encoded)
        kept = []
        for subscriber in self._open:
            if subscriber.wanted.matches(encoded):
                try:
                    subscriber.channel.send_nowait(item)
                except trio.WouldBlock:
                    subscriber.channel.close()
                    self._health.count("stream_overflows")
                    continue
                except trio.BrokenResourceError:
                    subscriber.channel.close()
                    continue
            kept.append(subscriber)
        if len(kept) != len(self._open):
            self._open = kept
            self._report()

    def close(self) -> None:
        for subscriber in self._open:
            subscriber.channel.close()
        self._open = []
        self._report()

    def _drop_departed(self) -> None:
        kept = [s for s in self._open if s.channel.statistics().open_receive_channels > 0]
        for subscriber in self._open:
            if subscriber not in kept:
                subscriber.channel.close()
        self._open = kept

    def _report(self) -> None:
        self._health.gauge("stream_subscribers", len(self._open))


async def run_store(
    *,
    inbox: trio.MemoryReceiveChannel[StoreCommand],
    health: Health,
    max_events: int,
    max_bytes: int,
    streams: StreamOptions = StreamOptions(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply store commands in arrival order until every sender has closed the inbox, then
    end every stream subscription.

    Cancellation: safe at any await; a write is applied whole or not at all.
    """
    events = ProcessedEvents(max_events=max_events, max_bytes=max_bytes)
    subscribers = Subscribers(streams, health)
    health.report("store", ActorState.RUNNING)
    _report_size(health, events)
    task_status.started()
    try:
        async for command in inbox:
            _apply(command, events, subscribers, health)
    finally:
        subscribers.close()
    health.report("store", ActorState.STOPPED)


def _apply(
    command: StoreCommand, events: ProcessedEvents, subscribers: Subscribers, health: Health
) -> None:
    match command:
        case Put(event=event, source=source, reply=channel):
            reply(channel, _put_all(events, subscribers, health, (event,), (source,))[0])
        case PutMany(events=batch, sources=sources, reply=channel):
            reply(channel, _put_all(events, subscribers, health, batch, sources))
        case ReadEvents(
            start=start, end=end, max_bytes=page_bytes, limit=limit, wanted=wanted, reply=channel
        ):
            reply(channel, events.read(start, end, page_bytes, limit, wanted))
        case GetEvent(event_id=event_id, reply=channel):
            reply(channel, events.get(event_id))
        case Subscribe(wanted=wanted, reply=channel):
            subscription = subscribers.subscribe(wanted, events.end)
            try:
                channel.send_nowait(subscription)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                if isinstance(subscription, Subscribed):
                    subscription.events.close()  # the caller gave up; the next prune drops it


def _put_all(
    events: ProcessedEvents,
    subscribers: Subscribers,
    health: Health,
    batch: tuple[UserEvent, ...],
    sources: tuple[Placed | None, ...],
) -> tuple[PutOutcome, ...]:
    """Store each event unless its eventId is held; counters and gauges once per batch."""
    evicted_before = events.evicted
    outcomes = []
    for event, source in zip(batch, sources, strict=True):
        position = events.end
        outcome = events.put_if_absent(event.event_id, event.encoded, source)
        outcomes.append(outcome)
        if isinstance(outcome, Stored):
            subscribers.publish(position, event.encoded)
    stored = sum(1 for outcome in outcomes if isinstance(outcome, Stored))
    if stored:
        health.count("stored", stored)
    if stored != len(outcomes):
        health.count("duplicates", len(outcomes) - stored)
    if events.evicted != evicted_before:
        _count_evictions(health, events, events.evicted - evicted_before)
    _report_size(health, events)
    return tuple(outcomes)


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
