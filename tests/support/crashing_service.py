"""The real service with one injected fault: its consumer fails on records that carry a marker.

The service's ``main`` takes the Kafka ports it should use; this module passes the real
confluent-kafka adapters with the consumer wrapped, so that a ``consume()`` that returns a
record whose value contains :data:`MARKER` raises ``RuntimeError``. That is an unexpected
exception inside the consumer actor, which the supervisor must handle by restarting it; the
record's offset was never stored, so the restarted consumer reads it again.

With ``CRASH_ONCE_FILE`` set, only the record read while that file exists fails, and the file
is removed: the crash happens once and the redelivered record is then processed normally.

Synopsis::

    spawn_module(services, "tests.support.crashing_service", env={...})
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs

from actors.__main__ import main
from actors.kafka.ports import ConsumerPort, KafkaPorts, Record
from actors.runtime.settings import KafkaSettings

MARKER = b"crash-me"


def _should_crash(record: Record) -> bool:
    if record.value is None or MARKER not in record.value:
        return False
    once = os.environ.get("CRASH_ONCE_FILE")
    if not once:
        return True
    try:
        Path(once).unlink()
    except FileNotFoundError:
        return False
    return True


class _CrashingConsumer:
    """A :class:`ConsumerPort` that passes everything through but fails on a marked record."""

    def __init__(self, consumer: ConsumerPort) -> None:
        self._consumer = consumer

    def __getattr__(self, name: str) -> object:
        return getattr(self._consumer, name)

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        records = await self._consumer.consume(max_messages, timeout)
        for record in records:
            if _should_crash(record):
                raise RuntimeError(
                    f"injected failure at partition {record.partition} offset {record.offset}"
                )
        return records


def crashing_ports(settings: KafkaSettings) -> KafkaPorts:
    from actors.kafka.adapters import kafka_ports

    real = kafka_ports(settings)
    return attrs.evolve(real, open_consumer=lambda: _CrashingConsumer(real.open_consumer()))


if __name__ == "__main__":  # only then: importing MARKER from a test must not start anything
    sys.exit(main(kafka_ports=crashing_ports))
