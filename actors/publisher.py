"""The publisher actor: owns the Kafka producer and turns publish requests into confirmations.

It drains its inbox, hands each event to the producer (key = userId, so one user's events stay
in order on one partition) and answers each request from the broker's delivery report:
:class:`~actors.domain.messages.Placed` only once the broker acknowledged the write,
which is what lets the HTTP actor promise that every ``201`` is on the topic.

Two tasks share the producer: *intake* (``produce`` never blocks; a full local queue makes it
wait, which in turn fills the inbox, which the HTTP actor turns into ``503``) and the *pump*
(``poll`` in the worker thread, then settle the reports it collected).

The producer is a :class:`~actors.kafka.replacement.ReplacingProducer`: a client that can no longer
deliver (fenced after a broker stall, a lost producer id, a fatal error, or every delivery failing
for ``replace_producer_after`` seconds) is replaced inside this actor, and the requests caught in
it are retried on the new one or answered retriable (503). A supervisor restart would do the
same job worse: it drops the retries in progress and counts against ``RESTART_MAX_FAILURES``,
which a long outage could exhaust, ending the service (and the in-memory store with it).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from functools import partial

import attrs
import trio
from trio_util import AsyncValue

from actors.domain.events import UserEvent
from actors.domain.messages import (
    Placed,
    PublishBatch,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
    PublishRequest,
    reply,
)
from actors.kafka.ports import DeliveryReport, Headers, KafkaFailure, ProduceRejected, ProducerPort
from actors.kafka.replacement import ReplacingProducer
from actors.runtime.backoff import Backoff
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields
from actors.runtime.metrics import Metrics

__all__ = ["PUMP_INTERVAL", "run_publisher"]

log = logging.getLogger(__name__)

ACTOR = "publisher"

#: Longest one poll waits for delivery reports; also how often health is refreshed.
PUMP_INTERVAL = 0.1

#: How long a publisher that is being stopped or has failed may flush what it still holds.
EXIT_FLUSH_SECONDS = 1.0


@attrs.define
class _Attempt:
    """One event on its way to the broker; ``settle`` answers for it, exactly once."""

    event: UserEvent
    deadline: float
    settle: Callable[[PublishOutcome], None]
    #: The request's trace context as Kafka headers.
    headers: Headers = ()
    number: int = 1

    def next(self) -> _Attempt:
        return attrs.evolve(self, number=self.number + 1)


class _BatchAnswer:
    """Collects the outcome of each event of a :class:`PublishBatch`; answers once, with all of
    them in request order, when the last one is known."""

    def __init__(self, batch: PublishBatch) -> None:
        self._batch = batch
        self._outcomes: list[PublishOutcome | None] = [None] * len(batch.events)
        self._missing = len(batch.events)

    def settler(self, index: int) -> Callable[[PublishOutcome], None]:
        def settle(outcome: PublishOutcome) -> None:
            self._outcomes[index] = outcome
            self._missing -= 1
            if self._missing == 0:
                reply(self._batch.reply, tuple(o for o in self._outcomes if o is not None))

        return settle


class _Publisher:
    """The actor's state: the producer, reports waiting to be settled, work in progress."""

    def __init__(
        self,
        *,
        producer: ReplacingProducer,
        topic: str,
        backoff: Backoff,
        health: Health,
        metrics: Metrics,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._backoff = backoff
        self._health = health
        self._metrics = metrics
        # Appended to by the delivery callback on the worker thread; deque appends are atomic.
        self._reports: collections.deque[tuple[_Attempt, DeliveryReport]] = collections.deque()
        self._unresolved = AsyncValue(0)
        #: Messages the producer holds whose report was not settled yet.
        self._in_flight = 0

    async def accept(self, command: PublisherCommand, nursery: trio.Nursery) -> None:
        """Take one request or batch from the inbox; returns once the producer holds each of
        its events (or they failed).

        A request whose deadline passed while it waited in the inbox is not produced: its
        caller has already answered 503, and a retry by the client must not make a second copy.
        A batch's events are produced one after the other, without waiting in between.
        """
        match command:
            case PublishRequest(event=event, deadline=deadline, reply=channel, trace=trace):
                settle: Callable[[PublishOutcome], None] = partial(reply, channel)
                attempt = _Attempt(event, deadline, settle, trace.kafka_headers())
                await self._accept_one(attempt, nursery)
            case PublishBatch(events=events, deadline=deadline, trace=trace):
                answer = _BatchAnswer(command)
                headers = trace.kafka_headers()
                self._unresolved.value += len(events)  # once: waiters are woken per change
                for index, event in enumerate(events):
                    attempt = _Attempt(event, deadline, answer.settler(index), headers)
                    await self._accept_one(attempt, nursery, counted=True)

    async def _accept_one(
        self, attempt: _Attempt, nursery: trio.Nursery, *, counted: bool = False
    ) -> None:
        if not counted:
            self._unresolved.value += 1
        if trio.current_time() >= attempt.deadline:
            self._resolve(attempt, PublishFailed(reason="expired in the queue", retriable=True))
            return
        await self._produce(attempt, nursery)

    async def _produce(self, attempt: _Attempt, nursery: trio.Nursery) -> None:
        event = attempt.event
        while True:
            try:
                self._producer.produce(
                    topic=self._topic,
                    key=event.user_id.encode(),
                    value=event.to_json(),
                    headers=attempt.headers,
                    on_delivery=lambda report: self._reports.append((attempt, report)),
                )
            except BufferError:
                self._health.count("producer_queue_full")
                # The pump frees space as reports arrive; wait for it, within the deadline.
                if not await self._sleep_within_deadline(attempt, self._backoff.delay(1)):
                    failed = PublishFailed(
                        reason="producer queue full", retriable=True, kind="queue_full"
                    )
                    self._resolve(attempt, failed)
                    return
            except ProduceRejected as rejected:
                self._retry_or_fail(attempt, rejected.failure, nursery)
                return
            else:
                self._in_flight += 1
                return

    async def pump(self, nursery: trio.Nursery) -> None:
        """Poll for delivery reports and settle them, forever.

        # NOTE: a blocking poll runs in a worker thread, and the hop there and back costs more
        # than the rest of a publish. So while messages are in flight the pump first takes the
        # reports that are already there with ``poll(0)`` (on trio's thread, never blocking);
        # only when there are none does it wait in the worker thread, where the first report
        # wakes it at once. Under load reports keep arriving, and the hop is rarely needed.
        """
        while True:
            if self._in_flight:
                await self._producer.poll(0)
            if not self._reports:
                await self._producer.poll(PUMP_INTERVAL)
            self.settle_reports(nursery)
            self._report_health()
            if (statistics := self._producer.statistics) is not None:
                self._metrics.producer_queue(statistics.queued_messages)

    def settle_reports(self, nursery: trio.Nursery | None) -> None:
        """Answer the requests whose reports arrived; without a nursery, failures are final."""
        while self._reports:
            attempt, report = self._reports.popleft()
            self._in_flight -= 1
            match report:
                case Placed():
                    self._resolve(attempt, report)
                case KafkaFailure() as failure:
                    self._retry_or_fail(attempt, failure, nursery)

    def _retry_or_fail(
        self, attempt: _Attempt, failure: KafkaFailure, nursery: trio.Nursery | None
    ) -> None:
        delay = self._backoff.delay(attempt.number)
        retriable = failure.retriable and not failure.fatal
        if nursery is not None and retriable and _within_deadline(attempt, delay):
            log_fields(
                log,
                logging.INFO,
                "publish retry",
                eventId=attempt.event.event_id,
                attempt=attempt.number,
                code=failure.code,
                delay=round(delay, 3),
            )
            self._health.count("publish_retries")
            nursery.start_soon(self._retry_later, attempt, delay, nursery)
            return
        self._resolve(
            attempt,
            PublishFailed(reason=f"{failure.code}: {failure.reason}", retriable=failure.retriable),
        )

    async def _retry_later(self, attempt: _Attempt, delay: float, nursery: trio.Nursery) -> None:
        await trio.sleep(delay)
        await self._produce(attempt.next(), nursery)

    async def _sleep_within_deadline(self, attempt: _Attempt, delay: float) -> bool:
        """Sleep ``delay`` unless that would pass the deadline; ``False`` means no time left."""
        if not _within_deadline(attempt, delay):
            return False
        await trio.sleep(delay)
        return True

    def _resolve(self, attempt: _Attempt, outcome: PublishOutcome) -> None:
        if isinstance(outcome, Placed):
            self._health.count("published")
            self._metrics.event_published()
            if log.isEnabledFor(logging.DEBUG):  # per event: not even the arguments otherwise
                log_fields(
                    log,
                    logging.DEBUG,
                    "event published",
                    eventId=attempt.event.event_id,
                    partition=outcome.partition,
                    offset=outcome.offset,
                )
        else:
            self._health.count("publish_failures")
            log_fields(
                log,
                logging.WARNING,
                "publish failed",
                eventId=attempt.event.event_id,
                reason=outcome.reason,
                retriable=outcome.retriable,
            )
        attempt.settle(outcome)
        self._unresolved.value -= 1

    def _report_health(self) -> None:
        if self._producer.replaced_because is not None:
            detail = f"producer replaced ({self._producer.replaced_because})"
            self._health.report(ACTOR, ActorState.DEGRADED, detail)
        elif self._producer.connected is False:
            self._health.report(ACTOR, ActorState.DEGRADED, "broker unreachable")
        else:
            self._health.report(ACTOR, ActorState.RUNNING)

    async def wait_until_resolved(self) -> None:
        await self._unresolved.wait_value(0)


def _within_deadline(attempt: _Attempt, delay: float) -> bool:
    """Whether a retry after ``delay`` seconds would still start before the attempt's deadline."""
    return trio.current_time() + delay < attempt.deadline


async def run_publisher(
    *,
    inbox: trio.MemoryReceiveChannel[PublisherCommand],
    open_producer: Callable[[], ProducerPort],
    topic: str,
    backoff: Backoff,
    replace_producer_after: float,
    health: Health,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish requests from ``inbox`` until it is closed, then finish what was accepted.

    ``open_producer`` is called at start and again whenever the client has to be replaced
    (see :class:`~actors.kafka.replacement.ReplacingProducer`; ``replace_producer_after`` seconds of
    nothing but failed deliveries is one reason); ``backoff`` paces retries and replacements.

    The supervisor owns ``inbox`` (so a restarted publisher carries on with the same one);
    this actor never closes it. Each acknowledgement and the producer's queue length are
    recorded in ``metrics``; each request's trace context becomes its message's headers.

    Cancellation: whatever the producer still holds gets :data:`EXIT_FLUSH_SECONDS` to be
    flushed (shielded). Requests left unanswered time out at their caller.
    """
    producer = ReplacingProducer(
        open_producer,
        name=ACTOR,
        replace_after=replace_producer_after,
        backoff=backoff,
        health=health,
        counter="producer_replacements",
    )
    publisher = _Publisher(
        producer=producer,
        topic=topic,
        backoff=backoff,
        health=health,
        metrics=metrics or Metrics(),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.pump, nursery)
            health.report(ACTOR, ActorState.RUNNING)
            task_status.started()
            async for request in inbox:
                await publisher.accept(request, nursery)
            await publisher.wait_until_resolved()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            left = await producer.flush(EXIT_FLUSH_SECONDS)
        publisher.settle_reports(nursery=None)
        health.report(ACTOR, ActorState.STOPPED)
        log_fields(log, logging.INFO, "publisher stopped", unflushed=left)
