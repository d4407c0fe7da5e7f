"""``POST /events/batch``: many events in one request, each validated and answered on its own.

The body is ``{"events": [{userId, eventType, payload?, idempotencyKey?}, ...]}``. Each item
is validated by the rules of ``POST /events/generate``
(:func:`~actors.domain.events.event_from_document`); the valid ones go to the publisher as one
:class:`~actors.domain.messages.PublishBatch`, which produces them back to back and answers once
for all of them. That is what makes a batch cheap: one message into the publisher, one reply
out, one HTTP answer.

An item's ``idempotencyKey`` follows the rules of the ``Idempotency-Key`` header, per item: the
keyed items are claimed in the idempotency ledger with one message (their fingerprints are of
the item itself, :func:`~actors.http.idempotent.item_fingerprint`); an item whose key already
answered 201 for the same item is answered with that event again and not published; one whose
key is in flight is ``409``, one whose key came with another item ``422``. Once any key is
claimed, the publish and the settlement are shielded from the client leaving, so that what
reached the broker is remembered.

The answer is ``201`` with ``{"events": [...]}`` when every event was published (or replayed;
``Idempotent-Replayed: true`` when all were), else ``207`` with one result per item in request
order (``201`` with the event, and ``"replayed": true`` for a replay; ``400`` with its problems;
``409``, ``422``, ``503`` or ``500`` with a message) and ``Retry-After`` when any result is
``503`` or ``409``. A ``201``, in either answer, means the broker confirmed that event; nothing
invalid is published.

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
    Problem,
    UserEvent,
    batch_from_request,
    event_from_document,
    restamp,
)
from actors.domain.messages import (
    Claimed,
    ClaimOutcome,
    InFlight,
    KeyReused,
    LedgerCommand,
    LedgerFull,
    Placed,
    PublishBatch,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
    Replay,
)
from actors.domain.trace import TraceContext
from actors.http.idempotent import claim_keys, item_fingerprint, settle_keys
from actors.http.queries import checked_idempotency_key

__all__ = [
    "ITEM_KEY_FIELD",
    "BatchAnswer",
    "BatchItem",
    "BatchOptions",
    "BatchPublisher",
    "TooLarge",
]

#: The field of a batch item that carries its idempotency key.
ITEM_KEY_FIELD = "idempotencyKey"

#: The messages of the results that the ledger answered instead of the publisher.
IN_FLIGHT = "a request with this idempotencyKey is still being handled"
KEY_REUSED = "this idempotencyKey was used with another event"
NO_LEDGER = "idempotency keys are not available right now"

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
    replayed: bool = False


@attrs.frozen
class BatchItem:
    """One item of a batch: its event or why it is not one, and its idempotency key with the
    item's fingerprint when it has one."""

    parsed: UserEvent | InvalidRequest
    key: str | None = None
    fingerprint: bytes = b""


class _NoLedger:
    """The ledger did not answer (or there is none): a keyed item gets 503."""


#: What became of one item: why it is invalid, what the publisher answered, or what the ledger
#: answered instead of publishing it.
_Fate = InvalidRequest | PublishOutcome | ClaimOutcome | _NoLedger


class BatchPublisher:
    """Validates batches and publishes their valid events; counts the events it has waiting."""

    def __init__(
        self,
        *,
        publish: trio.MemorySendChannel[PublisherCommand],
        limits: Limits,
        options: BatchOptions,
        publish_timeout: float,
        ledger: trio.MemorySendChannel[LedgerCommand] | None = None,
    ) -> None:
        self._publish = publish
        self._ledger = ledger
        self._limits = limits
        self._options = options
        self._publish_timeout = publish_timeout
        self._waiting = 0

    def parse(self, body: bytes) -> list[BatchItem]:
        """Each item of the batch as an event, or why it is not one, with its key.

        Raises:
            InvalidRequest: the body is not a batch envelope (400).
            TooLarge: more than ``max_events`` items (413).
        """
        items = batch_from_request(body)
        if len(items) > self._options.max_events:
            raise TooLarge(f"a batch holds at most {self._options.max_events} events")
        return [_batch_item(item, self._limits) for item in items]

    async def publish(
        self, items: list[BatchItem], unavailable: str | None, trace: TraceContext
    ) -> BatchAnswer:
        """Publish the valid items (none when ``unavailable`` gives a reason) whose keys, if
        any, the ledger let through, and answer; ``trace`` goes with each event as Kafka
        headers."""
        fates: list[_Fate | None] = [
            item.parsed if isinstance(item.parsed, InvalidRequest) else None for item in items
        ]
        claimed = await self._claim(items, fates)
        to_publish = [index for index, fate in enumerate(fates) if fate is None]
        # NOTE: shielded once a key is claimed (each step bounded by its own deadline) so that
        # the outcome of every claimed key is recorded even if the client leaves: an event that
        # reached the broker must be remembered, or the client's retry would publish it again.
        with trio.CancelScope(shield=bool(claimed)):
            await self._publish_into(items, to_publish, fates, unavailable, trace)
            if claimed:
                await self._settle(items, claimed, fates)
        return _answer(items, fates)

    async def _claim(self, items: list[BatchItem], fates: list[_Fate | None]) -> list[int]:
        """Ask the ledger about every valid keyed item; fills in the fates of those it will not
        let through. The indices of the items it let through (claimed)."""
        keyed = [
            index
            for index, item in enumerate(items)
            if item.key is not None and fates[index] is None
        ]
        if not keyed:
            return []
        claims = tuple((items[index].key or "", items[index].fingerprint) for index in keyed)
        outcomes = None if self._ledger is None else await claim_keys(self._ledger, claims)
        if outcomes is None:
            for index in keyed:
                fates[index] = _NoLedger()
            return []
        claimed = []
        for index, outcome in zip(keyed, outcomes, strict=True):
            if isinstance(outcome, Claimed):
                claimed.append(index)
            else:
                fates[index] = outcome
        return claimed

    async def _publish_into(
        self,
        items: list[BatchItem],
        indices: list[int],
        fates: list[_Fate | None],
        unavailable: str | None,
        trace: TraceContext,
    ) -> None:
        events = tuple(_event(items[index]) for index in indices)
        if not events:
            return
        if unavailable is not None:
            outcomes = _all_failed(events, unavailable)
        else:
            outcomes = await self._publish_events(events, trace)
        for index, outcome in zip(indices, outcomes, strict=True):
            fates[index] = outcome

    async def _settle(
        self, items: list[BatchItem], claimed: list[int], fates: list[_Fate | None]
    ) -> None:
        assert self._ledger is not None  # nothing is claimed without one
        settled = []
        for index in claimed:
            event = _event(items[index])
            created = None
            if isinstance(fates[index], Placed):
                created = Replay(event_id=event.event_id, timestamp=event.timestamp)
            settled.append((items[index].key or "", created))
        await settle_keys(self._ledger, tuple(settled))

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


