"""The routes that read what the store holds, beyond the whole listing: one event by id, pages
and filters of the listing, the live stream, and the live page at ``/``.

Each answer is built from what the store answers through its inbox; nothing here keeps events.
A page is one store read (bounded by ``limit`` and by the store's scan bound), so its cost does
not grow with the store; its ``Link`` cursor is a store position, which stays valid while events
are added and while old ones are evicted (a cursor into evicted events starts at the oldest).

Synopsis::

    add_event_routes(app, store=store_send, limits=limits, stopping=stop)
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar
from urllib.parse import urlencode

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.routing import BaseConverter

from actors.domain.events import EventFilter, InvalidRequest, Limits, Problem
from actors.domain.messages import (
    EventNotFound,
    EventsPage,
    FoundEvent,
    GetEvent,
    ReadEvents,
    StoreCommand,
    Subscribe,
    SubscribeOutcome,
    TooManySubscribers,
)
from actors.http.answers import error_response, invalid_request, json_response
from actors.http.queries import ListingQuery, encode_cursor, event_filter, last_event_id
from actors.http.stream import KEEP_ALIVE_SECONDS, sse_body

__all__ = [
    "STORE_QUERY_SECONDS",
    "EventIdConverter",
    "StoreUnavailable",
    "add_event_routes",
    "ask_store",
    "paged_listing",
]

T = TypeVar("T")

#: How long a request may wait for the store before it fails with 503.
STORE_QUERY_SECONDS = 5.0

#: Most JSON bytes of one store page of the stream's held part (one chunk of the response).
STREAM_CHUNK_BYTES = 128 * 1024

#: Most bytes of one chunk of a page's body.
PAGE_CHUNK_BYTES = 128 * 1024

#: Fixed routes under ``/events/`` that the eventId route must leave alone.
_FIXED_NAMES = ("generate", "processed", "stream", "batch")

_RETRY_SOON = {"Retry-After": "1"}


class EventIdConverter(BaseConverter):
    """One path segment that is not the name of a fixed route under ``/events/``: those keep
    their own answers (``GET /events/generate`` stays ``405``), and any other segment reaches
    ``GET /events/{eventId}``, which answers ``400`` when it is not a UUID."""

    regex = r"(?!(?:" + "|".join(_FIXED_NAMES) + r")$)[^/]+"


class StoreUnavailable(Exception):
    """The store did not answer within :data:`STORE_QUERY_SECONDS`."""


async def ask_store(
    store: trio.MemorySendChannel[StoreCommand],
    command: Callable[[trio.MemorySendChannel[T]], StoreCommand],
) -> T:
    """Send ``command(reply)`` to the store and wait for its answer.

    Raises:
        StoreUnavailable: no answer within :data:`STORE_QUERY_SECONDS`.
    """
    send, receive = trio.open_memory_channel[T](1)
    with trio.move_on_after(STORE_QUERY_SECONDS):
        await store.send(command(send))
        with receive:
            return await receive.receive()
    raise StoreUnavailable()


def store_unavailable() -> Response:
    return error_response(
        503, "store_unavailable", "the store did not answer in time", headers=_RETRY_SOON
    )


async def paged_listing(
    store: trio.MemorySendChannel[StoreCommand], query: ListingQuery, limit: int
) -> Response:
    """One page of at most ``limit`` events as a JSON array, with a ``Link`` to the next page
    when more may follow. The page holds references to the store's own bytes, sent in chunks,
    never joined into one copy."""
    try:
        page: EventsPage = await ask_store(
            store,
            lambda reply: ReadEvents(
                start=query.start,
                max_bytes=2**62,
                limit=limit,
                wanted=query.wanted,
                reply=reply,
            ),
        )
    except StoreUnavailable:
        return store_unavailable()
    headers = {}
    if not page.last:
        headers["Link"] = f'<{_next_url(query, limit, page.next)}>; rel="next"'
    response = Response(_array_chunks(page.events), mimetype="application/json", headers=headers)
    return response


def _next_url(query: ListingQuery, limit: int, position: int) -> str:
    parameters = {"limit": str(limit), "after": encode_cursor(position)}
    if query.wanted.user_id is not None:
        parameters["userId"] = query.wanted.user_id
    if query.wanted.event_type is not None:
        parameters["eventType"] = query.wanted.event_type
    return f"{request.path}?{urlencode(parameters)}"


async def _array_chunks(events: tuple[bytes, ...]) -> AsyncGenerator[bytes, None]:
    parts = [b"["]
    size = 1
    for number, encoded in enumerate(events):
        if number:
            parts.append(b",")
        parts.append(encoded)
        size += len(encoded) + 1
        if size >= PAGE_CHUNK_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    parts.append(b"]")
    yield b"".join(parts)


def add_event_routes(
    app: QuartTrio,
    *,
    store: trio.MemorySendChannel[StoreCommand],
    limits: Limits,
    stopping: trio.Event,
    keep_alive: float = KEEP_ALIVE_SECONDS,
    stream_lifetime: float = 3600.0,
) -> None:
    """Register ``GET /events/{eventId}``, ``GET /events/stream`` and the live page ``/``.

    A stream ends by itself after ``stream_lifetime`` seconds (quart's response timeout, a
    second later, is a backstop). A client that stopped reading is cut off by the server once a
    write has waited ``HTTP_SEND_SECONDS`` (:mod:`actors.http.server`).
    """
    app.url_map.converters["event_id"] = EventIdConverter

    @app.get("/events/<event_id:eventId>")
    async def event_by_id(eventId: str) -> Response:
        if not _is_uuid(eventId):
            problem = Problem("eventId", "must be a UUID in canonical lowercase form")
            return invalid_request(InvalidRequest([problem]), "the eventId is not valid")
        try:
            found: FoundEvent | EventNotFound = await ask_store(
                store, lambda reply: GetEvent(event_id=eventId, reply=reply)
            )
        except StoreUnavailable:
            return store_unavailable()
        if isinstance(found, EventNotFound):
            return error_response(
                404, "not_found", "no event with this eventId was processed by this instance"
            )
        return json_response(_status_body(found), 200)

    @app.get("/events/stream")
    async def event_stream() -> Response:
        problems: list[Problem] = []
        wanted = event_filter(request.args.to_dict(flat=False), limits, problems)
        last = last_event_id(request.headers.getlist("Last-Event-ID"), problems)
        if problems:
            return invalid_request(InvalidRequest(problems), "the stream request is not valid")
        try:
            subscription: SubscribeOutcome = await ask_store(
                store, lambda reply: Subscribe(wanted=wanted, reply=reply)
            )
        except StoreUnavailable:
            return store_unavailable()
        if isinstance(subscription, TooManySubscribers):
            return error_response(
                503,
                "too_many_streams",
                f"at most {subscription.limit} streams are open at once; retry shortly",
                headers=_RETRY_SOON,
            )

        async def read_page(start: int, end: int, filtered: EventFilter) -> EventsPage:
            return await ask_store(
                store,
                lambda reply: ReadEvents(
                    start=start,
                    end=end,
                    max_bytes=STREAM_CHUNK_BYTES,
                    wanted=filtered,
                    reply=reply,
                ),
            )

        body = sse_body(
            subscription=subscription,
            start=None if last is None else last + 1,
            wanted=wanted,
            read_page=read_page,
            stopping=stopping,
            keep_alive=keep_alive,
            lifetime=stream_lifetime,
        )
        # A body dropped before it started (the client left first) never runs its own cleanup:
        # closing the subscription when the body is collected frees its place in the store.
        weakref.finalize(body, subscription.events.close)
        response = Response(
            body,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.timeout = stream_lifetime + 1  # the body's own end comes first
        return response

    @app.get("/")
    async def live_page() -> Response:
        response = await app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _status_body(found: FoundEvent) -> bytes:
    """``{"event":…,"partition":…,"offset":…}`` around the stored bytes, without decoding."""
    partition = b"null" if found.partition < 0 else str(found.partition).encode()
    offset = b"null" if found.offset < 0 else str(found.offset).encode()
    return b'{"event":%b,"partition":%b,"offset":%b}' % (found.encoded, partition, offset)
