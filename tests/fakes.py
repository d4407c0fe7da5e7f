"""In-memory fakes of the Kafka ports, for actor tests under ``autojump_clock``.

No threads anywhere: every wait is a trio wait on virtual time, so ``MockClock`` can jump and
tests can assert exact times (a worker thread would let the clock jump under it, trio#456).

Synopsis::

    producer = FakeProducer(delivery_latency=0.25)
    producer.fail_deliveries(KafkaFailure(code="_TIMED_OUT", reason="x", retriable=True))
    consumer = FakeConsumer([record(0, event_json())])
    ports = fake_ports(producers=[producer], consumers=[consumer], topics=FakeTopics(failures=2))

Every fake can write what it does to a shared ``journal`` (a list of strings), and
:class:`RecordingHealth` writes state changes to the same list, so one assertion can check the
order of things that happen in different actors.

Imported as ``fakes``: ``tests/`` is on ``sys.path`` (it holds the root ``conftest.py`` and no
``__init__.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import attrs
import trio
from trio_util import AsyncValue

from actors.kafka.ports import (
    ClientStatistics,
    DeliveryReport,
    Headers,
    KafkaFailure,
    KafkaPorts,
    Placed,
    Record,
)
from actors.runtime.health import ActorState, Health

T = TypeVar("T")

__all__ = [
    "FENCED",
    "PURGED",
    "FakeConsumer",
    "FakeProducer",
    "FakeTopics",
    "Produced",
    "RecordingHealth",
    "StoredOffset",
    "fake_ports",
    "opener",
]


@attrs.frozen(kw_only=True)
class Produced:
    """One message a :class:`FakeProducer` accepted, and the virtual time it was produced."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    at: float


@attrs.frozen(kw_only=True)
class StoredOffset:
    """One ``store_offset`` call on a :class:`FakeConsumer`."""

    topic: str
    partition: int
    offset: int
    at: float


#: What librdkafka reports for every message of an idempotent producer that outlived a stall.
FENCED = KafkaFailure(
    code="PRODUCER_FENCED",
    reason="Broker: There is a newer producer with the same transactionalId which fences the "
    "current one",
)

#: What librdkafka reports for a message dropped by ``purge()`` (the adapter makes it retriable).
PURGED = KafkaFailure(code="_PURGE_QUEUE", reason="Local: Purged in queue", retriable=True)


@attrs.define
class _Pending:
    ready_at: float
    on_delivery: Callable[[DeliveryReport], None]
    report: DeliveryReport


