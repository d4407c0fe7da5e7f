"""The producer port over a confluent-kafka ``Producer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from actors.kafka.bridge import (
    MAX_BLOCKING_SECONDS,
    Bridge,
    Connectivity,
    failure_from,
    known,
    slices,
)
from actors.kafka.ports import (
    ClientStatistics,
    DeliveryReport,
    Headers,
    Placed,
    PortClosed,
    ProduceRejected,
)

__all__ = ["KafkaProducer"]


class KafkaProducer:
    """:class:`actors.kafka.ports.ProducerPort` over a confluent-kafka ``Producer``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._connectivity = Connectivity()
        self._producer = Producer(config | self._connectivity.callbacks())
        self._bridge = Bridge()
        self._discarded = False

    @property
    def connected(self) -> bool | None:
        return self._connectivity.connected

    @property
    def statistics(self) -> ClientStatistics | None:
        return self._connectivity.statistics

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

        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                on_delivery(failure_from(error))
            else:
                on_delivery(
                    Placed(partition=known(message.partition()), offset=known(message.offset()))
                )

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers) or None, on_delivery=report
            )
        except KafkaException as error:
            raise ProduceRejected(failure_from(error.args[0])) from None

    async def poll(self, timeout: float) -> None:
        """Serve callbacks for up to ``timeout`` seconds.

        ``poll(0)`` never blocks, so it runs on trio's thread: no worker-thread hop, which is
        what a publisher with messages in flight calls over and over. Callbacks then run on
        trio's thread too; they only record facts, wherever they run.

        Raises:
            KafkaFatalError: librdkafka reported a fatal error (e.g. the idempotent producer's
                state was lost); the client must be replaced.
        """
        self._check_open("poll")
        if timeout <= 0:
            await trio.lowlevel.checkpoint()
            self._producer.poll(0)
        else:
            await self._bridge.call(self._producer.poll, min(timeout, MAX_BLOCKING_SECONDS))
        self._connectivity.raise_if_fatal()

    async def flush(self, timeout: float) -> int:
        self._check_open("flush")
        return await self._flush(timeout)

    async def _flush(self, timeout: float) -> int:
        remaining = len(self._producer)
        for piece in slices(timeout):
            remaining = await self._bridge.call(self._producer.flush, piece)
            if remaining == 0:
                break
        return remaining

    async def discard(self, timeout: float) -> None:
        """Purge queued and in-flight messages, serve their reports, then close the client.

        ``close()`` joins librdkafka's threads in the worker thread, not on trio's thread (as
        the garbage collector would); after the purge it has nothing left to flush and returns
        at once, even while the broker does not answer.

        Cancellation: the caller bounds and shields this call; if the bound expires during
        ``close()`` the worker thread is abandoned (no other call may follow anyway).
        """
        self._check_open("discard")
        self._discarded = True
        await self._bridge.call(self._producer.purge)
        await self._flush(timeout)
        await self._bridge.call(self._producer.close, abandon_on_cancel=True)

    def _check_open(self, call: str) -> None:
        if self._discarded:
            raise PortClosed(f"producer.{call}() after discard()")
