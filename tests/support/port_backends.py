"""The two backends of the port contract suite (tests/contract): the in-memory fakes the actor
tests use, joined by a small in-memory cluster, and the confluent-kafka adapters on a real broker.

Each backend hands out clients of the ports on one fresh topic; ``tests/contract/conftest.py``
parametrizes the suite over them.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
import trio.testing
from confluent_kafka.admin import AdminClient, NewTopic
from fakes import FakeConsumer, FakeProducer

from actors.devtools.local_broker import free_port
from actors.kafka.config import consumer_config, producer_config
from actors.kafka.consumer import KafkaConsumer
from actors.kafka.ports import (
    ConsumerPort,
    DeliveryReport,
    Headers,
    KafkaFailure,
    Partition,
    Placed,
    PortClosed,
    ProducerPort,
    Record,
)
from actors.kafka.producer import KafkaProducer
from actors.runtime.settings import KafkaSettings, load_settings

__all__ = ["KAFKA_TEST_TIMEOUT", "Backend", "FakeBackend", "KafkaBackend"]

#: Partitions of each test's topic.
PARTITIONS = 2

#: What librdkafka reports for a message that found no broker within ``message.timeout.ms``.
TIMED_OUT = KafkaFailure(code="_MSG_TIMED_OUT", reason="Local: Message timed out", retriable=True)

#: Bound on one test on the real broker (a group join alone takes about a second on Tansu).
KAFKA_TEST_TIMEOUT = 60


class Backend(Protocol):
    """What a test needs from a backend: clients of the ports on one fresh topic."""

    name: str
    topic: str

    def producer(self) -> ProducerPort:
        """A producer that delivers to ``topic``."""
        ...

    def unreachable_producer(self) -> ProducerPort:
        """A producer whose messages cannot reach a broker and time out after about 1 s."""
        ...

    def consumer(self, group: str) -> ConsumerPort:
        """A member of ``group`` subscribed to ``topic``."""
        ...


# --- fakes -----------------------------------------------------------------------------------


@attrs.define
class _Log:
    """The fake backend's topic: records per partition, and each group's committed offsets."""

    records: dict[int, list[Record]] = attrs.Factory(lambda: collections.defaultdict(list))
    committed: dict[tuple[str, int], int] = attrs.Factory(dict)


class _ClusterProducer:
    """A :class:`FakeProducer` whose deliveries land in the fake topic, partitioned by key."""

    def __init__(self, log: _Log, topic: str, consumers: list[_ClusterConsumer]) -> None:
        self._log = log
        self._topic = topic
        self._consumers = consumers
        self._fakes = [FakeProducer(partition=p, name=f"producer[{p}]") for p in range(PARTITIONS)]

    @property
    def connected(self) -> bool | None:
        return self._fakes[0].connected

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        def land(report: DeliveryReport) -> None:
            if isinstance(report, Placed):
                record = Record(
                    topic=topic,
                    partition=report.partition,
                    offset=report.offset,
                    key=key,
                    value=value,
                    headers=tuple(headers),
                )
                self._log.records[report.partition].append(record)
                for consumer in self._consumers:
                    consumer.arrived(record)
            on_delivery(report)

        partition = sum(key or b"") % PARTITIONS
        self._fakes[partition].produce(
            topic=topic, key=key, value=value, headers=headers, on_delivery=land
        )

    async def poll(self, timeout: float) -> None:
        if self._fakes[0].discarded_at is not None:  # as each fake would, but not in a group
            raise PortClosed("producer.poll() after discard()")
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for fake in self._fakes:
                    nursery.start_soon(self._poll_one, fake, timeout, nursery.cancel_scope)

    @staticmethod
    async def _poll_one(fake: FakeProducer, timeout: float, done: trio.CancelScope) -> None:
        before = fake.delivered.value
        await fake.poll(timeout)
        if fake.delivered.value > before:
            done.cancel()

    async def flush(self, timeout: float) -> int:
        return sum([await fake.flush(timeout) for fake in self._fakes])

    async def discard(self, timeout: float) -> None:
        for fake in self._fakes:
            await fake.discard(timeout)


class _ClusterConsumer:
    """A :class:`FakeConsumer` over the fake topic: it starts at its group's committed offsets
    and writes them back on commit and close (committed = last stored + 1)."""

    def __init__(self, log: _Log, topic: str, group: str) -> None:
        self._log = log
        self._group = group
        backlog = [
            record
            for partition in range(PARTITIONS)
            for record in log.records[partition]
            if record.offset >= log.committed.get((group, partition), 0)
        ]
        self.fake = FakeConsumer(backlog)
        self._topic = topic

    def arrived(self, record: Record) -> None:
        if not self.fake.closes:
            self.fake.add(record)

    @property
    def connected(self) -> bool | None:
        return self.fake.connected

    @property
    def assigned(self) -> bool:
        return self.fake.assigned

    @property
    def paused(self) -> bool:
        return self.fake.paused

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        return await self.fake.consume(max_messages, timeout)

    def pause(self) -> None:
        self.fake.pause()

    def resume(self) -> None:
        self.fake.resume()

    def take_revoked(self) -> frozenset[Partition]:
        return self.fake.take_revoked()

    def store_offset(self, record: Record) -> None:
        self.fake.store_offset(record)

    async def commit(self) -> None:
        await self.fake.commit()
        self._write_back()

    async def close(self) -> None:
        await self.fake.close()
        self._write_back()

    def _write_back(self) -> None:
        for stored in self.fake.stored:
            self._log.committed[(self._group, stored.partition)] = stored.offset + 1


class FakeBackend:
    """The contract's fake backend: the ports' in-memory doubles joined by one fake topic."""

    name = "fake"

    def __init__(self) -> None:
        self.topic = "contract"
        self._log = _Log()
        self._consumers: list[_ClusterConsumer] = []

    def producer(self) -> ProducerPort:
        return _ClusterProducer(self._log, self.topic, self._consumers)

    def unreachable_producer(self) -> ProducerPort:
        producer = FakeProducer(delivery_latency=1.0)
        producer.fail_deliveries_until(TIMED_OUT, float("inf"))
        return producer

    def consumer(self, group: str) -> ConsumerPort:
        consumer = _ClusterConsumer(self._log, self.topic, group)
        self._consumers.append(consumer)
        return consumer


# --- the real adapters -----------------------------------------------------------------------


class KafkaBackend:
    """The confluent-kafka adapters on a real broker, configured as the service configures them."""

    name = "kafka"

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self.topic = f"contract-{uuid.uuid4().hex}"
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        futures = admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS)])
        futures[self.topic].result(timeout=10)

    def _settings(self, bootstrap_servers: str, **extra: str) -> KafkaSettings:
        return load_settings(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
                "KAFKA_TOPIC": self.topic,
                "KAFKA_SESSION_TIMEOUT_MS": "1000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
                "KAFKA_FETCH_WAIT_MAX_MS": "100",
                **extra,
            }
        ).kafka

    def producer(self) -> ProducerPort:
        return KafkaProducer(producer_config(self._settings(self._bootstrap_servers)))

    def unreachable_producer(self) -> ProducerPort:
        nowhere = f"127.0.0.1:{free_port()}"
        settings = self._settings(nowhere, KAFKA_DELIVERY_TIMEOUT_MS="1000")
        return KafkaProducer(producer_config(settings))

    def consumer(self, group: str) -> ConsumerPort:
        settings = self._settings(self._bootstrap_servers, KAFKA_CONSUMER_GROUP=group)
        return KafkaConsumer(consumer_config(settings), self.topic)
