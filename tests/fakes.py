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
    Partition,
    Placed,
    PortClosed,
    ProduceRejected,
    Record,
)
from actors.runtime.health import ActorState, Health

T = TypeVar("T")

__all__ = [
    "FENCED",
    "MESSAGE_MAX_BYTES",
    "PURGED",
    "TOO_LARGE",
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

#: librdkafka's default ``message.max.bytes``: ``produce()`` refuses a larger message at once.
MESSAGE_MAX_BYTES = 1_000_000

#: How ``produce()`` refuses a message larger than ``message.max.bytes``.
TOO_LARGE = KafkaFailure(code="MSG_SIZE_TOO_LARGE", reason="Broker: Message size too large")


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
    ``statistics`` are plain attributes. A message larger than ``message_max_bytes`` is refused
    with :data:`TOO_LARGE`. :meth:`discard` is the last call: any call after it raises
    :class:`~actors.kafka.ports.PortClosed`, as the adapter does.
    """

    def __init__(
        self,
        *,
        delivery_latency: float = 0.0,
        queue_capacity: int | None = None,
        partition: int = 0,
        journal: list[str] | None = None,
        name: str = "producer",
        message_max_bytes: int = MESSAGE_MAX_BYTES,
    ) -> None:
        self.connected: bool | None = True
        self.statistics: ClientStatistics | None = None
        self.delivery_latency = delivery_latency
        self.message_max_bytes = message_max_bytes
        self.queue_capacity = queue_capacity
        self.partition = partition
        #: Messages accepted by ``produce``, in order.
        self.produced: list[Produced] = []
        #: Virtual time of every ``produce`` call, refused ones included.
        self.attempts: list[float] = []
        #: Virtual time of every ``flush`` call.
        self.flushes: list[float] = []
        #: The ``timeout`` of every ``poll`` call, in order.
        self.poll_timeouts: list[float] = []
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
        self._failing_until: tuple[KafkaFailure, float] | None = None
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

    def fail_deliveries_until(self, failure: KafkaFailure, time: float) -> None:
        """Report ``failure`` for every message accepted before the virtual ``time``."""
        self._failing_until = (failure, time)

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
        if len(key or b"") + len(value or b"") > self.message_max_bytes:
            raise ProduceRejected(TOO_LARGE)
        if self.queue_capacity is not None and len(self._pending) >= self.queue_capacity:
            raise BufferError("Local: Queue full")
        report: DeliveryReport
        if self._fenced:
            report = FENCED
        elif self._failures:
            report = self._failures.popleft()
        elif self._failing_until is not None and now < self._failing_until[1]:
            report = self._failing_until[0]
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
        self.poll_timeouts.append(timeout)
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
            raise PortClosed(f"{self._name}.{call}() after discard()")

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

    ``consume`` returns what is queued (nothing until ``assigned``, nothing while paused), or
    waits on virtual time for :meth:`add` (or :meth:`resume`) up to its ``timeout``. It records
    ``store_offset``, ``commit``, ``close``, ``pause`` and ``resume``. :meth:`rebalance` plays
    what librdkafka does in a rebalance: commit, revoke, and read the revoked partitions again
    from the committed offset if they come back. After ``close`` every call raises
    :class:`~actors.kafka.ports.PortClosed`, as the adapter does; ``close`` while a ``consume``
    is in progress (librdkafka#2333) fails the test. ``statistics`` is a plain attribute.
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
        #: Virtual time of every ``consume`` call.
        self.consumed_at: list[float] = []
        #: Every record ``consume`` returned, in order (read again after a rebalance included).
        self.handed_out: list[Record] = []
        self.commits: list[float] = []
        self.closes: list[float] = []
        #: Virtual times of the ``pause`` and ``resume`` calls that changed the state.
        self.pauses: list[float] = []
        self.resumes: list[float] = []
        #: Records of partitions a :meth:`rebalance` gave to another member.
        self.given_away: list[Record] = []
        self._assigned = assigned
        self._paused = False
        self._journal = journal if journal is not None else []
        self._name = name
        self._records: collections.deque[Record] = collections.deque(records)
        self._errors: collections.deque[Exception] = collections.deque()
        self._changed = trio.Event()
        self._consuming = False
        self._revoked: set[Partition] = set()
        self._unstored: dict[Partition, list[Record]] = collections.defaultdict(list)

    @property
    def assigned(self) -> bool:
        return self._assigned

    @assigned.setter
    def assigned(self, value: bool) -> None:
        self._assigned = value
        self._changed.set()

    @property
    def paused(self) -> bool:
        return self._paused

    def add(self, *records: Record) -> None:
        """Make ``records`` available to ``consume``."""
        self._records.extend(records)
        self._changed.set()

    def fail_next_consume(self, error: Exception) -> None:
        """Make the next ``consume`` raise ``error`` (e.g. KafkaFatalError)."""
        self._errors.append(error)
        self._changed.set()

    def rebalance(self, keep: Iterable[Partition] | None = None) -> None:
        """An eager rebalance, as librdkafka serves it inside ``consume``: commit, revoke every
        partition, then assign ``keep`` (default: the same partitions again).

        Records handed out but not stored go back to the front of the queue for the kept
        partitions (librdkafka reads on from the committed offset); queued records of other
        partitions move to :attr:`given_away`. A pause stays in force for the new assignment.
        """
        self._check_open("rebalance")
        self.commits.append(trio.current_time())
        self._journal.append(f"{self._name}.rebalance")
        queued = [*self._records]
        revoked = {_partition(record) for record in queued} | set(self._unstored)
        kept = revoked if keep is None else set(keep)
        self._revoked |= revoked
        # Read again: new objects with the same values, as the adapter's would be.
        again = [attrs.evolve(record) for record in self._unstored_records()]
        self._unstored.clear()
        self._records = collections.deque(
            record for record in [*again, *queued] if _partition(record) in kept
        )
        self.given_away.extend(record for record in queued if _partition(record) not in kept)
        self._changed.set()

    def _unstored_records(self) -> list[Record]:
        return [record for records in self._unstored.values() for record in records]

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        self._check_open("consume")
        await trio.lowlevel.checkpoint_if_cancelled()
        self.consume_calls.value += 1
        self.consumed_at.append(trio.current_time())
        self._journal.append(f"{self._name}.consume")
        deadline = trio.current_time() + timeout
        self._consuming = True
        try:
            while not self._errors and not self._ready():
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
        while self._ready() and len(batch) < max_messages:
            record = self._records.popleft()
            self._unstored[_partition(record)].append(record)
            batch.append(record)
        self.handed_out.extend(batch)
        return batch

    def _ready(self) -> bool:
        return self._assigned and not self._paused and bool(self._records)

    def pause(self) -> None:
        self._check_open("pause")
        if not self._paused:
            self._paused = True
            self.pauses.append(trio.current_time())
            self._journal.append(f"{self._name}.pause")

    def resume(self) -> None:
        self._check_open("resume")
        if self._paused:
            self._paused = False
            self.resumes.append(trio.current_time())
            self._journal.append(f"{self._name}.resume")
            self._changed.set()

    def take_revoked(self) -> frozenset[Partition]:
        self._check_open("take_revoked")
        revoked, self._revoked = frozenset(self._revoked), set()
        return revoked

    def store_offset(self, record: Record) -> None:
        self._check_open("store_offset")
        unstored = self._unstored.get(_partition(record))
        if unstored is None or record not in unstored:
            # Revoked meanwhile (the adapter logs "offset not stored"): its next owner reads it.
            self._journal.append(f"{self._name}.store_offset {record.offset} refused")
            return
        del unstored[: unstored.index(record) + 1]
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
        self._check_open("commit")
        await trio.lowlevel.checkpoint()
        self.commits.append(trio.current_time())
        self._journal.append(f"{self._name}.commit")

    async def close(self) -> None:
        self._check_open("close")
        if self._consuming:
            raise AssertionError("close() while consume() runs (librdkafka#2333)")
        self.closes.append(trio.current_time())
        self._journal.append(f"{self._name}.close")
        await trio.lowlevel.checkpoint()

    def _check_open(self, call: str) -> None:
        if self.closes:
            raise PortClosed(f"{self._name}.{call}() after close()")


def _partition(record: Record) -> Partition:
    return (record.topic, record.partition)


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
