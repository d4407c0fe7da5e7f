"""What travels on the channels between actors: frozen values, one union per mailbox.

Request/reply: the caller puts a one-slot reply channel in the message and waits on it; the
responder answers with :func:`reply` and never blocks, whether or not the caller still listens.

Mailboxes:

- publisher inbox: :data:`PublisherCommand`: a :class:`PublishRequest`, answered with a
  :data:`PublishOutcome`, or a :class:`PublishBatch`, answered with one per event.
- store inbox: :data:`StoreCommand` (:class:`Put`, :class:`PutMany`, :class:`ReadEvents`,
  :class:`GetEvent` or :class:`Subscribe`).
- idempotency ledger inbox: :data:`LedgerCommand` (:class:`Claim` or :class:`Settle`, or
  :class:`ClaimMany` and :class:`SettleMany` for the keyed items of a batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal, TypeVar

import attrs
import trio

from actors.domain.events import EventFilter, UserEvent
from actors.domain.trace import TraceContext

__all__ = [
    "Claim",
    "ClaimMany",
    "ClaimOutcome",
    "Claimed",
    "Duplicate",
    "EventNotFound",
    "EventsPage",
    "FoundEvent",
    "GetEvent",
    "InFlight",
    "KeyReused",
    "LedgerCommand",
    "LedgerFull",
    "Placed",
    "PublishBatch",
    "PublishFailed",
    "PublishFailureKind",
    "PublishOutcome",
    "PublishRequest",
    "PublisherCommand",
    "Put",
    "PutMany",
    "PutOutcome",
    "ReadEvents",
    "Replay",
    "Settle",
    "SettleMany",
    "StoreCommand",
    "Stored",
    "StreamedEvent",
    "Subscribe",
    "SubscribeOutcome",
    "Subscribed",
    "TooManySubscribers",
    "reply",
]

T = TypeVar("T")


# --- publisher inbox -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Placed:
    """Where the broker wrote a message: for an event, the broker confirmed it is on the topic.

    The Kafka producer's delivery report and the publisher's answer are this one value, passed
    on as it is.
    """

    partition: int
    offset: int


#: What kind of failure kept an event from being confirmed (the metrics count them by it).
PublishFailureKind = Literal["timeout", "queue_full", "refused", "unavailable"]


@attrs.frozen(kw_only=True)
class PublishFailed:
    """The event was not confirmed. ``retriable``: the client may try again later (503).

    ``kind`` defaults to ``timeout`` for a retriable failure (not confirmed in time) and to
    ``refused`` for one that is not.
    """

    reason: str
    retriable: bool
    kind: PublishFailureKind = attrs.field()

    @kind.default
    def _kind_from_retriable(self) -> PublishFailureKind:
        return "timeout" if self.retriable else "refused"


PublishOutcome = Placed | PublishFailed


@attrs.frozen(kw_only=True)
class PublishRequest:
    """Publish ``event``; answer on ``reply`` by ``deadline`` (a :func:`trio.current_time`).

    ``trace`` goes with the event as Kafka headers.
    """

    event: UserEvent
    deadline: float
    reply: trio.MemorySendChannel[PublishOutcome] = attrs.field(eq=False)
    trace: TraceContext = attrs.field(factory=TraceContext)


@attrs.frozen(kw_only=True)
class PublishBatch:
    """Publish each of ``events``; answer once on ``reply`` with one outcome per event, in
    order, when every one is known (by ``deadline``, a :func:`trio.current_time`)."""

    events: tuple[UserEvent, ...]
    deadline: float
    reply: trio.MemorySendChannel[tuple[PublishOutcome, ...]] = attrs.field(eq=False)
    #: Goes with each event as Kafka headers, as a :class:`PublishRequest`'s does.
    trace: TraceContext = attrs.field(factory=TraceContext)


PublisherCommand = PublishRequest | PublishBatch


# --- store inbox -----------------------------------------------------------------------------


@attrs.frozen
class Stored:
    """The event was new and is now stored."""


@attrs.frozen
class Duplicate:
    """An event with this eventId was stored before; nothing changed."""


PutOutcome = Stored | Duplicate


@attrs.frozen(kw_only=True)
class Put:
    """Store ``event`` unless its eventId is already stored.

    ``source`` is where the consumer read it (partition and offset), kept for
    :class:`GetEvent`; ``None`` when unknown.
    """

    event: UserEvent
    source: Placed | None = None
    reply: trio.MemorySendChannel[PutOutcome] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class PutMany:
    """Store each of ``events`` unless its eventId is already stored; one outcome per event,
    in order, in a single reply. ``sources[i]`` is where ``events[i]`` was read, as for
    :class:`Put`."""

    events: tuple[UserEvent, ...]
    sources: tuple[Placed | None, ...]
    reply: trio.MemorySendChannel[tuple[PutOutcome, ...]] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class EventsPage:
    """A run of stored events, oldest first, each as canonical JSON bytes.

    Positions number the events in the order they were stored and are never reused, so a
    reader can page through the store while the consumer appends and the store evicts.
    """

    events: tuple[bytes, ...]
    #: Where the next page starts.
    next: int
    #: The position after the newest event when the listing began: the listing ends there.
    end: int
    #: The position of each event in ``events`` (a ``range`` for a run of consecutive ones,
    #: which costs nothing per event).
    positions: Sequence[int] = ()

    @property
    def last(self) -> bool:
        return self.next >= self.end


@attrs.frozen(kw_only=True)
class ReadEvents:
    """Reply with an :class:`EventsPage` of at most ``max_bytes`` (never fewer than one event).

    ``start=None`` begins at the oldest event still held; ``end=None`` ends at the newest one
    now. Events evicted since ``start`` was handed out are skipped. At most ``limit`` events
    (``None``: no count bound), only those ``wanted`` lets through; a filtered read looks at a
    bounded number of events, so its page may be short, or empty, before its end.
    """

    start: int | None = None
    end: int | None = None
    max_bytes: int
    limit: int | None = None
    wanted: EventFilter = attrs.field(factory=EventFilter)
    reply: trio.MemorySendChannel[EventsPage] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class FoundEvent:
    """A stored event, with where the consumer read it (``-1`` when that is unknown)."""

    encoded: bytes
    position: int
    partition: int
    offset: int


@attrs.frozen
class EventNotFound:
    """No event with this eventId is held: never consumed here, or already evicted."""


@attrs.frozen(kw_only=True)
class GetEvent:
    """Reply with the stored event whose eventId is ``event_id``."""

    event_id: str
    reply: trio.MemorySendChannel[FoundEvent | EventNotFound] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class StreamedEvent:
    """One newly stored event, sent to a stream subscriber."""

    position: int
    encoded: bytes


@attrs.frozen(kw_only=True)
class Subscribed:
    """Events stored from ``live_from`` on arrive on ``events``, those ``wanted`` lets through.

    The channel is bounded; a subscriber that lets it fill up is dropped (the store closes its
    end), so a slow reader never holds the store up. Older events are read with
    :class:`ReadEvents` up to ``live_from``, which makes the two parts meet without a gap.
    """

    events: trio.MemoryReceiveChannel[StreamedEvent]
    live_from: int


@attrs.frozen(kw_only=True)
class TooManySubscribers:
    """``limit`` subscriptions are open already."""

    limit: int


SubscribeOutcome = Subscribed | TooManySubscribers


@attrs.frozen(kw_only=True)
class Subscribe:
    """Open a subscription to newly stored events."""

    wanted: EventFilter = attrs.field(factory=EventFilter)
    reply: trio.MemorySendChannel[SubscribeOutcome] = attrs.field(eq=False)


StoreCommand = Put | PutMany | ReadEvents | GetEvent | Subscribe


# --- idempotency ledger inbox ----------------------------------------------------------------


@attrs.frozen
class Claimed:
    """The key is new: the caller handles the request, then :class:`Settle` s it."""


@attrs.frozen(kw_only=True)
class Replay:
    """The key's first request succeeded and created this event; answer as it was answered."""

    event_id: str
    timestamp: str


