"""Topic provisioning: create the service's topics if they are missing."""

from __future__ import annotations

import trio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from actors.kafka.config import client_config
from actors.runtime.settings import KafkaSettings

__all__ = ["create_topic"]


async def create_topic(settings: KafkaSettings, name: str, *, timeout: float = 3.0) -> bool:
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
