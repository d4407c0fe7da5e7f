"""confluent-kafka behind the ports: client settings and the thread bridge.

This is the only module that imports ``confluent_kafka``. librdkafka's blocking calls (``poll``,
``consume``, ``flush``, ``commit``, ``close``) run in a worker thread through
:func:`trio.to_thread.run_sync`, one :class:`trio.CapacityLimiter` of 1 per client, and each call
waits at most :data:`MAX_BLOCKING_SECONDS` so that cancellation is noticed quickly.

Callbacks (delivery reports, rebalances, errors, statistics) run on the worker thread that is
inside ``poll``/``consume``/``flush``. They only record facts in plain attributes or hand
values to the caller's callback; they never call back into trio and never poll.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from actors.logs import log_fields
from actors.ports import (
    DeliveryReport,
    Headers,
    KafkaFailure,
    KafkaFatalError,
    Placed,
    ProduceRejected,
    Record,
)
from actors.settings import Settings

__all__ = [
    "MAX_BLOCKING_SECONDS",
    "KafkaConsumer",
    "KafkaProducer",
    "consumer_config",
    "create_topic",
    "producer_config",
]

log = logging.getLogger(__name__)

#: Longest a single blocking librdkafka call may run in the worker thread.
MAX_BLOCKING_SECONDS = 0.5

#: How often librdkafka reports statistics; they tell whether a broker connection is up.
STATISTICS_INTERVAL_MS = 1000

#: Upper bound of librdkafka's reconnect backoff.
RECONNECT_BACKOFF_MAX_MS = 1000

#: Errors worth another try even when librdkafka does not flag them retriable: they mean
#: "the broker was not reachable or not ready", not "this message is wrong".
_TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._QUEUE_FULL,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        # Only our own purge of a producer being replaced makes these: the message was dropped
        # on our side, not refused, and a new producer may well deliver it.
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
    }
)

T = TypeVar("T")


# --- settings --------------------------------------------------------------------------------


def client_config(settings: Settings) -> dict[str, Any]:
    """Settings every client shares: where the brokers are and how to authenticate."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
        "logger": logging.getLogger("actors.kafka.librdkafka"),
        # librdkafka backs off reconnects up to 10 s by default; after an outage that delays
        # recovery by as much. One second keeps recovery quick at a small cost in retries.
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password,
        "ssl.ca.location": settings.ssl_ca_location,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """An idempotent producer: no duplicates or reordering from librdkafka's own retries."""
    return client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": settings.delivery_timeout_ms,
        "queue.buffering.max.messages": settings.producer_queue_messages,
        "linger.ms": 5,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    """At-least-once: offsets are stored by the actor after the store confirmed, then
    auto-committed in the background and committed explicitly on revoke and close."""
    return client_config(settings) | {
        "group.id": settings.consumer_group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
    }


# --- shared pieces ---------------------------------------------------------------------------


def failure_from(error: KafkaError) -> KafkaFailure:
    return KafkaFailure(
        code=error.name(),
        reason=error.str(),
        retriable=bool(error.retriable()) or error.code() in _TRANSIENT,
        fatal=bool(error.fatal()),
    )


class _Bridge:
    """Runs one client's blocking calls in a worker thread, one call at a time."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
        )


class _Connectivity:
    """What the client's callbacks tell about the brokers; written from the worker thread.

    Attribute writes are atomic in CPython, and the trio side only reads, so no lock is needed.
    """

    def __init__(self) -> None:
        self.connected: bool | None = None
        self.fatal: KafkaError | None = None

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.connected = False
        log_fields(
            log, logging.WARNING, "kafka client error", code=error.name(), reason=error.str()
        )

    def on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {}).values()
        # Logical brokers (the group coordinator alias) mirror a real one; internal ones are
        # librdkafka's own. Only configured and learned brokers say whether a broker is reachable.
        real = [broker for broker in brokers if broker.get("source") in ("configured", "learned")]
        self.connected = any(broker.get("state") == "UP" for broker in real)

    def callbacks(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "stats_cb": self.on_stats}

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise KafkaFatalError(f"{self.fatal.name()}: {self.fatal.str()}")


def _slices(timeout: float) -> list[float]:
    """Split a long wait into calls of at most MAX_BLOCKING_SECONDS."""
    count = max(1, math.ceil(timeout / MAX_BLOCKING_SECONDS))
    return [timeout / count] * count


# --- producer --------------------------------------------------------------------------------


class KafkaProducer:
    """:class:`actors.ports.ProducerPort` over a confluent-kafka ``Producer``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._connectivity = _Connectivity()
        self._producer = Producer(config | self._connectivity.callbacks())
        self._bridge = _Bridge()

    @property
    def connected(self) -> bool | None:
        return self._connectivity.connected

    def produce(
        self,
        *,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: Callable[[DeliveryReport], None],
    ) -> None:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                on_delivery(failure_from(error))
            else:
                on_delivery(
                    Placed(partition=_known(message.partition()), offset=_known(message.offset()))
                )

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers) or None, on_delivery=report
            )
        except KafkaException as error:
            raise ProduceRejected(failure_from(error.args[0])) from None

    async def poll(self, timeout: float) -> None:
        """Serve callbacks for up to ``timeout`` seconds.

        Raises:
            KafkaFatalError: librdkafka reported a fatal error (e.g. the idempotent producer's
                state was lost); the client must be replaced.
        """
        await self._bridge.call(self._producer.poll, min(timeout, MAX_BLOCKING_SECONDS))
        self._connectivity.raise_if_fatal()

    async def flush(self, timeout: float) -> int:
        remaining = len(self._producer)
        for piece in _slices(timeout):
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
        await self._bridge.call(self._producer.purge)
        await self.flush(timeout)
        await self._bridge.call(self._producer.close, abandon_on_cancel=True)