@attrs.frozen
class InFlight:
    """The key's first request is still being handled (409)."""


@attrs.frozen
class KeyReused:
    """The key was used with another body (422)."""


@attrs.frozen
class LedgerFull:
    """Every remembered key belongs to a request still in flight; no room for one more (503)."""


ClaimOutcome = Claimed | Replay | InFlight | KeyReused | LedgerFull


@attrs.frozen(kw_only=True)
class Claim:
    """Claim ``key`` for a request whose body has the digest ``fingerprint``."""

    key: str
    fingerprint: bytes
    reply: trio.MemorySendChannel[ClaimOutcome] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class Settle:
    """The claimed request for ``key`` ended: ``created`` is its event when it answered 201
    (remember it), ``None`` when it failed (forget the key: a retry is a new attempt)."""

    key: str
    created: Replay | None


@attrs.frozen(kw_only=True)
class ClaimMany:
    """Claim each ``(key, fingerprint)`` in order, as that many :class:`Claim` s would, with
    one answer for all (the items of one batch): the outcomes in the same order."""

    claims: tuple[tuple[str, bytes], ...]
    reply: trio.MemorySendChannel[tuple[ClaimOutcome, ...]] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class SettleMany:
    """Each ``(key, created)`` settled as :class:`Settle` would, in one message."""

    settled: tuple[tuple[str, Replay | None], ...]


LedgerCommand = Claim | Settle | ClaimMany | SettleMany


# --- request/reply helpers -------------------------------------------------------------------


def reply(channel: trio.MemorySendChannel[T], answer: T) -> None:
    """Answer a request without blocking; a caller that stopped listening is not an error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        channel.send_nowait(answer)