class FakeProducer:
    """A :class:`~actors.kafka.ports.ProducerPort` in memory.

    Every accepted message gets its delivery report ``delivery_latency`` seconds later: a
    :class:`~actors.kafka.ports.Placed` at the next offset of ``partition``, or the scripted
    :class:`~actors.kafka.ports.KafkaFailure`. :meth:`poll` hands ready reports to their
    ``on_delivery`` callbacks and returns; with none ready it waits (on virtual time) until one
    is, or ``timeout`` passed, like librdkafka's ``poll``.

    Scripting: :meth:`refuse` (``produce`` raises ``BufferError`` or ``ProduceRejected``),
    ``queue_capacity`` (``BufferError`` while that many reports are undelivered),
    :meth:`fail_deliveries`, :meth:`fence`, :meth:`crash_next_poll`; ``connected`` and
    ``statistics`` are plain attributes. :meth:`discard` is the last call: any call after it
    fails the test.
    """

    def __init__(
        self,
        *,
        delivery_latency: float = 0.0,
        queue_capacity: int | None = None,
        partition: int = 0,
        journal: list[str] | None = None,
        name: str = "producer",
    ) -> None:
        self.connected: bool | None = True
        self.statistics: ClientStatistics | None = None
        self.delivery_latency = delivery_latency
        self.queue_capacity = queue_capacity
        self.partition = partition
        #: Messages accepted by ``produce``, in order.
        self.produced: list[Produced] = []
        #: Virtual time of every ``produce`` call, refused ones included.
        self.attempts: list[float] = []
        #: Virtual time of every ``flush`` call.
        self.flushes: list[float] = []
        #: Virtual time of the ``discard`` call, once it came.
        self.discarded_at: float | None = None
        #: How many reports were handed to callbacks so far.
        self.delivered = AsyncValue(0)
        self._journal = journal if journal is not None else []
        self._name = name
        self._next_offset = 0
        self._refusals: collections.deque[Exception] = collections.deque()
        self._failures: collections.deque[KafkaFailure] = collections.deque()
        self._poll_errors: collections.deque[Exception] = collections.deque()
        self._fenced = False
        self._pending: collections.deque[_Pending] = collections.deque()
        self._produced_one = trio.Event()

    # --- scripting ---------------------------------------------------------------------------

    def refuse(self, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` calls of ``produce`` raise ``error`` (``BufferError`` or
        ``ProduceRejected``)."""
        self._refusals.extend([error] * times)

    def fail_deliveries(self, failure: KafkaFailure, times: int = 1) -> None:
        """Report ``failure`` instead of a placement for the next ``times`` accepted messages."""
        self._failures.extend([failure] * times)

    def fence(self) -> None:
        """From now on fail every accepted message with ``PRODUCER_FENCED``, as librdkafka does
        for good once an idempotent producer outlived a broker stall with a batch in flight."""
        self._fenced = True

    def crash_next_poll(self, error: Exception) -> None:
        """Make the next ``poll`` raise ``error`` (as the adapter raises KafkaFatalError)."""
        self._poll_errors.append(error)

    @property
    def undelivered(self) -> int:
        """Accepted messages whose report was not handed to a callback yet."""
        return len(self._pending)

    # --- ProducerPort ------------------------------------------------------------------------

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        self._check_open("produce")
        now = trio.current_time()
        self.attempts.append(now)
        if self._refusals:
            raise self._refusals.popleft()
        if self.queue_capacity is not None and len(self._pending) >= self.queue_capacity:
            raise BufferError("Local: Queue full")
        report: DeliveryReport
        if self._fenced:
            report = FENCED
        elif self._failures:
            report = self._failures.popleft()
        else:
            report = Placed(partition=self.partition, offset=self._next_offset)
            self._next_offset += 1
        self._pending.append(_Pending(now + self.delivery_latency, on_delivery, report))
        self.produced.append(
            Produced(topic=topic, key=key, value=value, headers=tuple(headers), at=now)
        )
        self._journal.append(f"{self._name}.produce")
        self._produced_one.set()

    async def poll(self, timeout: float) -> None:
        self._check_open("poll")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._poll_errors:
            raise self._poll_errors.popleft()
        deadline = trio.current_time() + timeout
        while not self._serve_ready():
            wake = deadline
            if self._pending:
                wake = min(wake, self._pending[0].ready_at)
            if trio.current_time() >= wake:
                break
            self._produced_one = trio.Event()
            with trio.move_on_at(wake):
                await self._produced_one.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def flush(self, timeout: float) -> int:
        self._check_open("flush")
        await trio.lowlevel.checkpoint_if_cancelled()
        self.flushes.append(trio.current_time())
        self._journal.append(f"{self._name}.flush")
        deadline = trio.current_time() + timeout
        while True:
            self._serve_ready()
            if not self._pending or trio.current_time() >= deadline:
                break
            await trio.sleep_until(min(deadline, self._pending[0].ready_at))
        await trio.lowlevel.cancel_shielded_checkpoint()
        return len(self._pending)

    async def discard(self, timeout: float) -> None:
        """Report every undelivered message as purged (retriable), at once; then refuse all."""
        self._check_open("discard")
        await trio.lowlevel.checkpoint_if_cancelled()
        self.discarded_at = trio.current_time()
        self._journal.append(f"{self._name}.discard")
        for pending in self._pending:
            pending.report = PURGED
            pending.ready_at = self.discarded_at
        self._serve_ready()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _check_open(self, call: str) -> None:
        if self.discarded_at is not None:
            raise AssertionError(f"{self._name}.{call}() after discard()")

    def _serve_ready(self) -> bool:
        """Call back every report that is due; ``True`` if there was one."""
        now = trio.current_time()
        served = False
        while self._pending and self._pending[0].ready_at <= now:
            pending = self._pending.popleft()
            self._journal.append(f"{self._name}.deliver")
            pending.on_delivery(pending.report)
            self.delivered.value += 1
            served = True
        return served


class FakeConsumer:
    """A :class:`~actors.kafka.ports.ConsumerPort` in memory, handing out ``records`` in batches.

    ``consume`` returns what is queued (nothing until ``assigned``), or waits on virtual time
    for :meth:`add` up to its ``timeout``. It records ``store_offset``, ``commit`` and ``close``
    and refuses the calls librdkafka forbids: anything after ``close``, and ``close`` while a
    ``consume`` is in progress (librdkafka#2333). ``statistics`` is a plain attribute.
    """

    def __init__(
        self,
        records: Iterable[Record] = (),
        *,
        assigned: bool = True,
        connected: bool | None = True,
        journal: list[str] | None = None,
        name: str = "consumer",
    ) -> None:
        self.connected = connected
        self.statistics: ClientStatistics | None = None
        #: Every ``store_offset`` call, in order.
        self.stored: list[StoredOffset] = []
        #: How many offsets were stored so far; tests wait on it.
        self.stored_count = AsyncValue(0)
        #: How many times ``consume`` was called.
        self.consume_calls = AsyncValue(0)
        self.commits: list[float] = []
        self.closes: list[float] = []
        self._assigned = assigned
        self._journal = journal if journal is not None else []
        self._name = name
        self._records: collections.deque[Record] = collections.deque(records)
        self._errors: collections.deque[Exception] = collections.deque()
        self._changed = trio.Event()
        self._consuming = False

    @property
    def assigned(self) -> bool:
        return self._assigned

    @assigned.setter
    def assigned(self, value: bool) -> None:
        self._assigned = value
        self._changed.set()

    def add(self, *records: Record) -> None:
        """Make ``records`` available to ``consume``."""
        self._records.extend(records)
        self._changed.set()

    def fail_next_consume(self, error: Exception) -> None:
        """Make the next ``consume`` raise ``error`` (e.g. KafkaFatalError)."""
        self._errors.append(error)
        self._changed.set()

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        if self.closes:
            raise AssertionError("consume() after close()")
        await trio.lowlevel.checkpoint_if_cancelled()
        self.consume_calls.value += 1
        self._journal.append(f"{self._name}.consume")
        deadline = trio.current_time() + timeout
        self._consuming = True
        try:
            while not self._errors and not (self._assigned and self._records):
                if trio.current_time() >= deadline:
                    break
                self._changed = trio.Event()
                with trio.move_on_at(deadline):
                    await self._changed.wait()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._consuming = False
        if self._errors:
            raise self._errors.popleft()
        batch: list[Record] = []
        while self._assigned and self._records and len(batch) < max_messages:
            batch.append(self._records.popleft())
        return batch

    def store_offset(self, record: Record) -> None:
        if self.closes:
            raise AssertionError("store_offset() after close()")
        self.stored.append(
            StoredOffset(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                at=trio.current_time(),
            )
        )
        self._journal.append(f"{self._name}.store_offset {record.offset}")
        self.stored_count.value += 1

    async def commit(self) -> None:
        if self.closes:
            raise AssertionError("commit() after close()")
        await trio.lowlevel.checkpoint()
        self.commits.append(trio.current_time())
        self._journal.append(f"{self._name}.commit")

    async def close(self) -> None:
        if self._consuming:
            raise AssertionError("close() while consume() runs (librdkafka#2333)")
        self.closes.append(trio.current_time())
        self._journal.append(f"{self._name}.close")
        await trio.lowlevel.checkpoint()


class FakeTopics:
    """The ``create_topic`` port: fails ``failures`` times, then creates (or finds) topics."""

    def __init__(self, *, failures: int = 0, journal: list[str] | None = None) -> None:
        self.failures_left = failures
        #: ``(topic, virtual time)`` of every call, failed ones included.
        self.attempts: list[tuple[str, float]] = []
        self.created: list[str] = []
        #: How many calls so far; tests wait on it.
        self.calls = AsyncValue(0)
        self._journal = journal if journal is not None else []

    async def create_topic(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        self.attempts.append((name, trio.current_time()))
        self.calls.value += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("broker not reachable")
        self._journal.append(f"create_topic {name}")
        if name in self.created:
            return False
        self.created.append(name)
        return True


def opener(clients: Sequence[T] | Callable[[], T], kind: str) -> Callable[[], T]:
    """A factory handing out ``clients`` one per call, in order (running out fails the test);
    a factory given instead is returned as it is."""
    if callable(clients):
        return clients
    queue = collections.deque(clients)

    def open_next() -> T:
        if not queue:
            raise AssertionError(f"opened more {kind}s than the test provided")
        return queue.popleft()

    return open_next


def fake_ports(
    *,
    producers: Sequence[FakeProducer] | Callable[[], FakeProducer] = FakeProducer,
    consumers: Sequence[FakeConsumer] | Callable[[], FakeConsumer] = FakeConsumer,
    topics: FakeTopics | None = None,
) -> KafkaPorts:
    """:class:`~actors.supervisor.KafkaPorts` over fakes.

    ``producers``/``consumers`` are either factories or the clients to hand out, one per open,
    in order (a restarted actor opens the next one; running out fails the test).
    """
    return KafkaPorts(
        open_producer=opener(producers, "producer"),
        open_consumer=opener(consumers, "consumer"),
        create_topic=(topics or FakeTopics()).create_topic,
    )


class RecordingHealth(Health):
    """A :class:`~actors.runtime.health.Health` that writes every state *change* to a journal as
    ``"<actor> <state>"``, so tests can check the order of transitions across actors."""

    def __init__(self, actors: Iterable[str], journal: list[str] | None = None) -> None:
        super().__init__(actors)
        self.journal = journal if journal is not None else []
        #: Every report, changes or not: ``(actor, state, detail, virtual time)``.
        self.reports: list[tuple[str, ActorState, str, float]] = []

    def report(self, actor: str, state: ActorState, detail: str = "") -> None:
        changed = self.state(actor).value is not state
        super().report(actor, state, detail)
        self.reports.append((actor, state, detail, trio.current_time()))
        if changed:
            self.journal.append(f"{actor} {state.value}")
