"""A dead-letter topic that cannot be written for longer than ``max.poll.interval.ms``: the
consumer pauses its assignment and keeps polling, so it stays in its group; nothing is lost,
skipped or reordered, and it carries on once the topic is writable again.

The service runs with its producers wrapped (``dead_letter_outage_service``): dead-letter
messages fail, retriably, while a flag file exists. Its consumer is the real adapter on the
real broker with ``KAFKA_MAX_POLL_INTERVAL_MS`` far below the outage, so a consumer that
stopped polling would be dropped from the group (librdkafka leaves it itself and logs the
partitions lost or revoked).
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from support.brokers import Broker
from support.kafka_tools import KafkaTools
from support.services import ServiceProcess, Services

MAX_POLL_INTERVAL_MS = 2000

#: How long the dead-letter topic stays unwritable: three times the poll interval.
OUTAGE_SECONDS = 3 * MAX_POLL_INTERVAL_MS / 1000

#: Valid events behind the poison record on its partition.
FOLLOWERS = 20

#: Log lines that would mean the member lost (or gave up) its partitions.
ASSIGNMENT_CHANGES = {"partitions revoked", "partitions lost", "actor consumer failed"}


def event_bytes(user_id: str, n: int) -> tuple[str, bytes]:
    """A valid event's id and JSON, as another producer would write it."""
    now = datetime.datetime.now(datetime.UTC)
    event_id = str(uuid.uuid4())
    event = {
        "eventId": event_id,
        "userId": user_id,
        "eventType": "LOGIN",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "payload": {"n": n},
    }
    return event_id, json.dumps(event).encode()


def lines(app: ServiceProcess, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return [line for line in app.log_lines() if match(line)]


def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def committed(bootstrap_servers: str, group: str, topic: str, partition: int) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])
    answer = admin.list_consumer_group_offsets([request], request_timeout=5)[group].result()
    [position] = answer.topic_partitions
    return int(position.offset)


def source_offset(message: Message) -> bytes:
    return dict(message.headers() or [])["dlq.source.offset"]


def test_unwritable_dead_letter_topic_pauses_without_leaving_the_group(
    service: Services, kafka: KafkaTools, broker: Broker, group: str, tmp_path: Path
) -> None:
    """No rebalance, no lost or skipped record, recovery once the DLQ is writable again."""
    flag = tmp_path / "dlq-blocked"
    dlq_topic = f"it-dlq-{uuid.uuid4().hex}"
    app = service.spawn(
        {
            "KAFKA_DLQ_TOPIC": dlq_topic,
            "KAFKA_MAX_POLL_INTERVAL_MS": str(MAX_POLL_INTERVAL_MS),
            "DLQ_BLOCKED_FILE": str(flag),
        },
        module="tests.support.dead_letter_outage_service",
    )
    assert isinstance(app, ServiceProcess)
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = [event_bytes(user, n) for n in range(FOLLOWERS)]
    flag.touch()
    sent = kafka.produce(
        app.topic, [(user.encode(), b"not json"), *[(user.encode(), v) for _, v in events]]
    )
    partition, poison_offset = sent[0]
    assert {position[0] for position in sent} == {partition}

    eventually(
        lambda: bool(lines(app, lambda line: line["msg"] == "consumption paused")),
        10,
        "the consumer to pause",
    )
    held_until = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < held_until:
        health = app.health().json()
        assert health["actors"]["consumer"]["state"] == "degraded", health
        listed = {event["eventId"] for event in app.processed()}
        assert not listed & {event_id for event_id, _ in events}, "a record passed the poison"
        time.sleep(0.5)
    flag.unlink()

    listing = app.wait_processed({event_id for event_id, _ in events}, timeout=15)
    mine = [event for event in listing if event["userId"] == user]
    assert [event["payload"]["n"] for event in mine] == list(range(FOLLOWERS))
    dead_letters = kafka.read(dlq_topic, count=1, timeout=10)
    assert [source_offset(m) for m in dead_letters] == [str(poison_offset).encode()]
    eventually(lambda: app.health().status_code == 200, 10, "the service to be healthy again")

    assert lines(app, lambda line: line["msg"] in ASSIGNMENT_CHANGES) == []
    assert len(lines(app, lambda line: line["msg"] == "partitions assigned")) == 1
    # The backlog fetched before the pause may hold every record, so the handler can finish
    # before the poll loop's next turn resumes the assignment (up to one consume() later).
    eventually(
        lambda: bool(lines(app, lambda line: line["msg"] == "consumption resumed")),
        5,
        "the consumer to resume",
    )
    failures = lines(app, lambda line: line["msg"] == "dead-letter write failed")
    assert len(failures) >= 3, "the dead-letter topic was not held unwritable"

    assert app.terminate() == 0, app.log_tail()
    assert committed(broker.bootstrap_servers, group, app.topic, partition) == sent[-1][1] + 1
