"""The store's lookups, filtered pages and stream subscribers, and what a stored event costs."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
import uuid

import pytest
import trio
import trio.testing
from store_support import UNBOUNDED, store_actor

from actors.domain.events import EventFilter, UserEvent, new_event
from actors.domain.messages import (
    EventNotFound,
    FoundEvent,
    GetEvent,
    Placed,
    Put,
    PutOutcome,
    StoreCommand,
    StreamedEvent,
    Subscribe,
    Subscribed,
    SubscribeOutcome,
    TooManySubscribers,
)
from actors.runtime.health import Health
from actors.store import EVENT_OVERHEAD_BYTES, SCAN_EVENTS, ProcessedEvents, StreamOptions


def make_event(user_id: str, event_type: str = "LOGIN", **payload: object) -> UserEvent:
    return new_event(user_id=user_id, event_type=event_type, payload=payload)


def store_of(events: list[UserEvent], **bounds: int) -> ProcessedEvents:
    store = ProcessedEvents(**(UNBOUNDED | bounds))
    for offset, event in enumerate(events):
        store.put_if_absent(event.event_id, event.encoded, Placed(partition=2, offset=offset))
    return store


# --- lookup by eventId -----------------------------------------------------------------------


def test_get_finds_a_held_event_with_its_partition_offset_and_position() -> None:
    """A held event is found by id with the partition and offset it was read from."""
    events = [make_event(f"u{n}") for n in range(5)]
    store = store_of(events)
    assert store.get(events[3].event_id) == FoundEvent(
        encoded=events[3].encoded, position=3, partition=2, offset=3
    )


def test_get_of_an_unknown_or_evicted_event_is_not_found() -> None:
    """An id never stored, and one evicted, are both EventNotFound."""
    events = [make_event(f"u{n}") for n in range(5)]
    store = store_of(events, max_events=2)
    assert store.get(str(uuid.uuid4())) == EventNotFound()
    assert store.get(events[0].event_id) == EventNotFound()
    assert store.get(events[4].event_id) == FoundEvent(
        encoded=events[4].encoded, position=4, partition=2, offset=4
    )


def test_get_after_compaction_still_points_at_the_right_event() -> None:
    """Positions survive compactions of the lists: the index still finds each event."""
    events = [make_event(f"u{n}") for n in range(3000)]
    store = store_of(events, max_events=500)
    found = store.get(events[2800].event_id)
    assert isinstance(found, FoundEvent)
    assert (found.encoded, found.position, found.offset) == (events[2800].encoded, 2800, 2800)


def test_an_event_put_without_a_source_has_minus_one_partition_and_offset() -> None:
    """Where the source is unknown, partition and offset say so with -1."""
    event = make_event("u")
    store = ProcessedEvents(**UNBOUNDED)
    store.put_if_absent(event.event_id, event.encoded)
    assert store.get(event.event_id) == FoundEvent(
        encoded=event.encoded, position=0, partition=-1, offset=-1
    )


# --- pages with limits and filters -----------------------------------------------------------


def test_a_limited_page_holds_limit_events_and_says_where_the_next_starts() -> None:
    """limit=3 from position 2 gives events 2..4 with their positions; next is 5."""
    events = [make_event(f"u{n}") for n in range(10)]
    page = store_of(events).read(2, None, 1024**3, limit=3)
    assert page.events == tuple(event.encoded for event in events[2:5])
    assert tuple(page.positions) == (2, 3, 4)
    assert (page.next, page.end, page.last) == (5, 10, False)


def test_a_cursor_into_evicted_events_starts_at_the_oldest_held() -> None:
    """A start that was evicted meanwhile begins at the oldest event still held."""
    events = [make_event(f"u{n}") for n in range(10)]
    page = store_of(events, max_events=4).read(1, None, 1024**3, limit=2)
    assert tuple(page.positions) == (6, 7)
    assert page.events == (events[6].encoded, events[7].encoded)


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (EventFilter(user_id="alice"), [0, 2, 4]),
        (EventFilter(event_type="LOGOUT"), [1, 2]),
        (EventFilter(user_id="alice", event_type="LOGOUT"), [2]),
        (EventFilter(user_id="nobody"), []),
    ],
    ids=["user", "type", "both", "none"],
)
def test_filtered_pages_hold_only_the_wanted_events(
    wanted: EventFilter, expected: list[int]
) -> None:
    """userId and eventType filters select exactly the matching events, in store order."""
    events = [
        make_event("alice", "LOGIN"),
        make_event("bob", "LOGOUT"),
        make_event("alice", "LOGOUT"),
        make_event("alicia", "LOGIN"),
        make_event("alice", "PRODUCT_VIEW"),
    ]
    page = store_of(events).read(None, None, 1024**3, wanted=wanted)
    assert tuple(page.positions) == tuple(expected)
    assert page.events == tuple(events[n].encoded for n in expected)
    assert page.last


def test_filters_are_not_fooled_by_look_alike_user_ids_or_payloads() -> None:
    """A userId or payload that spells out another field's JSON does not match as that field."""
    tricky = make_event(
        'x","userId":"alice',
        "LOGIN",
        eventType="LOGOUT",
        note=',"eventType":"LOGOUT",',
    )
    impostor = make_event('bob,"eventType":"LOGOUT",', "LOGIN")
    store = store_of([tricky, impostor])
    everything = 1024**3
    assert store.read(None, None, everything, wanted=EventFilter(user_id="alice")).events == ()
    assert store.read(None, None, everything, wanted=EventFilter(event_type="LOGOUT")).events == ()
    by_user = EventFilter(user_id='bob,"eventType":"LOGOUT",', event_type="LOGIN")
    assert store.read(None, None, everything, wanted=by_user).events == (impostor.encoded,)


