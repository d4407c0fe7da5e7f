"""The consumer actor: owns the Kafka consumer and feeds valid events to the store.

Delivery is at-least-once: a record's offset is stored (and later committed) only after the
store confirmed the event, or after a malformed record was dead-lettered or logged. Records are
handled in order, so every stored offset is the next contiguous one. A crash between "stored"
and "committed" replays a few records after a restart; the store's idempotency by eventId
absorbs them, which makes the result effectively once.

Two tasks share one backlog of records fetched but not handled yet. The poll loop calls
``consume()`` at least every :data:`POLL_GAP_SECONDS`, whatever the downstream does, which keeps
the member in its group (``max.poll.interval.ms``) and serves rebalance callbacks. The handler
takes the backlog's oldest record with the valid ones right behind it, hands them to the store
in one ``PutMany`` (a malformed one to the dead-letter writer, alone), and only then stores
their offsets. When the handler has not emptied the backlog within
:data:`DOWNSTREAM_GRACE_SECONDS` of the last fetch (a store that does not take its ``Put``, a
dead-letter topic that cannot be written), the poll loop pauses the assignment and keeps
polling; once the backlog is empty it resumes, and librdkafka fetches on from the record after
the last one it returned, so nothing is lost, skipped or reordered. The backlog holds at most
one batch (``CONSUMER_BATCH_SIZE``) fetched before the pause, plus at most one more librdkafka
had already fetched. Records of a partition revoked meanwhile are dropped from the backlog:
their next owner reads them again from the committed offset.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio
from trio_util import AsyncValue

from actors.domain.events import Limits, MalformedEvent, UserEvent, decode_event
from actors.domain.messages import Placed, PutMany, PutOutcome, StoreCommand, Stored
from actors.domain.trace import TraceContext
from actors.kafka.dead_letters import DeadLetterWriter
from actors.kafka.ports import ClientStatistics, ConsumerPort, Partition, ProducerPort, Record
from actors.runtime.backoff import Backoff
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields, log_rows
from actors.runtime.metrics import Metrics

__all__ = ["CONSUME_TIMEOUT", "DOWNSTREAM_GRACE_SECONDS", "POLL_GAP_SECONDS", "run_consumer"]

log = logging.getLogger(__name__)

ACTOR = "consumer"

#: Longest one consume() call waits for records; bounds how fast a stop is noticed.
CONSUME_TIMEOUT = 0.5

#: How long the poll loop waits for the handler to take a fetched batch before it pauses the
#: assignment: a store answers in microseconds, so only a stuck downstream gets this far.
DOWNSTREAM_GRACE_SECONDS = 0.5

#: Longest gap between two consume() calls, whatever the store or the dead-letter topic do;
#: far below any sane ``max.poll.interval.ms``.
POLL_GAP_SECONDS = CONSUME_TIMEOUT + DOWNSTREAM_GRACE_SECONDS

#: Bound on the final commit and group leave, which must not hold up shutdown forever.
CLOSE_SECONDS = 5.0


class _Backlog:
    """Records ``consume()`` returned and the handler has not finished, oldest first.

    A record stays in the backlog while the handler works on it; it is *unfinished* until
    :meth:`done`, even if a revoke dropped it meanwhile, so the poll loop does not resume for
    new records while the handler is still held up by an old one.
    """

    def __init__(self) -> None:
        self._records: collections.deque[Record] = collections.deque()
        self._handling: Record | None = None
        self._size = 0
        self._unfinished: AsyncValue[int] = AsyncValue(0)

    def __bool__(self) -> bool:
        return self._size > 0

    def __len__(self) -> int:
        return self._size

    def extend(self, records: Iterable[Record]) -> None:
        self._records.extend(records)
        self._count()

    def drop(self, partitions: frozenset[Partition]) -> int:
        """Forget the records of ``partitions``; how many there were."""
        if not partitions:
            return 0
        kept = [r for r in self._records if (r.topic, r.partition) not in partitions]
        dropped = len(self._records) - len(kept)
        self._records = collections.deque(kept)
        self._count()
        return dropped

    def following(self) -> list[Record]:
        """The records behind the oldest one (the one :meth:`take` handed out), in order."""
        return list(itertools.islice(self._records, 1, None))

    async def take(self) -> Record:
        """The oldest record, once there is one; unfinished until :meth:`done`."""
        await self._unfinished.wait_value(lambda _: bool(self._records))
        self._handling = self._records[0]
        return self._handling

    def done(self, record: Record) -> bool:
        """Finish ``record``; ``False`` if it was dropped meanwhile (its partition revoked)."""
        self._handling = None
        owned = bool(self._records) and self._records[0] is record
        if owned:
            self._records.popleft()
        self._count()
        return owned

    async def wait_finished(self) -> None:
        await self._unfinished.wait_value(0)

    def _count(self) -> None:
        dropped_in_hand = self._handling is not None and (
            not self._records or self._records[0] is not self._handling
        )
        self._size = len(self._records) + dropped_in_hand
        self._unfinished.value = self._size


class _Consumer:
    def __init__(
        self,
        *,
        consumer: ConsumerPort,
        store: trio.MemorySendChannel[StoreCommand],
        dead_letters: DeadLetterWriter | None,
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
        self._backlog = _Backlog()

    async def poll(self, batch_size: int) -> None:
        """Call ``consume()`` every :data:`POLL_GAP_SECONDS` at most, pausing the assignment
        while the handler is behind. Never returns; raises what ``consume()`` raises."""
        while True:
            if self._backlog:
                with trio.move_on_after(DOWNSTREAM_GRACE_SECONDS):
                    await self._backlog.wait_finished()
            self._steer()
            records = await self._consumer.consume(batch_size, CONSUME_TIMEOUT)
            dropped = self._backlog.drop(self._consumer.take_revoked())
            if dropped:
                log_fields(
                    log, logging.INFO, "records of revoked partitions dropped", records=dropped
                )
            self._backlog.extend(records)
            self._report_health()
            self._record_statistics()

    def _steer(self) -> None:
        if self._backlog and not self._consumer.paused:
            self._consumer.pause()
            log_fields(
                log,
                logging.INFO,
                "consumption paused",
                waitingFor=self._waiting_for(),
                backlog=len(self._backlog),
            )
        elif not self._backlog and self._consumer.paused:
            self._consumer.resume()
            log_fields(log, logging.INFO, "consumption resumed")

    def _waiting_for(self) -> str:
        if self._dead_letters is not None and self._dead_letters.retrying is not None:
            return "dead-letter topic"
        return "store"

    async def handle(self) -> None:
        """Handle the backlog's records in order, storing each offset once handled. Never
        returns.

        The oldest record and the valid ones right behind it go to the store as one
        :class:`PutMany` (one message and one reply for the run, not one per event); a
        malformed record ends the run and is handled on its own when its turn comes.
        """
        while True:
            record = await self._backlog.take()
            try:
                event = decode_event(record.value, self._limits)
            except MalformedEvent as error:
                await self._reject(record, str(error))
                if self._backlog.done(record):
                    self._consumer.store_offset(record)
                continue
            await self._store_run([(record, event), *self._valid_following()])

    def _valid_following(self) -> list[tuple[Record, UserEvent]]:
        """The records behind the one in hand, decoded, up to the first malformed one."""
        run = []
        for record in self._backlog.following():
            try:
                run.append((record, decode_event(record.value, self._limits)))
            except MalformedEvent:
                break
        return run

    async def _store_run(self, run: list[tuple[Record, UserEvent]]) -> None:
        """Store the run, log a line per event (written out at once, together), and only then
        store the offsets."""
        outcomes = await self._put_many(run)
        now = time.time()
        lines = []
        for (record, event), outcome in zip(run, outcomes, strict=True):
            stored = isinstance(outcome, Stored)
            self._metrics.event_consumed("stored" if stored else "duplicate")
            if stored:
                self._metrics.end_to_end(now - _epoch_seconds(event.timestamp))
            lines.append(_consumed_line(record, event, "stored" if stored else "duplicate"))
        log_rows(log, logging.INFO, "event consumed", lines)
        for record, _ in run:
            if self._backlog.done(record):
                self._consumer.store_offset(record)

    async def _put_many(self, run: list[tuple[Record, UserEvent]]) -> tuple[PutOutcome, ...]:
        send, receive = trio.open_memory_channel[tuple[PutOutcome, ...]](1)
        command = PutMany(
            events=tuple(event for _, event in run),
            sources=tuple(Placed(partition=r.partition, offset=r.offset) for r, _ in run),
            reply=send,
        )
        await self._store.send(command)
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
        if self._dead_letters is not None and await self._dead_letters.write(record, reason):
            self._health.count("dead_lettered")
            self._metrics.event_consumed("dead_lettered")
            # The next fetch reports the state again; say at once that the topic is writable.
            self._report_health()
        else:
            self._metrics.event_consumed("malformed")

    def _record_statistics(self) -> None:
        statistics = self._consumer.statistics
        if statistics is not None and statistics is not self._recorded:
            self._metrics.consumer_assignment(statistics.assigned_partitions, statistics.lag)
            self._recorded = statistics

    def _report_health(self) -> None:
        unwritable = None if self._dead_letters is None else self._dead_letters.unwritable_because
        if self._consumer.connected is False:
            self._health.report(ACTOR, ActorState.DEGRADED, "broker unreachable")
        elif unwritable is not None:
            self._health.report(ACTOR, ActorState.DEGRADED, unwritable)
        elif not self._consumer.assigned:
            self._health.report(ACTOR, ActorState.STARTING, "joining the consumer group")
        else:
            self._health.report(ACTOR, ActorState.RUNNING)


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
        dead_letters = DeadLetterWriter(
            open_producer=open_dead_letter_producer,
            topic=dlq_topic,
            backoff=backoff,
            replace_producer_after=replace_producer_after,
            health=health,
            actor=ACTOR,
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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.handle)
            task_status.started()
            await actor.poll(batch_size)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_SECONDS) as bounded:
                await consumer.close()
            if dead_letters is not None:
                await dead_letters.flush(CLOSE_SECONDS)
        health.report(ACTOR, ActorState.STOPPED)
        log_fields(
            log, logging.INFO, "consumer stopped", closedCleanly=not bounded.cancelled_caught
        )


def _consumed_line(record: Record, event: UserEvent, outcome: str) -> dict[str, Any]:
    """The fields of the line logged for each consumed event."""
    trace = TraceContext.from_kafka(record.headers)
    return {
        "eventId": event.event_id,
        "userId": event.user_id,
        "eventType": event.event_type,
        "partition": record.partition,
        "offset": record.offset,
        "outcome": outcome,
        "traceparent": trace.traceparent,
        "requestId": trace.request_id,
    }


def _epoch_seconds(timestamp: str) -> float:
    """An event's ISO 8601 UTC ``timestamp`` (validated by ``decode_event``) as epoch seconds."""
    return datetime.datetime.fromisoformat(timestamp).timestamp()