# --- consumer --------------------------------------------------------------------------------


class KafkaConsumer:
    """:class:`actors.ports.ConsumerPort` over a confluent-kafka ``Consumer``, subscribed to
    ``topic`` on creation."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._connectivity = _Connectivity()
        self._consumer = Consumer(config | self._connectivity.callbacks())
        self._bridge = _Bridge()
        self._assigned = False
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    @property
    def connected(self) -> bool | None:
        return self._connectivity.connected

    @property
    def assigned(self) -> bool:
        return self._assigned

    # Rebalance callbacks run on the worker thread inside consume(); calling the client
    # synchronously from here is allowed (and is the only safe way to commit before revoke).

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        log_fields(log, logging.INFO, "partitions assigned", partitions=_describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit_now()
        self._assigned = False
        log_fields(log, logging.INFO, "partitions revoked", partitions=_describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = False
        log_fields(log, logging.WARNING, "partitions lost", partitions=_describe(partitions))

    def _commit_now(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            if error.args[0].code() != KafkaError._NO_OFFSET:
                log_fields(log, logging.WARNING, "commit failed", reason=error.args[0].str())

    async def consume(self, max_messages: int, timeout: float) -> list[Record]:
        messages = await self._bridge.call(
            self._consumer.consume, max_messages, min(timeout, MAX_BLOCKING_SECONDS)
        )
        self._connectivity.raise_if_fatal()
        return [record for message in messages if (record := self._record(message))]

    def _record(self, message: Message) -> Record | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaFatalError(f"{error.name()}: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF:
                log_fields(
                    log, logging.WARNING, "consume error", code=error.name(), reason=error.str()
                )
            return None
        return Record(
            topic=_known(message.topic()),
            partition=_known(message.partition()),
            offset=_known(message.offset()),
            key=_as_bytes(message.key()),
            value=_as_bytes(message.value()),
            headers=tuple(
                (name, _as_bytes(value) or b"") for name, value in _header_pairs(message)
            ),
        )

    def store_offset(self, record: Record) -> None:
        position = TopicPartition(record.topic, record.partition, record.offset + 1)
        try:
            self._consumer.store_offsets(offsets=[position])
        except KafkaException as error:
            # The partition was revoked meanwhile; its new owner will read the record again.
            log_fields(
                log,
                logging.INFO,
                "offset not stored",
                partition=record.partition,
                offset=record.offset,
                reason=error.args[0].str(),
            )

    async def commit(self) -> None:
        await self._bridge.call(self._commit_now)

    async def close(self) -> None:
        """Commit, leave the group and free the client.

        Cancellation: the caller bounds and shields this call; if the bound expires the worker
        thread is abandoned (no other call may follow close anyway).
        """
        await self._bridge.call(self._close_now, abandon_on_cancel=True)

    def _close_now(self) -> None:
        self._commit_now()
        self._consumer.close()


def _known(value: T | None) -> T:
    """Message fields that librdkafka always sets on a delivered or consumed message."""
    if value is None:
        raise KafkaFatalError("librdkafka returned a message without topic, partition or offset")
    return value


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _header_pairs(message: Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _describe(partitions: Sequence[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]


# --- admin -----------------------------------------------------------------------------------


async def create_topic(settings: Settings, name: str, *, timeout: float = 3.0) -> bool:
    """Create ``name`` with the configured partitions; ``False`` if it already existed.

    Raises:
        KafkaException: the broker did not answer in ``timeout`` seconds or refused.
    """
    admin = AdminClient(client_config(settings))
    topic = NewTopic(
        name,
        num_partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
    )
    future = admin.create_topics([topic], request_timeout=timeout, operation_timeout=timeout)[name]
    # The future completes on the admin client's own thread: wake trio from there.
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    future.add_done_callback(lambda _: token.run_sync_soon(done.set))
    with trio.fail_after(timeout + 1):
        await done.wait()
    try:
        future.result()
    except KafkaException as error:
        if error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    return True
