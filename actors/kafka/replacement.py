"""A producer that replaces its Kafka client once that client can no longer deliver.

An idempotent producer can get into a state that no retry leaves: after a broker stall longer
than ``message.timeout.ms`` with a batch in flight, librdkafka against Tansu answers
``PRODUCER_FENCED`` for every later message, for as long as the process lives, although the
broker is back and a new producer delivers at once. Only a new client (a new producer id) helps.

:class:`BrokenProducerWatch` decides "this producer is broken; a new one would not be":

- at once for failures that name the producer's own state (:data:`BROKEN_STATE_CODES`) and for
  fatal errors;
- for any other failure once every delivery has failed for ``replace_after`` seconds, so that a
  state nobody foresaw (another broker, another librdkafka) still heals, if more slowly.

:class:`ReplacingProducer` is a :class:`~actors.kafka.ports.ProducerPort` that follows the watch: it
opens a new client, discards the old one (bounded, off trio's thread), logs one WARNING with the
reason and counts it in ``/health``. Failures of a client that is replaced come back to the
caller *retriable*: they say nothing about the message, so the caller retries (on the new
client) or answers 503, never 500. Used by the publisher and by the dead-letter writer.

Synopsis::

    producer = ReplacingProducer(
        open_producer, name="publisher", replace_after=30.0, backoff=backoff,
        health=health, counter="producer_replacements",
    )
    producer.produce(topic="t", key=b"k", value=b"v", on_delivery=reports.append)
    await producer.poll(0.1)        # reports are handed over here; may replace the client
    producer.replaced_because       # why, until the new client is connected or has delivered
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable

import attrs
import trio

from actors.kafka.ports import (
    ClientStatistics,
    DeliveryReport,
    Headers,
    KafkaFailure,
    KafkaFatalError,
    Placed,
    ProduceRejected,
    ProducerPort,
)
from actors.runtime.backoff import Backoff
from actors.runtime.health import Health
from actors.runtime.logs import log_fields

__all__ = ["BROKEN_STATE_CODES", "DISCARD_SECONDS", "BrokenProducerWatch", "ReplacingProducer"]

log = logging.getLogger(__name__)

#: librdkafka error names that say the producer's idempotence state is lost or rejected: the
#: broker will refuse this producer id (or epoch, or sequence) for good, a new one it will not.
BROKEN_STATE_CODES = frozenset(
    {
        "PRODUCER_FENCED",
        "_FENCED",
        "UNKNOWN_PRODUCER_ID",
        "INVALID_PRODUCER_EPOCH",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
    }
)

#: How long a replaced client may take to hand back what it held before it is closed.
DISCARD_SECONDS = 0.5


class BrokenProducerWatch:
    """Watches one client's deliveries and says when it must be replaced.

    Synopsis::

        watch = BrokenProducerWatch(replace_after=30.0)
        watch.failed(timed_out)     # None: one failure proves nothing
        watch.delivered()           # a delivery: the client works
        watch.failed(fenced)        # "PRODUCER_FENCED: ...": replace it now
    """

    def __init__(self, replace_after: float) -> None:
        self._replace_after = replace_after
        self._failing_since: float | None = None

    def delivered(self) -> None:
        """A delivery went through: whatever failed before was not the client's state."""
        self._failing_since = None

    def failed(self, failure: KafkaFailure) -> str | None:
        """Note one failed delivery; returns why the client must be replaced, or ``None``."""
        if failure.fatal or failure.code in BROKEN_STATE_CODES:
            return f"{failure.code}: {failure.reason}"
        now = trio.current_time()
        if self._failing_since is None:
            self._failing_since = now
            return None
        failing_for = now - self._failing_since
        if failing_for < self._replace_after:
            return None
        return (
            f"every delivery failed for {failing_for:.1f} s, last {failure.code}: {failure.reason}"
        )


@attrs.frozen
class _Arrival:
    """A delivery report as the client handed it over, tagged with the client it came from."""

    generation: int
    on_delivery: Callable[[DeliveryReport], None]
    report: DeliveryReport


