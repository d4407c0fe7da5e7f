"""The Kafka boundary as the actors see it: value types and two small ports.

The actors never touch confluent-kafka. They talk to a :class:`ProducerPort` and a
:class:`ConsumerPort`; :mod:`actors.kafka.producer` and :mod:`actors.kafka.consumer` implement
them over confluent-kafka (blocking calls in a worker thread), and the unit tests implement them
in memory (no threads, so virtual time works). Keeping the ports this small is what lets the same
actor code run against both. :class:`KafkaPorts` bundles how the actors open their clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import attrs

from actors.domain.messages import Placed

__all__ = [
    "ClientStatistics",
    "ConsumerPort",
    "DeliveryReport",
    "KafkaFailure",
    "KafkaFatalError",
    "KafkaPorts",
    "Partition",
    "Placed",
    "PortClosed",
    "ProduceRejected",
    "ProducerPort",
    "Record",
]

Headers = Sequence[tuple[str, bytes]]

#: A partition of a topic, as ``(topic, partition)``.
Partition = tuple[str, int]


@attrs.frozen(kw_only=True)
class KafkaFailure:
    """Why Kafka did not take a message; ``retriable`` means trying again may succeed."""

    code: str
    reason: str
    retriable: bool = False
    fatal: bool = False


DeliveryReport = Placed | KafkaFailure


class ProduceRejected(Exception):
    """``produce()`` refused a message at once, for a reason other than a full queue."""

    def __init__(self, failure: KafkaFailure) -> None:
        super().__init__(f"{failure.code}: {failure.reason}")
        self.failure = failure


class KafkaFatalError(Exception):
    """The client hit an error it cannot recover from; the actor must be restarted."""


class PortClosed(RuntimeError):
    """A call on a port after its last call (``close()`` or ``discard()``) began.

    The rule is the same for every port and every implementation: once the last call began,
    every other call raises this, a second ``close()``/``discard()`` included; the properties
    (``connected``, ``assigned``, ``paused``) stay readable. It is a bug in the caller, so it
    is an exception, not a value.
    """


@attrs.frozen(kw_only=True)
class Record:
    """One consumed message, copied out of the client."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """What a client's latest librdkafka statistics report says (one comes every second).

    ``queued_messages``: messages in a producer's queues, not yet acknowledged (``msg_cnt``).
    ``assigned_partitions``: a consumer's assignment size (``cgrp.assignment_size``).
    ``lag``: per assigned ``(topic, partition)`` whose lag is known, librdkafka's
    ``consumer_lag``: high watermark minus the consumer's position, never below 0.
    """

    queued_messages: int = 0
    assigned_partitions: int = 0
    lag: Mapping[tuple[str, int], int] = attrs.field(factory=dict)


class ProducerPort(Protocol):
    """A Kafka producer whose blocking calls are awaitable.

    Delivery reports are handed to the ``on_delivery`` callback given to :meth:`produce`, during
    :meth:`poll` or :meth:`flush`: the callback must only record the report.
    """

    @property
    def connected(self) -> bool | None:
        """Whether a broker connection is up; ``None`` until the client knows."""
        ...

    @property
    def statistics(self) -> ClientStatistics | None:
        """The latest statistics report; ``None`` until the first one."""
        ...

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        """Queue one message without blocking.

        Raises:
            BufferError: the local queue is full (backpressure: poll, wait, try again).
            ProduceRejected: any other immediate refusal.
        """
        ...

    async def poll(self, timeout: float) -> None:
        """Serve delivery callbacks, waiting at most ``timeout`` seconds for one."""
        ...

    async def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for queued messages; return how many are left."""
        ...

    async def discard(self, timeout: float) -> None:
        """Drop every message still queued or in flight, then release the client.

        Each dropped message gets a retriable failure report, handed to its callback within
        this call (waiting at most ``timeout`` seconds for them). The last call on the port:
        any call after it raises :class:`PortClosed`.
        """
        ...


class ConsumerPort(Protocol):
    """A subscribed Kafka consumer whose blocking calls are awaitable.

    The adapter commits stored offsets itself when partitions are revoked, inside the
    rebalance callback, before another member can take them. A member that holds records it
    cannot hand on yet calls :meth:`pause` and keeps calling :meth:`consume`, which returns
    nothing but keeps the member in the group; :meth:`resume` carries on right after the last
    record ``consume`` returned.
    """

    @property
    def connected(self) -> bool | None:
        """Whether a broker connection is up; ``None`` until the client knows."""
        ...

    @property
    def assigned(self) -> bool:
        """Whether the member has joined the group and holds its (possibly empty) assignment."""
        ...

    @property
    def statistics(self) -> ClientStatistics | None:
        """The latest statistics report; ``None`` until the first one."""
        ...

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force (until :meth:`resume`)."""
        ...

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        """Fetch up to ``max_messages`` records, waiting at most ``timeout`` seconds.

        Within a partition, records come in offset order, each once, unless a rebalance
        revoked the partition: then its next owner (maybe this member again) reads on from
        the committed offset. Rebalance callbacks are served inside this call, paused or not.

        Raises:
            KafkaFatalError: the client cannot go on.
        """
        ...

    def pause(self) -> None:
        """Stop fetching for the whole assignment, and for partitions assigned later, until
        :meth:`resume`; ``consume`` returns nothing meanwhile. Pausing twice is one pause."""
        ...

    def resume(self) -> None:
        """Fetch again for the whole assignment, from the record after the last one
        ``consume`` returned (the committed offset for a partition assigned meanwhile)."""
        ...

    def take_revoked(self) -> frozenset[Partition]:
        """Partitions revoked or lost since the last call.

        Records of these partitions that ``consume`` returned before must not be handled:
        their offsets can no longer be stored, and their next owner reads them again.
        """
        ...

    def store_offset(self, record: Record) -> None:
        """Mark ``record`` as processed, so the next commit moves past it: the committed
        offset becomes ``record.offset + 1``, where the group's next reader starts. A record
        of a partition no longer assigned is not stored (its new owner reads it again)."""
        ...

    async def commit(self) -> None:
        """Commit the stored offsets synchronously (a no-op when there is nothing new)."""
        ...

    async def close(self) -> None:
        """Commit, leave the group and release the client; the last call on the port: any
        call after it raises :class:`PortClosed`."""
        ...


@attrs.frozen(kw_only=True)
class KafkaPorts:
    """How the actors get their Kafka clients; unit tests pass in-memory ones."""

    open_producer: Callable[[], ProducerPort]
    open_consumer: Callable[[], ConsumerPort]
    create_topic: Callable[[str], Awaitable[bool]]
