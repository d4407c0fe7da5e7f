"""Driving the real store actor from tests of the actors that talk to it."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio

from actors.domain.messages import EventsPage, ReadEvents, StoreCommand
from actors.runtime.health import Health
from actors.store import run_store

#: Bounds far above anything a unit test stores.
UNBOUNDED = {"max_events": 1_000_000, "max_bytes": 1024**3}


def store_actor(
    inbox: trio.MemoryReceiveChannel[StoreCommand], health: Health, **bounds: int
) -> Callable[..., Awaitable[None]]:
    """``run_store`` ready for ``nursery.start``, unbounded unless ``bounds`` say otherwise."""
    return functools.partial(run_store, inbox=inbox, health=health, **(UNBOUNDED | bounds))


async def read_page(
    store: trio.MemorySendChannel[StoreCommand],
    start: int | None = None,
    end: int | None = None,
    *,
    max_bytes: int = 1024**3,
) -> EventsPage:
    send, receive = trio.open_memory_channel[EventsPage](1)
    await store.send(ReadEvents(start=start, end=end, max_bytes=max_bytes, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def list_all(store: trio.MemorySendChannel[StoreCommand]) -> tuple[bytes, ...]:
    """Every stored event, oldest first, read in one page."""
    page = await read_page(store)
    assert page.last, page
    return page.events
