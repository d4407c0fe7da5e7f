"""``POST /events/batch``: many events in one request, each validated and answered on its own.

The body is ``{"events": [{userId, eventType, payload?}, ...]}``. Each item is validated by the
rules of ``POST /events/generate`` (:func:`~actors.domain.events.event_from_document`); the valid
ones go to the publisher as one :class:`~actors.domain.messages.PublishBatch`, which produces them
back to back and answers once for all of them. That is what makes a batch cheap: one message
into the publisher, one reply out, one HTTP answer.

The answer is ``201`` with ``{"events": [...]}`` when every event was published, else ``207``
with one result per item in request order (``201`` with the event, ``400`` with its problems,
``503`` or ``500`` with a message) and ``Retry-After`` when any result is ``503``. A ``201``,
in either answer, means the broker confirmed that event; nothing invalid is published.

Memory stays bounded while the broker is away: at most ``max_waiting_events`` events of
batches wait for the publisher at once; a batch that would go beyond gets ``503`` for each of
its events without being queued.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from actors.domain.events import (
    InvalidRequest,
    Limits,
    UserEvent,
    batch_from_request,
    event_from_document,
)
from actors.domain.messages import (
    Placed,
    PublishBatch,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
)
from actors.domain.trace import TraceContext

__all__ = ["BatchAnswer", "BatchOptions", "BatchPublisher", "TooLarge"]

_COMPACT = (",", ":")


@attrs.frozen(kw_only=True)
class BatchOptions:
    """The bounds of one batch (``MAX_BATCH_EVENTS``, ``MAX_BATCH_BYTES``) and of the events of
    all batches waiting for the publisher's answer at once."""

    max_events: int
    max_bytes: int
    max_waiting_events: int


class TooLarge(Exception):
    """The batch holds more events than allowed (413)."""


@attrs.frozen(kw_only=True)
class BatchAnswer:
    """The HTTP answer to a batch: status, JSON body, and whether any item may be retried."""

    status: int
    body: bytes
    retry_later: bool


class BatchPublisher:
    """Validates batches and publishes their valid events; counts the events it has waiting."""

    def __init__(
        self,
        *,
        publish: trio.MemorySendChannel[PublisherCommand],
        limits: Limits,
        options: BatchOptions,
        publish_timeout: float,
    ) -> None:
        self._publish = publish
        self._limits = limits
        self._options = options
        self._publish_timeout = publish_timeout
        self._waiting = 0

    def parse(self, body: bytes) -> list[UserEvent | InvalidRequest]:
        """Each item of the batch as an event, or why it is not one.

        Raises:
            InvalidRequest: the body is not a batch envelope (400).
            TooLarge: more than ``max_events`` items (413).
        """
        items = batch_from_request(body)
        if len(items) > self._options.max_events:
            raise TooLarge(f"a batch holds at most {self._options.max_events} events")
        parsed: list[UserEvent | InvalidRequest] = []
        for item in items:
            try:
                parsed.append(event_from_document(item, self._limits))
            except InvalidRequest as invalid:
                parsed.append(invalid)
        return parsed

    async def publish(
        self,
        items: list[UserEvent | InvalidRequest],
        unavailable: str | None,
        trace: TraceContext,
    ) -> BatchAnswer:
        """Publish the valid items (none when ``unavailable`` gives a reason) and answer;
        ``trace`` goes with each event as Kafka headers."""
        events = tuple(item for item in items if isinstance(item, UserEvent))
        if not events:
            outcomes: tuple[PublishOutcome, ...] = ()
        elif unavailable is not None:
            outcomes = _all_failed(events, unavailable)
        else:
            outcomes = await self._publish_events(events, trace)
        return _answer(items, iter(outcomes))

    async def _publish_events(
        self, events: tuple[UserEvent, ...], trace: TraceContext
    ) -> tuple[PublishOutcome, ...]:
        if self._waiting + len(events) > max(self._options.max_waiting_events, len(events)):
            return _all_failed(events, "too many events waiting to be published")
        send, receive = trio.open_memory_channel[tuple[PublishOutcome, ...]](1)
        deadline = trio.current_time() + self._publish_timeout
        try:
            self._publish.send_nowait(
                PublishBatch(events=events, deadline=deadline, reply=send, trace=trace)
            )
        except trio.WouldBlock:
            return _all_failed(events, "too many events waiting to be published")
        self._waiting += len(events)
        try:
            with receive, trio.move_on_at(deadline):
                try:
                    return await receive.receive()
                except trio.EndOfChannel:
                    return _all_failed(events, "the publisher stopped")
            return _all_failed(events, "the broker did not confirm the events in time")
        finally:
            self._waiting -= len(events)


def _all_failed(events: tuple[UserEvent, ...], reason: str) -> tuple[PublishOutcome, ...]:
    return tuple(PublishFailed(reason=reason, retriable=True) for _ in events)


def _answer(items: list[UserEvent | InvalidRequest], outcomes: Any) -> BatchAnswer:
    """201 with every event when all were published, else 207 with one result per item."""
    results: list[bytes] = []
    published: list[bytes] = []
    retry_later = False
    for index, item in enumerate(items):
        if isinstance(item, InvalidRequest):
            problems = [attrs.asdict(problem) for problem in item.problems]
            results.append(_result(index, 400, problems=problems))
            continue
        match next(outcomes):
            case Placed():
                published.append(item.encoded)
                results.append(b'{"index":%d,"status":201,"event":%b}' % (index, item.encoded))
            case PublishFailed(retriable=True, reason=reason):
                retry_later = True
                results.append(_result(index, 503, message=reason))
            case PublishFailed(reason=reason):
                results.append(_result(index, 500, message=reason))
    if len(published) == len(items):
        return BatchAnswer(
            status=201, body=b'{"events":[' + b",".join(published) + b"]}", retry_later=False
        )
    body = b'{"results":[' + b",".join(results) + b"]}"
    return BatchAnswer(status=207, body=body, retry_later=retry_later)


def _result(index: int, status: int, **fields: Any) -> bytes:
    return json.dumps({"index": index, "status": status, **fields}, separators=_COMPACT).encode()
