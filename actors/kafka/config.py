"""librdkafka configuration for each kind of client, from the service's Kafka settings.

Each builder returns a plain ``dict`` of librdkafka properties; what every client shares is in
:func:`client_config`, and each role adds only what makes it what it is (an idempotent producer,
an at-least-once consumer).
"""

from __future__ import annotations

import logging
from typing import Any

from actors.runtime.settings import KafkaSettings

__all__ = ["client_config", "consumer_config", "producer_config"]

#: How often librdkafka reports statistics; they tell whether a broker connection is up.
STATISTICS_INTERVAL_MS = 1000

#: Upper bound of librdkafka's reconnect backoff.
RECONNECT_BACKOFF_MAX_MS = 1000


def client_config(settings: KafkaSettings) -> dict[str, Any]:
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


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """An idempotent producer: no duplicates or reordering from librdkafka's own retries."""
    return client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": settings.delivery_timeout_ms,
        "queue.buffering.max.messages": settings.producer_queue_messages,
        "linger.ms": 5,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
    }


def consumer_config(settings: KafkaSettings) -> dict[str, Any]:
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
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
    }
