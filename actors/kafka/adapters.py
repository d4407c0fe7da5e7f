"""The confluent-kafka adapters as one bundle of ports, built from the Kafka settings."""

from __future__ import annotations

from functools import partial

from actors.kafka.admin import create_topic
from actors.kafka.config import consumer_config, producer_config
from actors.kafka.consumer import KafkaConsumer
from actors.kafka.ports import KafkaPorts
from actors.kafka.producer import KafkaProducer
from actors.runtime.settings import KafkaSettings

__all__ = ["kafka_ports"]


def kafka_ports(settings: KafkaSettings) -> KafkaPorts:
    """Ports backed by confluent-kafka, built from ``settings``."""
    return KafkaPorts(
        open_producer=lambda: KafkaProducer(producer_config(settings)),
        open_consumer=lambda: KafkaConsumer(consumer_config(settings), settings.topic),
        create_topic=partial(create_topic, settings),
    )