class ReplacingProducer:
    """A :class:`~actors.kafka.ports.ProducerPort` over a client it replaces once broken.

    Reports reach the callbacks given to :meth:`produce` on trio's thread, at the end of
    :meth:`poll`, :meth:`flush` or :meth:`discard`. Replacements follow one another no faster
    than ``backoff`` allows (counted since the last delivery), so a broker that refused every new
    producer could not make this open clients in a loop.

    Args:
        open_producer: makes a new client; called once now and once per replacement.
        name: which producer this is, in the log line.
        replace_after: seconds of failing deliveries (and no delivery) that condemn a client.
        counter: the ``/health`` counter of replacements.
    """

    def __init__(
        self,
        open_producer: Callable[[], ProducerPort],
        *,
        name: str,
        replace_after: float,
        backoff: Backoff,
        health: Health,
        counter: str,
    ) -> None:
        self._open = open_producer
        self._name = name
        self._replace_after = replace_after
        self._backoff = backoff
        self._health = health
        self._counter = counter
        self._current = open_producer()
        self._generation = 0
        self._watch = BrokenProducerWatch(replace_after)
        # Appended to by the client's callbacks on the worker thread; deque appends are atomic.
        self._arrivals: collections.deque[_Arrival] = collections.deque()
        self._retiring: list[ProducerPort] = []
        self._due: str | None = None
        self._not_before = -math.inf
        self._in_a_row = 0
        #: Why the client was last replaced, until the new one connected or delivered.
        self.replaced_because: str | None = None

    @property
    def connected(self) -> bool | None:
        return self._current.connected

    @property
    def statistics(self) -> ClientStatistics | None:
        return self._current.statistics

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        """Queue one message on the current client (a new one first, if a replacement is due).

        Raises:
            BufferError: the client's local queue is full.
            ProduceRejected: refused at once; retriable if the client is broken.
        """
        self._replace_if_due()
        generation = self._generation

        def arrived(report: DeliveryReport) -> None:
            self._arrivals.append(_Arrival(generation, on_delivery, report))

        try:
            self._current.produce(
                topic=topic, key=key, value=value, headers=headers, on_delivery=arrived
            )
        except ProduceRejected as rejected:
            judged = self._judge(generation, rejected.failure)
            if judged is rejected.failure:
                raise
            raise ProduceRejected(judged) from None

    async def poll(self, timeout: float) -> None:
        """Serve reports for up to ``timeout`` seconds; replace the client if they condemn it.

        A fatal client error (:class:`~actors.kafka.ports.KafkaFatalError`) does not
        propagate: it is the reason for a replacement.

        Cancellation: a cancel during the client's poll leaves nothing half-done; discarding a
        replaced client is shielded and bounded by :data:`DISCARD_SECONDS`.
        """
        try:
            await self._current.poll(timeout)
        except KafkaFatalError as error:
            self._condemn(f"fatal: {error}")
        self._settle()
        # Before a new replacement, so that one stays visible for at least one poll.
        if self.replaced_because is not None and self._current.connected is True:
            self.replaced_because = None
        self._replace_if_due()
        await self._retire()

    async def flush(self, timeout: float) -> int:
        """Flush the current client (replaced ones are discarded first); never replaces."""
        await self._retire()
        left = await self._current.flush(timeout)
        self._settle()
        return left

    async def discard(self, timeout: float) -> None:
        await self._retire()
        await self._current.discard(timeout)
        self._settle()

    def _settle(self) -> None:
        """Hand the reports that arrived to their callbacks, judging the failures."""
        while self._arrivals:
            arrival = self._arrivals.popleft()
            report = arrival.report
            if isinstance(report, Placed):
                if arrival.generation == self._generation:
                    self._watch.delivered()
                    self._in_a_row = 0
                    self.replaced_because = None
            else:
                report = self._judge(arrival.generation, report)
            arrival.on_delivery(report)

    def _judge(self, generation: int, failure: KafkaFailure) -> KafkaFailure:
        """Note a failure of the client ``generation``; a condemned client's comes back
        retriable (and not fatal): the message is not at fault, a new client may deliver it."""
        current = generation == self._generation
        if current and self._due is None:
            self._due = self._watch.failed(failure)
        if current and self._due is None:
            return failure
        return attrs.evolve(failure, retriable=True, fatal=False)

    def _condemn(self, reason: str) -> None:
        if self._due is None:
            self._due = reason

    def _replace_if_due(self) -> None:
        """Swap in a new client if the current one is condemned and the last swap is not too
        recent; the old one is discarded by the next :meth:`poll` or :meth:`flush`."""
        if self._due is None or trio.current_time() < self._not_before:
            return
        reason, self._due = self._due, None
        self._retiring.append(self._current)
        self._current = self._open()
        self._generation += 1
        self._watch = BrokenProducerWatch(self._replace_after)
        self._in_a_row += 1
        self._not_before = trio.current_time() + self._backoff.delay(self._in_a_row)
        self.replaced_because = reason
        self._health.count(self._counter)
        log_fields(
            log,
            logging.WARNING,
            "producer replaced",
            producer=self._name,
            reason=reason,
            inARow=self._in_a_row,
        )

    async def _retire(self) -> None:
        """Discard replaced clients; their dropped messages come back as retriable failures.

        Cancellation: shielded, and bounded by twice :data:`DISCARD_SECONDS` per client.
        """
        while self._retiring:
            old = self._retiring.pop()
            with trio.CancelScope(shield=True), trio.move_on_after(2 * DISCARD_SECONDS) as bound:
                await old.discard(DISCARD_SECONDS)
            if bound.cancelled_caught:
                log_fields(log, logging.WARNING, "replaced producer not closed in time")
            self._settle()
