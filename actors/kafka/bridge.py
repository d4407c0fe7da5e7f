"""The thread bridge: librdkafka's blocking calls in a worker thread, and what its callbacks
tell about the brokers.

librdkafka's blocking calls (``poll``, ``consume``, ``flush``, ``commit``, ``close``) run in a
worker thread through :func:`trio.to_thread.run_sync`, one :class:`trio.CapacityLimiter` of 1 per
client, and each call waits at most :data:`MAX_BLOCKING_SECONDS` so that cancellation is noticed
quickly.

Callbacks (delivery reports, rebalances, errors, statistics) run on the worker thread that is
inside ``poll``/``consume``/``flush``. They only record facts in plain attributes or hand
values to the caller's callback; they never call back into trio and never poll.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from confluent_kafka import KafkaError

from actors.kafka.ports import ClientStatistics, KafkaFailure, KafkaFatalError
from actors.runtime.logs import log_fields

__all__ = [
    "MAX_BLOCKING_SECONDS",
    "Bridge",
    "Connectivity",
    "failure_from",
    "known",
    "slices",
    "statistics_from",
]

log = logging.getLogger("actors.kafka")

#: Longest a single blocking librdkafka call may run in the worker thread.
MAX_BLOCKING_SECONDS = 0.5

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


def failure_from(error: KafkaError) -> KafkaFailure:
    return KafkaFailure(
        code=error.name(),
        reason=error.str(),
        retriable=bool(error.retriable()) or error.code() in _TRANSIENT,
        fatal=bool(error.fatal()),
    )


class Bridge:
    """Runs one client's blocking calls in a worker thread, one call at a time."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
        )


class Connectivity:
    """What the client's callbacks tell about the brokers; written from the worker thread.

    Attribute writes are atomic in CPython, and the trio side only reads, so no lock is needed.
    """

    def __init__(self) -> None:
        self.connected: bool | None = None
        self.fatal: KafkaError | None = None
        self.statistics: ClientStatistics | None = None

    def on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.connected = False
        log_fields(
            log, logging.WARNING, "kafka client error", code=error.name(), reason=error.str()
        )

    def on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        brokers = stats.get("brokers", {}).values()
        # Logical brokers (the group coordinator alias) mirror a real one; internal ones are
        # librdkafka's own. Only configured and learned brokers say whether a broker is reachable.
        real = [broker for broker in brokers if broker.get("source") in ("configured", "learned")]
        self.connected = any(broker.get("state") == "UP" for broker in real)
        self.statistics = statistics_from(stats)

    def callbacks(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "stats_cb": self.on_stats}

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise KafkaFatalError(f"{self.fatal.name()}: {self.fatal.str()}")


def statistics_from(stats: dict[str, Any]) -> ClientStatistics:
    """The values the metrics export, out of one parsed statistics report."""
    lag: dict[tuple[str, int], int] = {}
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition in topic_stats.get("partitions", {}).values():
            number = partition.get("partition", -1)
            if number < 0 or not partition.get("desired"):  # -1: librdkafka's unassigned queue
                continue
            known_lag = _partition_lag(partition)
            if known_lag is not None:
                lag[(topic, number)] = known_lag
    return ClientStatistics(
        queued_messages=stats.get("msg_cnt", 0),
        assigned_partitions=stats.get("cgrp", {}).get("assignment_size", 0),
        lag=lag,
    )


def _partition_lag(partition: dict[str, Any]) -> int | None:
    """Messages after the position the store confirmed, ``None`` while that is unknown.

    librdkafka's ``consumer_lag_stored`` is the high watermark minus the stored offset (what
    the store confirmed: offsets are stored only then), ``consumer_lag`` the same from the
    committed offset; each is -1 until librdkafka knows both ends. Before anything was stored
    or committed, consumption starts at the earliest offset (``auto.offset.reset``), so the
    lag is the partition's whole length. The high watermark comes with every fetch response,
    so it is as fresh as the last fetch (see README: it is right on Tansu, whose ListOffsets
    answer is not).
    """
    high = partition.get("hi_offset", -1)
    if high < 0:
        return None
    for key in ("consumer_lag_stored", "consumer_lag"):
        value = partition.get(key, -1)
        if value >= 0:
            return int(value)
    low = partition.get("lo_offset", -1)
    return max(0, high - low) if low >= 0 else None


def slices(timeout: float) -> list[float]:
    """Split a long wait into calls of at most MAX_BLOCKING_SECONDS."""
    count = max(1, math.ceil(timeout / MAX_BLOCKING_SECONDS))
    return [timeout / count] * count


def known(value: T | None) -> T:
    """Message fields that librdkafka always sets on a delivered or consumed message."""
    if value is None:
        raise KafkaFatalError("librdkafka returned a message without topic, partition or offset")
    return value
