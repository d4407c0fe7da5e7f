"""``GET /events/stream``: newly stored events as Server-Sent Events.

Each event is one message, ``id:`` its store position and ``data:`` its JSON. A client that
reconnects with ``Last-Event-ID`` gets every held event after that position, then the live
ones, without a gap or a repeat: the subscription is opened first (the store answers with the
position its live part starts at), and the events before that position are read page by page
from the store, while the live ones wait in the subscription's bounded buffer.

The store drops a subscriber whose buffer is full; the stream then ends after what the buffer
held, and the client resumes with ``Last-Event-ID``. While no event comes, a comment line is
sent every ``keep_alive`` seconds, so proxies and clients see the connection alive. Shutdown
ends every stream at once (``stopping``), without waiting for the graceful deadline.

Synopsis::

    body = sse_body(store, subscription, first_page, stopping, keep_alive=15)
    Response(body, mimetype="text/event-stream")
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable

import trio
from trio_util import move_on_when

from actors.domain.events import EventFilter
from actors.domain.messages import EventsPage, StreamedEvent, Subscribed

__all__ = ["KEEP_ALIVE", "KEEP_ALIVE_SECONDS", "sse_body", "sse_message"]

#: Seconds between keep-alive comments while no event arrives.
KEEP_ALIVE_SECONDS = 15.0

#: The keep-alive comment (SSE ignores lines that start with a colon).
KEEP_ALIVE = b": keep-alive\n\n"

#: The first bytes of every stream: the client's reconnection delay, in milliseconds.
_OPENING = b"retry: 1000\n\n"

#: Reads one page of the store: ``(start, end, wanted)`` -> page.
PageReader = Callable[[int, int, EventFilter], Awaitable[EventsPage]]


def sse_message(position: int, encoded: bytes) -> bytes:
    """One SSE message; the compact JSON of an event holds no line break."""
    return b"id: %d\ndata: %b\n\n" % (position, encoded)


async def sse_body(
    *,
    subscription: Subscribed,
    start: int | None,
    wanted: EventFilter,
    read_page: PageReader,
    stopping: trio.Event,
    keep_alive: float = KEEP_ALIVE_SECONDS,
    lifetime: float = math.inf,
) -> AsyncGenerator[bytes, None]:
    """The stream's body: held events from ``start`` up to the live part, then live events,
    until the store drops the subscription, the client leaves, ``lifetime`` seconds have
    passed or the service stops.

    Cancellation: the subscription is closed however the body ends, so the store forgets it.
    """
    closes_at = trio.current_time() + lifetime
    with subscription.events:
        yield _OPENING
        if start is not None:
            async for chunk in _held(start, subscription.live_from, wanted, read_page):
                yield chunk
        while not stopping.is_set() and (left := closes_at - trio.current_time()) > 0:
            item = await _next(subscription.events, stopping, min(keep_alive, left))
            if item is None:
                return
            if isinstance(item, StreamedEvent):
                yield sse_message(item.position, item.encoded)
            else:
                yield item  # the keep-alive comment


async def _held(
    start: int, end: int, wanted: EventFilter, read_page: PageReader
) -> AsyncGenerator[bytes, None]:
    """The events already held between ``start`` and ``end``, one store page per chunk."""
    position = start
    while position < end:
        page = await read_page(position, end, wanted)
        if page.events:
            yield b"".join(map(sse_message, page.positions, page.events))
        if page.next <= position:  # nothing left before end (all evicted meanwhile)
            return
        position = page.next


async def _next(
    events: trio.MemoryReceiveChannel[StreamedEvent], stopping: trio.Event, keep_alive: float
) -> StreamedEvent | bytes | None:
    """The next live event, :data:`KEEP_ALIVE` after ``keep_alive`` seconds without one, or
    ``None`` once the store dropped the subscription or the service is stopping.

    A keep-alive is also what the caller gets when it asked for less than the keep-alive
    interval because the stream's lifetime is nearly over; the loop then ends.
    """
    with trio.move_on_after(keep_alive):
        async with move_on_when(stopping.wait):
            try:
                return await events.receive()
            except trio.EndOfChannel:
                return None
        return None
    return KEEP_ALIVE
