"""Kafka clients of the tests' own, sharing nothing with the service but the broker.

Synopsis::

    wait_for_broker("127.0.0.1:9092")               # a metadata answer, or the test fails
    kafka = KafkaTools("127.0.0.1:9092")
    kafka.produce(topic, [(b"u1", b"not json")])
    messages = kafka.read(topic, count=1)
    committed_offsets("127.0.0.1:9092", group, topic)   # {partition: offset}
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

__all__ = ["KafkaTools", "committed_offsets", "header_dict", "wait_for_broker"]


def wait_for_broker(bootstrap_servers: str, timeout: float = 20.0) -> None:
    """Poll ``list_topics()`` until the broker answers; fails the test after ``timeout``."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=2)
        except KafkaException as error:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"broker {bootstrap_servers} did not answer list_topics() within "
                    f"{timeout:g} s: {error}",
                    pytrace=False,
                )
            time.sleep(0.05)
        else:
            return


class KafkaTools:
    """A producer and readers that share nothing with the service but the broker."""

    def __init__(self, bootstrap_servers: str, *, message_max_bytes: int | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        # Idempotent so that messages of one key land in the order they were produced.
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
        }
        if message_max_bytes is not None:
            config["message.max.bytes"] = message_max_bytes
        self._producer = Producer(config)

    def produce(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], timeout: float = 10
    ) -> list[tuple[int, int]]:
        """Put ``(key, value)`` pairs on ``topic`` as raw bytes, in order, and wait for the acks.

        Returns:
            ``(partition, offset)`` of each message, in the order given.
        """
        return self.produce_with_headers(
            topic, [(key, value, []) for key, value in messages], timeout
        )

    def produce_with_headers(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
        timeout: float = 10,
    ) -> list[tuple[int, int]]:
        """Like :meth:`produce`, for ``(key, value, headers)`` records."""
        reports: list[tuple[KafkaError | None, Message] | None] = [None] * len(records)

        def delivered(index: int, error: KafkaError | None, message: Message) -> None:
            reports[index] = (error, message)

        for index, (key, value, headers) in enumerate(records):
            self._producer.produce(
                topic,
                key=key,
                value=value,
                headers=headers or None,
                on_delivery=partial(delivered, index),
            )
        left = self._producer.flush(timeout)
        assert left == 0, f"{left} message(s) not delivered to {topic} within {timeout:g} s"
        positions = []
        for index, report in enumerate(reports):
            assert report is not None
            error, message = report
            assert error is None, f"the broker refused message {index} for {topic}: {error}"
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            positions.append((partition, offset))
        return positions

    def produce_events(self, topic: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Produce events as the service would: compact JSON, keyed by userId."""
        self.produce(
            topic,
            [
                (str(event["userId"]).encode(), json.dumps(event, separators=(",", ":")).encode())
                for event in events
            ],
        )

    def read(
        self,
        topic: str,
        *,
        count: int | None = None,
        until: Callable[[list[Message]], bool] | None = None,
        timeout: float = 10,
    ) -> list[Message]:
        """Read ``topic`` from the beginning of every partition until ``count`` messages (or
        ``until(messages)``) or ``timeout``; returns what was read.

        Uses its own group id, never committed, and assigns the partitions directly: no group
        join (which Tansu holds for a second), and nothing the service's group could see.
        """
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"it-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=5).topics[topic]
            assert metadata.error is None, f"topic {topic}: {metadata.error}"
            consumer.assign(
                [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            )
            messages: list[Message] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    assert message.error() is None, f"consume error: {message.error()}"
                    messages.append(message)
                if count is not None and len(messages) >= count:
                    break
                if until is not None and until(messages):
                    break
            return messages
        finally:
            consumer.close()

    def close(self) -> None:
        self._producer.flush(5)


def committed_offsets(bootstrap_servers: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions without a commit
    are left out), as the broker reports it now."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    partitions = admin.list_topics(topic, timeout=5).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, partition) for partition in partitions]
    )
    answer = admin.list_consumer_group_offsets([request], request_timeout=5)[group].result()
    return {
        position.partition: position.offset
        for position in answer.topic_partitions
        if position.error is None and position.offset >= 0
    }


def header_dict(message: Message) -> dict[str, bytes]:
    """A consumed message's headers by name (the last value of a repeated name wins)."""
    return {name: value for name, value in message.headers() or []}
