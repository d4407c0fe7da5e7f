"""What travels on the channels between actors: frozen values, one union per mailbox.

Request/reply: the caller puts a one-slot reply channel in the message and waits on it; the
responder answers with :func:`reply` and never blocks, whether or not the caller still listens.

Mailboxes:

- publisher inbox: :class:`PublishRequest`, answered with a :data:`PublishOutcome`.
- store inbox: :data:`StoreCommand` (:class:`Put` or :class:`ListEvents`).
"""

from __future__ import annotations

import contextlib
from typing import TypeVar

import attrs
import trio

from actors.events import UserEvent

__all__ = [
    "Duplicate",
    "ListEvents",
    "PublishFailed",
    "PublishOutcome",
    "PublishRequest",
    "Published",
    "Put",
    "PutOutcome",
    "StoreCommand",
    "Stored",
    "reply",
]

T = TypeVar("T")


# --- publisher inbox -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Published:
    """The broker confirmed the event: it is on the topic at this place."""

    partition: int
    offset: int


@attrs.frozen(kw_only=True)
class PublishFailed:
    """The event was not confirmed. ``retriable``: the client may try again later (503)."""

    reason: str
    retriable: bool


PublishOutcome = Published | PublishFailed


@attrs.frozen(kw_only=True)
class PublishRequest:
    """Publish ``event``; answer on ``reply`` by ``deadline`` (a :func:`trio.current_time`)."""

    event: UserEvent
    deadline: float
    reply: trio.MemorySendChannel[PublishOutcome] = attrs.field(eq=False)


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
class ListEvents:
    """Reply with every stored event, oldest first, each as canonical JSON bytes."""

    reply: trio.MemorySendChannel[tuple[bytes, ...]] = attrs.field(eq=False)


StoreCommand = Put | ListEvents


# --- request/reply helpers -------------------------------------------------------------------


def reply(channel: trio.MemorySendChannel[T], answer: T) -> None:
    """Answer a request without blocking; a caller that stopped listening is not an error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        channel.send_nowait(answer)