def test_a_filtered_limited_page_points_next_at_the_next_match() -> None:
    """After limit matches, next is the position of the following match, not just past the
    last one returned."""
    events = [make_event("a"), make_event("b"), make_event("a"), make_event("b"), make_event("a")]
    page = store_of(events).read(None, None, 1024**3, limit=1, wanted=EventFilter(user_id="a"))
    assert tuple(page.positions) == (0,)
    assert page.next == 2
    second = store_of(events).read(page.next, None, 1024**3, limit=5, wanted=EventFilter("a"))
    assert tuple(second.positions) == (2, 4)
    assert second.last


def test_a_filtered_read_looks_at_a_bounded_number_of_events() -> None:
    """A filter that matches nothing stops after SCAN_EVENTS events with an empty page whose
    next says where to go on, so one read never walks the whole store."""
    events = [make_event("other") for _ in range(SCAN_EVENTS + 10)]
    store = store_of(events)
    page = store.read(None, None, 1024**3, limit=10, wanted=EventFilter(user_id="nobody"))
    assert page.events == ()
    assert (page.next, page.last) == (SCAN_EVENTS, False)
    rest = store.read(page.next, page.end, 1024**3, limit=10, wanted=EventFilter("nobody"))
    assert rest.events == ()
    assert rest.last


def test_filtered_pages_are_bounded_by_bytes_too() -> None:
    """A filtered page stops before max_bytes, and next is the match it left out."""
    events = [make_event("a"), make_event("b"), make_event("a"), make_event("a")]
    size = len(events[0].encoded)
    page = store_of(events).read(None, None, size * 2 + 2, wanted=EventFilter(user_id="a"))
    assert tuple(page.positions) == (0, 2)
    assert page.next == 3


# --- the memory a stored event costs ---------------------------------------------------------


def test_event_overhead_bytes_covers_what_an_event_really_costs() -> None:
    """tracemalloc: storing 21,900 events (just after the eventId index grew, its worst
    moment) costs at most EVENT_OVERHEAD_BYTES per event beyond the JSON bytes."""
    count = 21_900
    template = make_event("user-1", n=1)
    sources = []
    for n in range(count):
        event_id = str(uuid.uuid4())  # in its encoding, as in every event the consumer stores
        encoded = template.encoded.replace(template.event_id.encode(), event_id.encode())
        sources.append((event_id, encoded[:-3] + str(n).encode() + b"}}"))
    gc.collect()
    tracemalloc.start()
    try:
        store = ProcessedEvents(**UNBOUNDED)
        before = tracemalloc.get_traced_memory()[0]
        for offset, (event_id, encoded) in enumerate(sources):
            # Copies made under tracing, as the consumer makes each event's id and bytes.
            store.put_if_absent(
                "".join(event_id), bytes(bytearray(encoded)), Placed(partition=1, offset=offset)
            )
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    overhead = (grown - sum(len(encoded) for _, encoded in sources)) / count
    print(f"measured {overhead:.1f} B per event beyond its JSON")
    assert len(store) == count
    assert 150 < overhead <= EVENT_OVERHEAD_BYTES


# --- stream subscribers ----------------------------------------------------------------------