def _batch_item(document: Any, limits: Limits) -> BatchItem:
    """Validate one item: its event by the rules of ``POST /events/generate``, and its key."""
    problems: list[Problem] = []
    key = None
    if isinstance(document, dict) and ITEM_KEY_FIELD in document:
        key = checked_idempotency_key(document[ITEM_KEY_FIELD], ITEM_KEY_FIELD, problems)
        document = {name: value for name, value in document.items() if name != ITEM_KEY_FIELD}
    try:
        event = event_from_document(document, limits)
    except InvalidRequest as invalid:
        return BatchItem(InvalidRequest([*problems, *invalid.problems]))
    if problems:
        return BatchItem(InvalidRequest(problems))
    if key is None:
        return BatchItem(event)
    return BatchItem(event, key, item_fingerprint(document))


def _event(item: BatchItem) -> UserEvent:
    assert isinstance(item.parsed, UserEvent)
    return item.parsed


def _all_failed(events: tuple[UserEvent, ...], reason: str) -> tuple[PublishOutcome, ...]:
    return tuple(PublishFailed(reason=reason, retriable=True) for _ in events)


def _answer(items: list[BatchItem], fates: list[_Fate | None]) -> BatchAnswer:
    """201 with every event when all were published or replayed, else 207 with one result per
    item."""
    results: list[bytes] = []
    created: list[bytes] = []
    replays = 0
    retry_later = False
    for index, (item, fate) in enumerate(zip(items, fates, strict=True)):
        match fate:
            case InvalidRequest(problems=problems):
                found = [attrs.asdict(problem) for problem in problems]
                results.append(_result(index, 400, problems=found))
            case Placed():
                encoded = _event(item).encoded
                created.append(encoded)
                results.append(b'{"index":%d,"status":201,"event":%b}' % (index, encoded))
            case Replay(event_id=event_id, timestamp=timestamp):
                encoded = restamp(_event(item), event_id=event_id, timestamp=timestamp).encoded
                created.append(encoded)
                replays += 1
                results.append(
                    b'{"index":%d,"status":201,"event":%b,"replayed":true}' % (index, encoded)
                )
            case PublishFailed(retriable=True, reason=reason):
                retry_later = True
                results.append(_result(index, 503, message=reason))
            case PublishFailed(reason=reason):
                results.append(_result(index, 500, message=reason))
            case InFlight():
                retry_later = True
                results.append(_result(index, 409, message=IN_FLIGHT))
            case KeyReused():
                results.append(_result(index, 422, message=KEY_REUSED))
            case LedgerFull() | _NoLedger():
                retry_later = True
                results.append(_result(index, 503, message=NO_LEDGER))
            case _:
                raise AssertionError(f"item {index} has no outcome: {fate!r}")
    if len(created) == len(items):
        return BatchAnswer(
            status=201,
            body=b'{"events":[' + b",".join(created) + b"]}",
            retry_later=False,
            replayed=replays == len(items),
        )
    body = b'{"results":[' + b",".join(results) + b"]}"
    return BatchAnswer(status=207, body=body, retry_later=retry_later)


def _result(index: int, status: int, **fields: Any) -> bytes:
    return json.dumps({"index": index, "status": status, **fields}, separators=_COMPACT).encode()
