"""The store actor, driven through its inbox in a nursery, as the other actors drive it."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import trio
import trio.testing

from actors.events import Limits, UserEvent, decode_event, new_event
from actors.health import ActorState, Health
from actors.messages import Duplicate, ListEvents, Put, PutOutcome, StoreCommand, Stored
from actors.store import run_store


def make_event(user_id: str = "u1", **payload: object) -> UserEvent:
    return new_event(user_id=user_id, event_type="LOGIN", payload=payload)


@contextlib.asynccontextmanager
async def running_store(health: Health) -> AsyncIterator[trio.MemorySendChannel[StoreCommand]]:
    """Start the store in a nursery; leaving the block closes its inbox and waits for its end."""
    send, receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_store, inbox=receive, health=health))
        async with send:
            yield send


async def put(inbox: trio.MemorySendChannel[StoreCommand], event: UserEvent) -> PutOutcome:
    send, receive = trio.open_memory_channel[PutOutcome](1)
    await inbox.send(Put(event=event, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def list_events(inbox: trio.MemorySendChannel[StoreCommand]) -> tuple[bytes, ...]:
    send, receive = trio.open_memory_channel[tuple[bytes, ...]](1)
    await inbox.send(ListEvents(reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


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
    assert [decode_event(raw, Limits()) for raw in listed] == events


async def test_list_returns_canonical_bytes() -> None:
    """ListEvents answers with each event's canonical to_json bytes."""
    health = Health(("store",))
    event = make_event("ü", z=1, a=[1, {"b": None}])
    async with running_store(health) as inbox:
        assert await list_events(inbox) == ()
        await put(inbox, event)
        listed = await list_events(inbox)
    assert listed == (event.to_json(),)
    assert all(isinstance(raw, bytes) for raw in listed)


async def test_store_ends_when_inbox_closed_and_reports_stopped() -> None:
    """Closing the only send end ends run_store, which reports STOPPED."""
    health = Health(("store",))
    send, receive = trio.open_memory_channel[StoreCommand](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_store, inbox=receive, health=health))
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
    await run_store(inbox=receive, health=health)
    assert [outcomes.receive_nowait(), outcomes.receive_nowait()] == [Stored(), Duplicate()]
    assert health.state("store").value is ActorState.STOPPED


async def test_reply_to_a_caller_that_stopped_listening_does_not_crash() -> None:
    """A caller that closed its receive end gets no answer; the store keeps serving others."""
    health = Health(("store",))
    event = make_event()
    async with running_store(health) as inbox:
        gone_put, gone_put_receive = trio.open_memory_channel[PutOutcome](1)
        gone_list, gone_list_receive = trio.open_memory_channel[tuple[bytes, ...]](1)
        gone_put_receive.close()
        gone_list_receive.close()
        await inbox.send(Put(event=event, reply=gone_put))
        await inbox.send(ListEvents(reply=gone_list))
        await trio.testing.wait_all_tasks_blocked()
        assert health.state("store").value is ActorState.RUNNING
        assert await put(inbox, event) == Duplicate()
        assert await list_events(inbox) == (event.to_json(),)


async def test_reply_to_a_full_or_closed_reply_channel_does_not_crash() -> None:
    """A reply channel already full or closed by its sender does not block or crash the store."""
    health = Health(("store",))
    async with running_store(health) as inbox:
        full, full_receive = trio.open_memory_channel[PutOutcome](0)
        closed, _closed_receive = trio.open_memory_channel[tuple[bytes, ...]](1)
        closed.close()
        await inbox.send(Put(event=make_event("a"), reply=full))
        await inbox.send(ListEvents(reply=closed))
        assert len(await list_events(inbox)) == 1
        full_receive.close()
