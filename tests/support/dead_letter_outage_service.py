"""The real service with one injected fault: its dead-letter topic cannot be written while a
flag file exists.

The service's ``main`` takes the Kafka ports it should use; this module passes the real
confluent-kafka adapters with each producer wrapped: a message for ``KAFKA_DLQ_TOPIC`` produced
while the file named by ``DLQ_BLOCKED_FILE`` exists never reaches the broker, and the next
``poll`` reports it as librdkafka reports a message no broker took in time (``_MSG_TIMED_OUT``,
retriable). Everything else, the consumer included, is the real adapter on the real broker, so
the test sees what the consumer does with its group while the dead-letter writer retries.

Synopsis::

    spawn_module(services, "tests.support.dead_letter_outage_service", env={...})
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import attrs

from actors.__main__ import main
from actors.kafka.ports import DeliveryReport, Headers, KafkaFailure, KafkaPorts, ProducerPort
from actors.runtime.settings import KafkaSettings

TIMED_OUT = KafkaFailure(code="_MSG_TIMED_OUT", reason="Local: Message timed out", retriable=True)


class _BlockableProducer:
    """A :class:`ProducerPort` that fails dead-letter messages while the flag file exists."""

    def __init__(self, producer: ProducerPort, dlq_topic: str | None, flag: Path) -> None:
        self._producer = producer
        self._dlq_topic = dlq_topic
        self._flag = flag
        self._failed: list[Callable[[DeliveryReport], None]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        if topic == self._dlq_topic and self._flag.exists():
            self._failed.append(on_delivery)
            return
        self._producer.produce(
            topic=topic, key=key, value=value, headers=headers, on_delivery=on_delivery
        )

    async def poll(self, timeout: float) -> None:
        await self._producer.poll(timeout)
        failed, self._failed = self._failed, []
        for on_delivery in failed:
            on_delivery(TIMED_OUT)


def blockable_ports(settings: KafkaSettings) -> KafkaPorts:
    from actors.kafka.adapters import kafka_ports

    real = kafka_ports(settings)
    flag = Path(os.environ["DLQ_BLOCKED_FILE"])
    return attrs.evolve(
        real,
        open_producer=lambda: _BlockableProducer(real.open_producer(), settings.dlq_topic, flag),
    )


if __name__ == "__main__":
    sys.exit(main(kafka_ports=blockable_ports))
