"""The consumer actor: owns the Kafka consumer and feeds valid events to the store.

Delivery is at-least-once: a record's offset is stored (and later committed) only after the
store confirmed the event, or after a malformed record was dead-lettered or logged. Records are
handled in order, one batch at a time, so every stored offset is the next contiguous one. A crash
between "stored" and "committed" replays a few records after a restart; the store's idempotency
by eventId absorbs them, which makes the result effectively once.

The actor does not poll while it is waiting on the store: the store answers in microseconds and
a batch is bounded (``CONSUMER_BATCH_SIZE``), so the member stays well inside
``max.poll.interval.ms`` without the pause/resume dance that a slow sink would need.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

import trio

from actors.domain.events import Limits, MalformedEvent, UserEvent, decode_event
from actors.domain.messages import Put, PutOutcome, StoreCommand, Stored
from actors.domain.trace import TraceContext
from actors.kafka.ports import (
    ClientStatistics,
    ConsumerPort,
    DeliveryReport,
    KafkaFailure,
    ProduceRejected,
    ProducerPort,
    Record,
)
from actors.kafka.replacement import ReplacingProducer
from actors.runtime.backoff import Backoff
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields
from actors.runtime.metrics import Metrics

__all__ = ["CONSUME_TIMEOUT", "run_consumer"]

log = logging.getLogger(__name__)

ACTOR = "consumer"

#: Longest one consume() call waits for records; bounds how fast a stop is noticed.
CONSUME_TIMEOUT = 0.5

#: Bound on the final commit and group leave, which must not hold up shutdown forever.
CLOSE_SECONDS = 5.0


class _Consumer:
    def __init__(
        self,
        *,
        consumer: ConsumerPort,
        store: trio.MemorySendChannel[StoreCommand],
        dead_letters: _DeadLetters | None,
        limits: Limits,
        health: Health,
        metrics: Metrics,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._dead_letters = dead_letters
        self._limits = limits
        self._health = health
        self._metrics = metrics
        self._recorded: ClientStatistics | None = None

    async def consume_batch(self, batch_size: int) -> None:
        records = await self._consumer.consume(batch_size, CONSUME_TIMEOUT)
        self._report_health()
        self._record_statistics()
        for record in records:
            await self._handle(record)
            self._consumer.store_offset(record)

    async def _handle(self, record: Record) -> None:
        try:
            event = decode_event(record.value, self._limits)
        except MalformedEvent as error:
            await self._reject(record, str(error))
            return
        outcome = await self._put(event)
        stored = isinstance(outcome, Stored)
        self._metrics.event_consumed("stored" if stored else "duplicate")
        if stored:
            self._metrics.end_to_end(time.time() - _epoch_seconds(event.timestamp))
        trace = TraceContext.from_kafka(record.headers)
        log_fields(
            log,
            logging.INFO,
            "event consumed",
            eventId=event.event_id,
            userId=event.user_id,
            eventType=event.event_type,
            partition=record.partition,
            offset=record.offset,
            outcome="stored" if stored else "duplicate",
            traceparent=trace.traceparent,
            requestId=trace.request_id,
        )

    async def _put(self, event: UserEvent) -> PutOutcome:
        send, receive = trio.open_memory_channel[PutOutcome](1)
        await self._store.send(Put(event=event, reply=send))
        with receive:
            return await receive.receive()

    async def _reject(self, record: Record, reason: str) -> None:
        self._health.count("malformed")
        log_fields(
            log,
            logging.WARNING,
            "malformed message skipped",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            deadLettered=self._dead_letters is not None,
        )
        if self._dead_letters is not None and await self._dead_letters.send(record, reason):
            self._health.count("dead_lettered")
            self._metrics.event_consumed("dead_lettered")
        else:
            self._metrics.event_consumed("malformed")

    def _record_statistics(self) -> None:
        statistics = self._consumer.statistics
        if statistics is not None and statistics is not self._recorded:
            self._metrics.consumer_assignment(statistics.assigned_partitions, statistics.lag)
            self._recorded = statistics

    def _report_health(self) -> None:
        if self._consumer.connected is False:
            self._health.report(ACTOR, ActorState.DEGRADED, "broker unreachable")
        elif not self._consumer.assigned:
            self._health.report(ACTOR, ActorState.STARTING, "joining the consumer group")
        else:
            self._health.report(ACTOR, ActorState.RUNNING)


class _DeadLetters:
    """Copies malformed records to the dead-letter topic and waits for the broker's ack.

    A record's offset is stored only after this returns, so a poison message is never lost:
    while the dead-letter topic cannot be written, consumption waits and retries. A producer
    that can no longer deliver is replaced (see
    :class:`~actors.kafka.replacement.ReplacingProducer`);
    its failures come back retriable, so the record is retried whole on the new one rather than
    written without its value or skipped.
    """

    def __init__(
        self,
        *,
        open_producer: Callable[[], ProducerPort],
        topic: str,
        backoff: Backoff,
        replace_producer_after: float,
        health: Health,
    ) -> None:
        self._producer = ReplacingProducer(
            open_producer,
            name="dead letters",
            replace_after=replace_producer_after,
            backoff=backoff,
            health=health,
            counter="dead_letter_producer_replacements",
        )
        self._topic = topic
        self._backoff = backoff
        self._health = health

    async def send(self, record: Record, reason: str) -> bool:
        """Write ``record`` to the dead-letter topic; ``True`` once the broker acknowledged it.

        Retriable failures are retried with backoff, for as long as it takes. A record the
        broker refuses for good (e.g. larger than it accepts) is written without its value,
        with headers saying why and how large it was; if even that is refused, it is logged
        and skipped, because nothing better can be done with it.
        """
        headers: tuple[tuple[str, bytes], ...] = (
            *record.headers,
            ("dlq.reason", reason.encode()),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
        )
        value = record.value
        attempt = 1
        while (failure := await self._deliver(record.key, value, headers)) is not None:
            if not failure.retriable:
                if value is None:
                    self._health.count("dead_letter_refused")
                    self._log_failure(
                        logging.ERROR, "dead-letter write refused; skipped", record, failure
                    )
                    return False
                self._log_failure(
                    logging.WARNING, "dead-letter write refused; value dropped", record, failure
                )
                headers += (
                    ("dlq.value.dropped", failure.code.encode()),
                    ("dlq.value.size", str(len(value)).encode()),
                )
                value = None
                continue
            delay = self._backoff.delay(attempt)
            self._log_failure(
                logging.WARNING,
                "dead-letter write failed",
                record,
                failure,
                retryIn=round(delay, 3),
            )
            # Consumption waits here (the poison record's offset must not advance); the next
            # batch reports the state again once the write went through.
            self._health.report(ACTOR, ActorState.DEGRADED, self._unwritable_because())
            await trio.sleep(delay)
            attempt += 1
        return True

    def _unwritable_because(self) -> str:
        replaced = self._producer.replaced_because
        if replaced is not None:
            return f"dead-letter producer replaced ({replaced})"
        return "dead-letter topic not writable"

    @staticmethod
    def _log_failure(
        level: int, message: str, record: Record, failure: KafkaFailure, **fields: object
    ) -> None:
        log_fields(
            log,
            level,
            message,
            code=failure.code,
            reason=failure.reason,
            partition=record.partition,
            offset=record.offset,
            **fields,
        )

    async def _deliver(
        self, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...]
    ) -> KafkaFailure | None:
        reports: list[DeliveryReport] = []
        try:
            self._producer.produce(
                topic=self._topic,
                key=key,
                value=value,
                headers=headers,
                on_delivery=reports.append,
            )
        except BufferError:
            return KafkaFailure(code="_QUEUE_FULL", reason="local queue full", retriable=True)
        except ProduceRejected as rejected:
            return rejected.failure
        while not reports:
            await self._producer.poll(CONSUME_TIMEOUT)
        report = reports[0]
        return report if isinstance(report, KafkaFailure) else None

    async def flush(self) -> None:
        await self._producer.flush(CLOSE_SECONDS)


async def run_consumer(
    *,
    open_consumer: Callable[[], ConsumerPort],
    open_dead_letter_producer: Callable[[], ProducerPort] | None,
    dlq_topic: str | None,
    store: trio.MemorySendChannel[StoreCommand],
    limits: Limits,
    batch_size: int,
    backoff: Backoff,
    replace_producer_after: float,
    health: Health,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Consume until cancelled; then commit what the store confirmed and leave the group.

    ``store`` belongs to the supervisor; this actor only sends on it. The dead-letter producer
    is replaced like the publisher's (``replace_producer_after``, ``backoff``). Each record's
    outcome, end-to-end latency, the assignment and the lag are recorded in ``metrics``.

    Cancellation: the normal way to stop this actor. The record being handled when the cancel
    arrives is not marked processed, so it is read again after a restart. The final commit and
    close are shielded and bounded by :data:`CLOSE_SECONDS`.
    """
    dead_letters = None
    if dlq_topic is not None and open_dead_letter_producer is not None:
        # Opened first: a producer that cannot be created must not leave a consumer behind.
        dead_letters = _DeadLetters(
            open_producer=open_dead_letter_producer,
            topic=dlq_topic,
            backoff=backoff,
            replace_producer_after=replace_producer_after,
            health=health,
        )
    consumer = open_consumer()
    actor = _Consumer(
        consumer=consumer,
        store=store,
        dead_letters=dead_letters,
        limits=limits,
        health=health,
        metrics=metrics or Metrics(),
    )
    health.report(ACTOR, ActorState.STARTING, "joining the consumer group")
    try:
        task_status.started()
        while True:
            await actor.consume_batch(batch_size)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_SECONDS) as bounded:
                await consumer.close()
            if dead_letters is not None:
                await dead_letters.flush()
        health.report(ACTOR, ActorState.STOPPED)
        log_fields(
            log, logging.INFO, "consumer stopped", closedCleanly=not bounded.cancelled_caught
        )


def _epoch_seconds(timestamp: str) -> float:
    """An event's ISO 8601 UTC ``timestamp`` (validated by ``decode_event``) as epoch seconds."""
    return datetime.datetime.fromisoformat(timestamp).timestamp()
