"""The consumer port over a confluent-kafka ``Consumer``: subscription, rebalance callbacks,
offsets stored after the store confirmed, commits on revoke and close, pause and resume of the
assignment.

librdkafka keeps a partition's paused flag across a revoke and a new assignment, and a
partition assigned for the first time is not paused; so the adapter keeps the assignment and
its own ``paused`` flag, and in the assign callback assigns the new partitions itself and
pauses or resumes them to match. Pausing purges what librdkafka had fetched for the paused
partitions and stops the fetcher; resuming fetches again from the record after the last one
``consume`` returned (librdkafka#2052), so nothing is skipped or read twice.

Offsets are stored in two steps. :meth:`KafkaConsumer.store_offset` (trio's thread) only notes
the next position per partition; the worker thread hands the noted positions to librdkafka
(``store_offsets``) before each ``consume``, commit and close, and in the revoke callback before
its commit. The actor handles records while the poll loop's ``consume`` runs in the worker
thread, and a ``store_offsets`` call made meanwhile from trio's thread waits for that
``consume`` to return (up to :data:`~actors.kafka.bridge.MAX_BLOCKING_SECONDS`), which would
freeze every task of the service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from actors.kafka.bridge import MAX_BLOCKING_SECONDS, Bridge, Connectivity, known
from actors.kafka.ports import ClientStatistics, KafkaFatalError, Partition, PortClosed, Record
from actors.runtime.logs import log_fields

__all__ = ["KafkaConsumer"]

log = logging.getLogger("actors.kafka")


class KafkaConsumer:
    """:class:`actors.kafka.ports.ConsumerPort` over a confluent-kafka ``Consumer``, subscribed to
    ``topic`` on creation."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._connectivity = Connectivity()
        self._consumer = Consumer(config | self._connectivity.callbacks())
        self._bridge = Bridge()
        self._assigned = False
        self._closed = False
        # Written by the rebalance callbacks (worker thread) and by pause/resume (trio thread).
        self._lock = threading.Lock()
        self._paused = False
        self._assignment: set[Partition] = set()
        self._revoked: set[Partition] = set()
        # Next offset per partition, noted on trio's thread, handed over in the worker thread.
        self._noted: dict[Partition, int] = {}
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    @property
    def connected(self) -> bool | None:
        return self._connectivity.connected

    @property
    def statistics(self) -> ClientStatistics | None:
        return self._connectivity.statistics

    @property
    def assigned(self) -> bool:
        return self._assigned

    @property
    def paused(self) -> bool:
        return self._paused

    # Rebalance callbacks run on the worker thread inside consume(); calling the client
    # synchronously from here is allowed (and is the only safe way to commit before revoke).

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Assigned here rather than by confluent-kafka after this callback, so that the new
        # partitions can be paused (or a flag librdkafka kept from before resumed) before the
        # fetcher hands out a record of them. assign(), not incremental_assign(): the
        # service's assignors (librdkafka's default range,roundrobin) are eager.
        consumer.assign(partitions)
        with self._lock:
            self._assignment.update(_keys(partitions))
            if partitions:
                (consumer.pause if self._paused else consumer.resume)(partitions)
        self._assigned = True
        log_fields(
            log,
            logging.INFO,
            "partitions assigned",
            partitions=_describe(partitions),
            paused=self._paused,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit_now()  # what was handled of the revoked partitions is committed first
        self._forget(partitions)
        log_fields(log, logging.INFO, "partitions revoked", partitions=_describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        log_fields(log, logging.WARNING, "partitions lost", partitions=_describe(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._assignment.difference_update(_keys(partitions))
            self._revoked.update(_keys(partitions))
        self._assigned = False

    def _commit_now(self) -> None:
        self._hand_over_offsets()
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log_fields(log, logging.WARNING, "commit failed", reason=error.args[0].str())

    def pause(self) -> None:
        self._check_open("pause")
        with self._lock:
            if not self._paused:
                self._paused = True
                self._apply(self._consumer.pause)

    def resume(self) -> None:
        self._check_open("resume")
        with self._lock:
            if self._paused:
                self._paused = False
                self._apply(self._consumer.resume)

    def _apply(self, change: Any) -> None:
        if self._assignment:
            change([TopicPartition(topic, partition) for topic, partition in self._assignment])

    def take_revoked(self) -> frozenset[Partition]:
        self._check_open("take_revoked")
        with self._lock:
            revoked, self._revoked = frozenset(self._revoked), set()
        return revoked

    def _check_open(self, call: str) -> None:
        if self._closed:
            raise PortClosed(f"consumer.{call}() after close()")

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        self._check_open("consume")
        messages = await self._bridge.call(
            self._consume_now, max_messages, min(timeout, MAX_BLOCKING_SECONDS)
        )
        self._connectivity.raise_if_fatal()
        return [record for message in messages if (record := self._record(message))]

    def _record(self, message: Message) -> Record | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaFatalError(f"{error.name()}: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                log_fields(
                    log, logging.WARNING, "consume error", code=error.name(), reason=error.str()
                )
            return None
        return Record(
            topic=known(message.topic()),
            partition=known(message.partition()),
            offset=known(message.offset()),
            key=_as_bytes(message.key()),
            value=_as_bytes(message.value()),
            headers=tuple(
                (name, _as_bytes(value) or b"") for name, value in _header_pairs(message)
            ),
        )

    def _consume_now(self, max_messages: int, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` for the first message, then take what else is already there.

        # NOTE: librdkafka's ``consume(n, timeout)`` returns only once it has ``n`` messages or
        # the timeout passed, so at light load every record would wait out the timeout. One
        # worker-thread call for both keeps it to a single hop.
        """
        self._hand_over_offsets()
        first = self._consumer.consume(1, timeout)
        if not first or max_messages == 1:
            return first
        return first + self._consumer.consume(max_messages - 1, 0)

    def store_offset(self, record: Record) -> None:
        """Note ``record`` as handled; librdkafka gets the position in the worker thread, at
        the next consume, commit or close (see the module's docstring)."""
        self._check_open("store_offset")
        key = (record.topic, record.partition)
        with self._lock:
            self._noted[key] = max(self._noted.get(key, 0), record.offset + 1)

    def _hand_over_offsets(self) -> None:
        """Give librdkafka the noted positions (worker thread only, between client calls)."""
        with self._lock:
            noted, self._noted = self._noted, {}
        for (topic, partition), offset in noted.items():
            try:
                self._consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])
            except KafkaException as error:
                # The partition was revoked meanwhile; its new owner will read the record again.
                log_fields(
                    log,
                    logging.INFO,
                    "offset not stored",
                    partition=partition,
                    offset=offset - 1,
                    reason=error.args[0].str(),
                )

    async def commit(self) -> None:
        self._check_open("commit")
        await self._bridge.call(self._commit_now)

    async def close(self) -> None:
        """Commit, leave the group and free the client.

        Cancellation: the caller bounds and shields this call; if the bound expires the worker
        thread is abandoned (no other call may follow close anyway).
        """
        self._check_open("close")
        self._closed = True
        await self._bridge.call(self._close_now, abandon_on_cancel=True)

    def _close_now(self) -> None:
        self._commit_now()
        self._consumer.close()


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _header_pairs(message: Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _keys(partitions: Sequence[TopicPartition]) -> set[Partition]:
    return {(p.topic, p.partition) for p in partitions}


def _describe(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
