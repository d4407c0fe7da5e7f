"""The store actor, driven through its inbox in a nursery, as the other actors drive it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from settings_support import default_limits
from store_support import UNBOUNDED, read_page, store_actor

from actors.domain.events import UserEvent, decode_event, new_event
from actors.domain.messages import (
    Duplicate,
    EventsPage,
    Put,
    PutMany,
    PutOutcome,
    ReadEvents,
    StoreCommand,
    Stored,
)
from actors.runtime.health import ActorState, Health
from actors.store import EVENT_OVERHEAD_BYTES, ProcessedEvents, index_key, run_store


def make_event(user_id: str = "u1", **payload: object) -> UserEvent:
    return new_event(user_id=user_id, event_type="LOGIN", payload=payload)


@contextlib.asynccontextmanager
async def running_store(
    health: Health, **bounds: int
) -> AsyncIterator[trio.MemorySendChannel[StoreCommand]]:
    """Start the store in a nursery; leaving the block closes its inbox and waits for its end."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, health, **bounds))
        async with send:
            yield send


async def put(inbox: trio.MemorySendChannel[StoreCommand], event: UserEvent) -> PutOutcome:
    send, receive = trio.open_memory_channel[PutOutcome](1)
    await inbox.send(Put(event=event, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def list_events(inbox: trio.MemorySendChannel[StoreCommand]) -> tuple[bytes, ...]:
    """Every stored event, paged through in small pages as the HTTP actor does."""
    page = await read_page(inbox, max_bytes=200)
    events = list(page.events)
    while not page.last:
        page = await read_page(inbox, page.next, page.end, max_bytes=200)
        events += page.events
    return tuple(events)


async def test_reports_running_once_started() -> None:
    """The store reports RUNNING by the time nursery.start returns."""
    health = Health(("store",))
    async with running_store(health):
        assert health.state("store").value is ActorState.RUNNING


async def test_same_event_id_twice_is_stored_then_duplicate() -> None:
    """Putting one eventId twice answers Stored, then Duplicate, and keeps one copy."""
    health = Health(("store",))
    event = make_event()
    async with running_store(health) as inbox:
        assert await put(inbox, event) == Stored()
        assert await put(inbox, event) == Duplicate()
        assert await list_events(inbox) == (event.to_json(),)


async def test_duplicate_is_by_event_id_only() -> None:
    """A different event with an already stored eventId is a Duplicate; the first one stays."""
    health = Health(("store",))
    first = make_event("alice")
    impostor = UserEvent(
        event_id=first.event_id,
        user_id="mallory",
        event_type="LOGOUT",
        timestamp=first.timestamp,
        payload={},
    )
    async with running_store(health) as inbox:
        assert await put(inbox, first) == Stored()
        assert await put(inbox, impostor) == Duplicate()
        assert await list_events(inbox) == (first.to_json(),)


async def test_outcomes_are_counted_in_health() -> None:
    """Stored and duplicate puts are counted in the Health counters."""
    health = Health(("store",))
    first, second = make_event("a"), make_event("b")
    async with running_store(health) as inbox:
        for event in (first, first, second, first):
            await put(inbox, event)
    assert health.counters == {"stored": 2, "duplicates": 2}
    assert health.snapshot()["counters"] == {"duplicates": 2, "stored": 2}
    assert health.snapshot()["gauges"] == {
        "store_bytes": len(first.to_json()) + len(second.to_json()) + 2 * EVENT_OVERHEAD_BYTES,
        "store_events": 2,
        "stream_subscribers": 0,
    }


async def test_listing_order_is_order_of_first_storage() -> None:
    """Events are listed oldest first; a duplicate does not move its event."""
    health = Health(("store",))
    events = [make_event(f"user-{n}", n=n) for n in range(5)]
    async with running_store(health) as inbox:
        for event in events:
            await put(inbox, event)
        await put(inbox, events[0])
        await put(inbox, events[2])
        listed = await list_events(inbox)
    assert [decode_event(raw, default_limits()) for raw in listed] == events


async def test_list_returns_canonical_bytes() -> None:
    """ReadEvents answers with each event's canonical to_json bytes."""
    health = Health(("store",))
    event = make_event("ü", z=1, a=[1, {"b": None}])
    async with running_store(health) as inbox:
        assert await list_events(inbox) == ()
        await put(inbox, event)
        listed = await list_events(inbox)
    assert listed == (event.to_json(),)
    assert all(isinstance(raw, bytes) for raw in listed)


async def test_the_store_keeps_the_events_own_bytes_without_encoding_again() -> None:
    """What is stored and listed is the very bytes object the event was made with."""
    health = Health(("store",))
    event = make_event("u1", a=1)
    async with running_store(health) as inbox:
        await put(inbox, event)
        [listed] = await list_events(inbox)
    assert listed is event.encoded


async def test_store_ends_when_inbox_closed_and_reports_stopped() -> None:
    """Closing the only send end ends run_store, which reports STOPPED."""
    health = Health(("store",))
    send, receive = trio.open_memory_channel[StoreCommand](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(receive, health))
        await send.aclose()
        with trio.fail_after(1):
            await health.state("store").wait_value(ActorState.STOPPED)
    assert health.snapshot()["actors"]["store"] == {"state": "stopped"}


async def test_queued_commands_are_applied_before_stopping() -> None:
    """Commands already in the inbox when it closes are still applied."""
    health = Health(("store",))
    send, receive = trio.open_memory_channel[StoreCommand](4)
    replies, outcomes = trio.open_memory_channel[PutOutcome](4)
    event = make_event()
    async with send:
        send.send_nowait(Put(event=event, reply=replies))
        send.send_nowait(Put(event=event, reply=replies))
    await run_store(inbox=receive, health=health, **UNBOUNDED)
    assert [outcomes.receive_nowait(), outcomes.receive_nowait()] == [Stored(), Duplicate()]
    assert health.state("store").value is ActorState.STOPPED


async def test_reply_to_a_caller_that_stopped_listening_does_not_crash() -> None:
    """A caller that closed its receive end gets no answer; the store keeps serving others."""
    health = Health(("store",))
    event = make_event()
    async with running_store(health) as inbox:
        gone_put, gone_put_receive = trio.open_memory_channel[PutOutcome](1)
        gone_list, gone_list_receive = trio.open_memory_channel[EventsPage](1)
        gone_put_receive.close()
        gone_list_receive.close()
        await inbox.send(Put(event=event, reply=gone_put))
        await inbox.send(ReadEvents(max_bytes=100, reply=gone_list))
        await trio.testing.wait_all_tasks_blocked()
        assert health.state("store").value is ActorState.RUNNING
        assert await put(inbox, event) == Duplicate()
        assert await list_events(inbox) == (event.to_json(),)


async def test_reply_to_a_full_or_closed_reply_channel_does_not_crash() -> None:
    """A reply channel already full or closed by its sender does not block or crash the store."""
    health = Health(("store",))
    async with running_store(health) as inbox:
        full, full_receive = trio.open_memory_channel[PutOutcome](0)
        closed, _closed_receive = trio.open_memory_channel[EventsPage](1)
        closed.close()
        await inbox.send(Put(event=make_event("a"), reply=full))
        await inbox.send(ReadEvents(max_bytes=100, reply=closed))
        assert len(await list_events(inbox)) == 1
        full_receive.close()


# --- bounds and eviction ---------------------------------------------------------------------


def filled(count: int, **bounds: int) -> tuple[ProcessedEvents, list[UserEvent]]:
    """A ProcessedEvents (unbounded unless told) after storing ``count`` new events."""
    events = ProcessedEvents(**(UNBOUNDED | bounds))
    stored = [make_event(f"user-{n}") for n in range(count)]
    for event in stored:
        assert events.put_if_absent(event.event_id, event.to_json()) == Stored()
    return events, stored


def held(events: ProcessedEvents) -> list[bytes]:
    return list(events.read(None, None, 1024**3).events)


def test_beyond_max_events_the_oldest_are_forgotten() -> None:
    """With max_events=3, five puts keep the newest three and count two evictions."""
    events, stored = filled(5, max_events=3)
    assert held(events) == [event.to_json() for event in stored[2:]]
    assert len(events) == 3
    assert events.evicted == 2


def test_beyond_max_bytes_the_oldest_are_forgotten() -> None:
    """max_bytes counts JSON plus the per-event overhead; the oldest go until it fits."""
    sample = make_event("user-0").to_json()
    cost = len(sample) + EVENT_OVERHEAD_BYTES
    events, stored = filled(10, max_bytes=cost * 4 + cost // 2)
    assert held(events) == [event.to_json() for event in stored[6:]]
    assert events.bytes == sum(len(e.to_json()) + EVENT_OVERHEAD_BYTES for e in stored[6:])
    assert events.bytes <= cost * 4 + cost // 2


def test_an_event_larger_than_max_bytes_is_still_kept_alone() -> None:
    """The newest event is always held, even when it alone is beyond max_bytes."""
    events, stored = filled(3, max_bytes=10)
    assert held(events) == [stored[-1].to_json()]


def test_idempotency_holds_for_held_events_and_not_for_evicted_ones() -> None:
    """A held eventId is a Duplicate; an evicted one is forgotten and stored again as new."""
    events, stored = filled(4, max_events=2)
    newest, evicted = stored[-1], stored[0]
    assert events.put_if_absent(newest.event_id, newest.to_json()) == Duplicate()
    assert events.put_if_absent(evicted.event_id, evicted.to_json()) == Stored()
    assert held(events) == [newest.to_json(), evicted.to_json()]


def test_compaction_keeps_order_and_positions() -> None:
    """After thousands of evictions (several compactions) paging still sees the newest events
    in order, at positions that keep counting up."""
    events, stored = filled(5000, max_events=700)
    page = events.read(None, None, 1024**3)
    assert page.events == tuple(event.to_json() for event in stored[-700:])
    assert (page.next, page.end) == (5000, 5000)
    assert events.read(4999, None, 1024**3).events == (stored[-1].to_json(),)


def test_pages_are_bounded_by_bytes_but_hold_at_least_one_event() -> None:
    """A page stops before max_bytes; a page smaller than one event still holds one."""
    events, stored = filled(10)
    size = len(stored[0].to_json())
    page = events.read(None, None, size * 3 + 3)
    assert page.events == tuple(event.to_json() for event in stored[:3])
    assert (page.next, page.end) == (3, 10)
    assert events.read(None, None, 1).events == (stored[0].to_json(),)


def test_a_listing_ends_where_it_began_and_skips_what_was_evicted_meanwhile() -> None:
    """Events stored after the first page are not part of the listing; events evicted while
    it runs are skipped, and the rest follow in order."""
    events, stored = filled(6, max_events=6)
    first = events.read(None, None, 1)
    assert first.events == (stored[0].to_json(),)
    assert first.end == 6
    later = [make_event(f"later-{n}") for n in range(3)]  # evicts stored[0:3]
    for event in later:
        events.put_if_absent(event.event_id, event.to_json())
    rest = events.read(first.next, first.end, 1024**3)
    assert rest.events == tuple(event.to_json() for event in stored[3:])
    assert rest.last


async def test_evictions_are_counted_logged_once_and_sizes_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store counts store_evicted, logs the first eviction once, and keeps its gauges."""
    health = Health(("store",))
    async with running_store(health, max_events=2) as inbox:
        for n in range(5):
            await put(inbox, make_event(f"user-{n}"))
        listed = await list_events(inbox)
    assert len(listed) == 2
    assert health.counters["store_evicted"] == 3
    assert health.gauges["store_events"] == 2
    full = [r for r in caplog.records if r.getMessage().startswith("store full")]
    assert len(full) == 1


async def test_put_many_answers_each_event_in_order_with_one_reply() -> None:
    """PutMany stores each new event, reports a repeat (earlier in the batch or already held)
    as Duplicate, answers once in order, and counts both in health."""
    health = Health(["store"])
    held, fresh = make_event("held"), make_event("fresh")
    async with running_store(health, **UNBOUNDED) as inbox:
        await put(inbox, held)
        send, receive = trio.open_memory_channel[tuple[PutOutcome, ...]](1)
        await inbox.send(
            PutMany(events=(fresh, held, fresh), sources=(None, None, None), reply=send)
        )
        with receive, trio.fail_after(1):
            outcomes = await receive.receive()
        listed = await list_events(inbox)
    assert outcomes == (Stored(), Duplicate(), Duplicate())
    assert listed == (held.encoded, fresh.encoded)
    assert health.counters["stored"] == 2
    assert health.counters["duplicates"] == 2
    assert health.gauges["store_events"] == 2


def _reference_key(event_id: str) -> bytes | str:
    """The index key by its definition: the UUID's bytes when ``str(uuid.UUID(x)) == x``."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        return event_id
    return parsed.bytes if str(parsed) == event_id else event_id


def _near_canonical(canonical: str) -> list[str]:
    """Spellings that uuid.UUID reads as the same UUID, or almost a UUID, but not canonical."""
    digits = canonical.replace("-", "")
    return [
        canonical.upper(),
        canonical[:9] + canonical[9].upper() + canonical[10:],
        "{" + canonical + "}",
        "urn:uuid:" + canonical,
        digits,
        digits[:8]
        + "-"
        + digits[8:13]
        + "-"
        + digits[13:16]
        + "-"
        + digits[16:20]
        + "-"
        + digits[20:],
        canonical[:35] + "-",
        canonical[:35] + " ",
        canonical[:14] + " " + canonical[15:],
        canonical[:14] + "\u0660" + canonical[15:],  # ARABIC-INDIC DIGIT ZERO: int() reads it
        canonical[:14] + "g" + canonical[15:],
        canonical[:-1],
        canonical + "0",
        canonical.replace("-", " "),
    ]


def test_the_index_key_is_the_uuid_bytes_exactly_for_canonical_event_ids() -> None:
    """Keys as 16 bytes for canonical UUIDs, the text for everything else: the definition, on
    random UUIDs, the edge values, and spellings one character away from canonical."""
    canonical = [str(uuid.uuid4()) for _ in range(200)]
    canonical += [
        str(uuid.UUID(int=0)),
        str(uuid.UUID(int=2**128 - 1)),
        "0" * 8 + "-1234-5678-9abc-" + "0" * 12,
    ]
    candidates = canonical + [
        near for one in canonical[:50] + canonical[-3:] for near in _near_canonical(one)
    ]
    candidates += ["", "x", "-" * 36, " " * 36]
    for event_id in candidates:
        assert index_key(event_id) == _reference_key(event_id), event_id
    assert all(isinstance(index_key(one), bytes) for one in canonical)
    assert len({index_key(one) for one in candidates}) == len(set(candidates))


@pytest.mark.parametrize("canonical", [True, False], ids=["id-in-encoding", "id-elsewhere"])
def test_eviction_forgets_exactly_the_evicted_event_ids(canonical: bool) -> None:
    """Whether or not an event's encoding carries its eventId where a canonical one does,
    eviction forgets the oldest ids and only those: they are stored again, the held ones are
    duplicates."""
    events = ProcessedEvents(max_events=3, max_bytes=1 << 20)
    made = [make_event(f"u{n}") for n in range(7)]
    ids = [event.event_id if canonical else f"id-{n}" for n, event in enumerate(made)]
    for event_id, event in zip(ids, made, strict=True):
        assert events.put_if_absent(event_id, event.to_json()) == Stored()
    assert [events.put_if_absent(i, b"{}") for i in ids[4:]] == [Duplicate()] * 3
    assert events.evicted == 4
    assert events.put_if_absent(ids[0], made[0].to_json()) == Stored()
    assert events.put_if_absent(ids[4], made[4].to_json()) == Stored()  # evicted by ids[0]
    assert events.put_if_absent(ids[6], b"{}") == Duplicate()
