"""What travels on the channels between actors: frozen values, one union per mailbox.

Request/reply: the caller puts a one-slot reply channel in the message and waits on it; the
responder answers with :func:`reply` and never blocks, whether or not the caller still listens.

Mailboxes:

- publisher inbox: :class:`PublishRequest`, answered with a :data:`PublishOutcome`.
- store inbox: :data:`StoreCommand` (:class:`Put` or :class:`ReadEvents`).
"""

from __future__ import annotations

import contextlib
from typing import Literal, TypeVar

import attrs
import trio

from actors.domain.events import UserEvent
from actors.domain.trace import TraceContext

__all__ = [
    "Duplicate",
    "EventsPage",
    "Placed",
    "PublishFailed",
    "PublishFailureKind",
    "PublishOutcome",
    "PublishRequest",
    "Put",
    "PutOutcome",
    "ReadEvents",
    "StoreCommand",
    "Stored",
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
    """Store ``event`` unless its eventId is already stored."""

    event: UserEvent
    reply: trio.MemorySendChannel[PutOutcome] = attrs.field(eq=False)


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

    @property
    def last(self) -> bool:
        return self.next >= self.end


@attrs.frozen(kw_only=True)
class ReadEvents:
    """Reply with an :class:`EventsPage` of at most ``max_bytes`` (never fewer than one event).

    ``start=None`` begins at the oldest event still held; ``end=None`` ends at the newest one
    now. Events evicted since ``start`` was handed out are skipped.
    """

    start: int | None = None
    end: int | None = None
    max_bytes: int
    reply: trio.MemorySendChannel[EventsPage] = attrs.field(eq=False)


StoreCommand = Put | ReadEvents


# --- request/reply helpers -------------------------------------------------------------------


def reply(channel: trio.MemorySendChannel[T], answer: T) -> None:
    """Answer a request without blocking; a caller that stopped listening is not an error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        channel.send_nowait(answer)
