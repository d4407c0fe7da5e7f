"""The dead-letter writer: copies a malformed record to the dead-letter topic, retrying until
the broker acknowledged it.

Owned by the consumer actor, not an actor of its own: its answer decides when the consumer may
store the record's offset, in order with the records around it, so the consumer waits on it the
way it waits on the store; and a consumer restart may drop what it holds, because an offset not
stored is read again. A separate actor would add a mailbox and a restart policy that keep
nothing the consumer does not already keep.

Its retry state is bounded: it holds one record at a time (the consumer hands on the next one
only after this one was written or given up), waits the backoff between attempts, and says in
:attr:`DeadLetterWriter.retrying` what it is waiting for. The consumer keeps polling meanwhile,
with its assignment paused, so the member stays in its group for any length of outage.

Synopsis::

    writer = DeadLetterWriter(
        open_producer=open_producer, topic="events.dlq", backoff=backoff,
        replace_producer_after=30.0, health=health, actor="consumer",
    )
    if await writer.write(record, "not valid JSON"):   # retries until acknowledged
        health.count("dead_lettered")
    writer.retrying        # None, or the record and attempt it is waiting on
    await writer.flush(5.0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from actors.kafka.ports import (
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

__all__ = ["DeadLetterWriter", "Retrying"]

log = logging.getLogger(__name__)

#: Longest one wait for the producer's delivery report; bounds how fast a cancel is noticed.
POLL_SECONDS = 0.5


@attrs.frozen(kw_only=True)
class Retrying:
    """The record the writer waits to write again, and why."""

    record: Record
    attempt: int
    failure: KafkaFailure
    since: float


class DeadLetterWriter:
    """Copies malformed records to ``topic`` with ``dlq.*`` headers and waits for the ack.

    A producer that can no longer deliver is replaced (see
    :class:`~actors.kafka.replacement.ReplacingProducer`); its failures come back retriable, so
    the record is retried whole on the new one rather than written without its value or skipped.
    """

    def __init__(
        self,
        *,
        open_producer: Callable[[], ProducerPort],
        topic: str,
        backoff: Backoff,
        replace_producer_after: float,
        health: Health,
        actor: str,
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
        self._actor = actor
        self._retrying: Retrying | None = None

    @property
    def retrying(self) -> Retrying | None:
        """The record a failed write waits on, until it is written or given up."""
        return self._retrying

    @property
    def unwritable_because(self) -> str | None:
        """Why the dead-letter topic cannot be written now; ``None`` while it can."""
        if self._retrying is None:
            return None
        replaced = self._producer.replaced_because
        if replaced is not None:
            return f"dead-letter producer replaced ({replaced})"
        return "dead-letter topic not writable"

    async def write(self, record: Record, reason: str) -> bool:
        """Write ``record`` to the dead-letter topic; ``True`` once the broker acknowledged it.

        Retriable failures are retried after the backoff, for as long as it takes. A record the
        broker refuses for good (e.g. larger than it accepts) is written without its value,
        with headers saying why and how large it was; if even that is refused, it is logged at
        ERROR, counted (``dead_letter_refused``) and ``False`` returned: nothing better can be
        done with it.

        Cancellation: safe at any await; the record is then neither acknowledged nor given up,
        and the caller must not store its offset.
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
        try:
            while (failure := await self._deliver(record.key, value, headers)) is not None:
                if not failure.retriable:
                    if value is None:
                        self._health.count("dead_letter_refused")
                        self._log(
                            logging.ERROR, "dead-letter write refused; skipped", record, failure
                        )
                        return False
                    self._log(
                        logging.WARNING, "dead-letter write refused; value dropped", record, failure
                    )
                    headers += (
                        ("dlq.value.dropped", failure.code.encode()),
                        ("dlq.value.size", str(len(value)).encode()),
                    )
                    value = None
                    continue
                await self._wait_to_retry(record, failure, attempt)
                attempt += 1
            return True
        finally:
            self._retrying = None

    async def _wait_to_retry(self, record: Record, failure: KafkaFailure, attempt: int) -> None:
        delay = self._backoff.delay(attempt)
        since = trio.current_time() if self._retrying is None else self._retrying.since
        self._retrying = Retrying(record=record, attempt=attempt, failure=failure, since=since)
        self._log(
            logging.WARNING, "dead-letter write failed", record, failure, retryIn=round(delay, 3)
        )
        self._health.report(self._actor, ActorState.DEGRADED, self.unwritable_because or "")
        await trio.sleep(delay)

    @staticmethod
    def _log(
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
            await self._producer.poll(POLL_SECONDS)
        report = reports[0]
        return report if isinstance(report, KafkaFailure) else None

    async def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what the producer still holds."""
        await self._producer.flush(timeout)