async def subscribe(
    inbox: trio.MemorySendChannel[StoreCommand], wanted: EventFilter | None = None
) -> SubscribeOutcome:
    send, receive = trio.open_memory_channel[SubscribeOutcome](1)
    await inbox.send(Subscribe(wanted=wanted or EventFilter(), reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def put(inbox: trio.MemorySendChannel[StoreCommand], event: UserEvent) -> PutOutcome:
    send, receive = trio.open_memory_channel[PutOutcome](1)
    await inbox.send(Put(event=event, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def get(
    inbox: trio.MemorySendChannel[StoreCommand], event_id: str
) -> FoundEvent | EventNotFound:
    send, receive = trio.open_memory_channel[FoundEvent | EventNotFound](1)
    await inbox.send(GetEvent(event_id=event_id, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


def drain(events: trio.MemoryReceiveChannel[StreamedEvent]) -> list[StreamedEvent]:
    received = []
    while True:
        try:
            received.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return received


async def test_store_actor_answers_get_event_through_its_inbox() -> None:
    """GetEvent through the inbox finds a stored event and not an unknown one."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    event = make_event("u")
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, Health(("store",))))
        async with send:
            await put(send, event)
            found = await get(send, event.event_id)
            missing = await get(send, str(uuid.uuid4()))
    assert isinstance(found, FoundEvent)
    assert found.encoded == event.encoded
    assert missing == EventNotFound()


async def test_subscribers_get_each_new_wanted_event_once_with_its_position() -> None:
    """A subscriber receives events stored after it subscribed, filtered, with positions."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    health = Health(("store",))
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, health))
        async with send:
            await put(send, make_event("before"))
            everything = await subscribe(send)
            alice = await subscribe(send, EventFilter(user_id="alice"))
            assert isinstance(everything, Subscribed)
            assert isinstance(alice, Subscribed)
            assert (everything.live_from, health.gauges["stream_subscribers"]) == (1, 2)
            new = [make_event("alice"), make_event("bob"), make_event("alice")]
            for event in [*new, new[0]]:  # the last is a duplicate: not streamed again
                await put(send, event)
            assert drain(everything.events) == [
                StreamedEvent(position=n + 1, encoded=event.encoded) for n, event in enumerate(new)
            ]
            assert [item.position for item in drain(alice.events)] == [1, 3]


async def test_a_subscriber_that_falls_behind_is_dropped_without_slowing_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a buffer of 3, a subscriber that reads nothing keeps 3 events and is then closed
    and counted; the store goes on storing in zero virtual time."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    health = Health(("store",))
    streams = StreamOptions(max_subscribers=4, buffer_events=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, health, streams=streams))
        async with send:
            stuck = await subscribe(send)
            assert isinstance(stuck, Subscribed)
            started = trio.current_time()
            events = [make_event(f"u{n}") for n in range(10)]
            for event in events:
                await put(send, event)
            assert trio.current_time() == started
            received = []
            async for item in stuck.events:  # ends: the store closed its end
                received.append(item.encoded)
    assert received == [event.encoded for event in events[:3]]
    assert health.counters["stream_overflows"] == 1
    assert health.gauges["stream_subscribers"] == 0


async def test_subscriptions_beyond_the_limit_are_refused_until_one_leaves() -> None:
    """max_subscribers=2: a third gets TooManySubscribers; once one closes its end, a new one
    is accepted."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    streams = StreamOptions(max_subscribers=2, buffer_events=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, Health(("store",)), streams=streams))
        async with send:
            first, second = await subscribe(send), await subscribe(send)
            assert await subscribe(send) == TooManySubscribers(limit=2)
            assert isinstance(first, Subscribed)
            assert isinstance(second, Subscribed)
            await first.events.aclose()
            assert isinstance(await subscribe(send), Subscribed)


async def test_closing_the_store_ends_every_subscription() -> None:
    """When the inbox closes, each subscriber's channel ends after what was already sent."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, Health(("store",))))
        async with send:
            subscription = await subscribe(send)
            await put(send, make_event("u"))
        assert isinstance(subscription, Subscribed)
        with trio.fail_after(1):
            items = [item async for item in subscription.events]
    assert [item.position for item in items] == [0]


#: Run in a fresh interpreter: stores 100,000 events decoded as the consumer decodes them
#: (transient dicts and strings included) and prints the RSS growth per event and their JSON.
_RSS_PROBE = """
import uuid
from pathlib import Path
from actors.domain.events import decode_event, new_event
from actors.domain.messages import Placed
from actors.runtime.settings import load_settings
from actors.store import ProcessedEvents

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

limits = load_settings({}).limits.limits()
templates = [
    new_event(user_id=f"user-{n % 50}", event_type="LOGIN", payload={"n": n}).encoded
    for n in range(1000)
]
store = ProcessedEvents(max_events=10**9, max_bytes=10**12)
before, json_bytes = rss(), 0
for n in range(100_000):
    raw = templates[n % 1000].replace(templates[n % 1000][12:48], str(uuid.uuid4()).encode())
    event = decode_event(raw, limits)
    store.put_if_absent(event.event_id, event.encoded, Placed(partition=n % 3, offset=n))
    json_bytes += len(event.encoded)
print((rss() - before) / 100_000, json_bytes / 100_000)
"""


def test_rss_per_stored_event_stays_within_400_bytes() -> None:
    """In a fresh process, 100,000 stored events of about 150 B of JSON grow the resident set
    by at most 400 B each, JSON, index, allocator slack and all."""
    probe = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    per_event, json_bytes = map(float, probe.stdout.split())
    print(f"RSS {per_event:.0f} B per stored event, {json_bytes:.0f} B of it JSON")
    assert 120 < json_bytes < 200
    assert per_event <= 400
