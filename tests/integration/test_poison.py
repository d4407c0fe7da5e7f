"""Poison messages from an independent producer: dead-lettered or logged and skipped, never fatal.

Each test starts its own service process (its stdout and its counters are asserted), produces
hostile records with a producer that shares nothing with the service, follows them with a valid
event on the same key (so on the same partition, after them), and checks what the service did
with each record: the dead-letter copy, the log line, the counters, the committed offset.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
from confluent_kafka import Message
from support.brokers import Broker
from support.events import encode, make_event, unique_user
from support.kafka_tools import KafkaTools, committed_offsets, header_dict
from support.services import ServiceProcess, Spawn
from support.waiting import wait_until

#: Bigger than librdkafka's default ``message.max.bytes`` (1 000 000): the poison producer
#: raises its own limit, and the broker must accept the record for the test to mean anything:
#: Apache Kafka's default broker limit (``message.max.bytes``, 1 048 588 bytes a batch) takes a
#: record of 1 MB (10**6 bytes), not one of 1 MiB. Tansu enforces no limit.
ONE_MEGABYTE = 1_000_000

#: Far deeper than Python's recursion limit: the decoder must fail cleanly, not crash.
DEEP_NESTING = 10_000

#: Log lines that would mean the consumer lost (or gave up) its partitions while handling poison.
ASSIGNMENT_CHANGES = {"partitions revoked", "partitions lost", "actor consumer failed"}


@attrs.frozen
class Poison:
    """One hostile record: what it is, its raw value, and words its skip reason must contain."""

    case: str
    value: bytes | None
    reasons: tuple[str, ...]


def event_bytes(**overrides: Any) -> bytes:
    """A valid event's JSON with some fields replaced (or removed, for a value of ``...``)."""
    event = make_event("poison-user") | overrides
    return encode({name: value for name, value in event.items() if value is not ...})


def deeply_nested_event() -> bytes:
    """An otherwise valid event whose payload nests ``DEEP_NESTING`` objects."""
    head, tail = event_bytes(payload={}).rsplit(b'"payload":{}', 1)
    return head + b'"payload":' + b'{"a":' * DEEP_NESTING + b"{}" + b"}" * DEEP_NESTING + tail


NOT_UTF8 = Poison("not UTF-8", b"\xff\xfe\x00garbage", ("not valid UTF-8",))
NOT_JSON = Poison("not JSON", b"{this is not json", ("not valid JSON",))
JSON_ARRAY = Poison("JSON array", b'[{"userId": "u1"}]', ("JSON list instead of an object",))
JSON_STRING = Poison("JSON string", b'"LOGIN"', ("JSON str instead of an object",))
TOMBSTONE = Poison("tombstone", None, ("null value (tombstone)",))
MISSING_FIELDS = Poison(
    "missing fields",
    b'{"userId": "u1", "eventType": "LOGIN"}',
    ("eventId: is required", "timestamp: is required"),
)
WRONG_TYPES = Poison(
    "wrong types",
    event_bytes(userId=42, eventType=["LOGIN"], timestamp=1_700_000_000, payload="x"),
    (
        "timestamp: must be an ISO 8601 date-time",
        "userId: must be a string",
        "eventType: must be one of",
        "payload: must be a JSON object",
    ),
)
UNKNOWN_EVENT_TYPE = Poison(
    "unknown eventType", event_bytes(eventType="PURCHASE"), ("eventType: must be one of",)
)
DUPLICATE_KEYS = Poison(
    "duplicate keys",
    event_bytes()[:-1] + b',"userId":"someone-else"}',
    ("duplicate key 'userId'",),
)
NUMBER_OVERFLOW = Poison(
    "number overflow", event_bytes(payload={"n": 10**30}), ("number out of range",)
)
ONE_MEGABYTE_PAYLOAD = Poison(
    "1 MB payload",
    event_bytes(payload={"blob": "x" * ONE_MEGABYTE}),
    ("payload: must be at most 32768 bytes as JSON",),
)
DEEPLY_NESTED = Poison("deeply nested", deeply_nested_event(), ("JSON nested too deeply",))

#: Everything a dead-letter topic must absorb, except the record larger than 1 MB (see
#: test_oversized_poison_message_is_dead_lettered).
DEAD_LETTERED = [
    NOT_UTF8,
    NOT_JSON,
    JSON_ARRAY,
    JSON_STRING,
    TOMBSTONE,
    MISSING_FIELDS,
    WRONG_TYPES,
    UNKNOWN_EVENT_TYPE,
    DUPLICATE_KEYS,
    NUMBER_OVERFLOW,
    DEEPLY_NESTED,
]

#: The kinds test_service.py does not already send through the log-and-skip path.
LOGGED_AND_SKIPPED = [
    JSON_STRING,
    WRONG_TYPES,
    ONE_MEGABYTE_PAYLOAD,
    DEEPLY_NESTED,
    NUMBER_OVERFLOW,
]


# --- an independent producer for big, headed records -----------------------------------------


@pytest.fixture(scope="module")
def poison_producer(broker: Broker) -> Iterator[KafkaTools]:
    """An independent producer whose message.max.bytes allows a record over 1 MB."""
    producer = KafkaTools(broker.bootstrap_servers, message_max_bytes=4 * ONE_MEGABYTE)
    yield producer
    producer.close()


@pytest.fixture
def dlq_topic() -> str:
    """A fresh dead-letter topic name; the service creates it at start-up."""
    return f"it-dlq-{uuid.uuid4().hex}"


# --- helpers ---------------------------------------------------------------------------------


@attrs.frozen
class Sent:
    """What the producer got back: where each poison record and the valid event landed."""

    key: bytes
    positions: list[tuple[int, int]]
    headers: list[list[tuple[str, bytes]]]
    valid: dict[str, Any]
    valid_position: tuple[int, int]


def send_poison_then_valid(producer: KafkaTools, topic: str, poisons: Sequence[Poison]) -> Sent:
    """Produce every poison record (each with an original header of its own) and then a valid
    event, all on one key: one partition, in this order."""
    user = unique_user()
    key = user.encode()
    headers = [[("origin", f"poison-{index}".encode())] for index in range(len(poisons))]
    positions = producer.produce_with_headers(
        topic,
        [(key, poison.value, header) for poison, header in zip(poisons, headers, strict=True)],
    )
    valid = make_event(user, "LOGOUT", after="poison")
    [valid_position] = producer.produce_with_headers(topic, [(key, encode(valid), [])])
    assert {partition for partition, _ in positions} == {valid_position[0]}
    assert [offset for _, offset in positions] == sorted(offset for _, offset in positions)
    assert valid_position[1] > positions[-1][1]
    return Sent(key, positions, headers, valid, valid_position)


def wait_processed_while_healthy(app: ServiceProcess, event_id: str, timeout: float = 15) -> None:
    """Wait until ``event_id`` is listed, asserting /health answers 200 at every look."""
    statuses: list[int] = []

    def processed() -> bool:
        statuses.append(app.health().status_code)
        return event_id in {event["eventId"] for event in app.processed()}

    wait_until(processed, timeout, what=f"event {event_id} processed after the poison")
    assert set(statuses) == {200}, f"/health answered {statuses} while poison was handled"


def assignment_changes(app: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in app.log_lines() if line.get("msg") in ASSIGNMENT_CHANGES]


def check_dead_letters(
    messages: list[Message],
    sent: Sent,
    poisons: Sequence[Poison],
    source_topic: str,
    *,
    value_dropped: str | None = None,
) -> None:
    """Each poison record has exactly one copy with its key, value and headers plus the dlq.*
    headers naming the reason and where it came from. With ``value_dropped`` (an error code)
    the copy carries no value, but headers with that code and the original size."""
    by_offset: dict[int, list[Message]] = {}
    for message in messages:
        by_offset.setdefault(int(header_dict(message)["dlq.source.offset"]), []).append(message)
    assert sorted(by_offset) == [offset for _, offset in sent.positions]
    for poison, (partition, offset), original in zip(
        poisons, sent.positions, sent.headers, strict=True
    ):
        [copy] = by_offset[offset]
        headers = header_dict(copy)
        assert copy.key() == sent.key, poison.case
        if value_dropped is None:
            assert copy.value() == poison.value, poison.case
        else:
            assert copy.value() is None, poison.case
            assert headers["dlq.value.dropped"] == value_dropped.encode(), poison.case
            assert headers["dlq.value.size"] == str(len(poison.value)).encode(), poison.case
        assert headers["dlq.source.topic"] == source_topic.encode(), poison.case
        assert headers["dlq.source.partition"] == str(partition).encode(), poison.case
        reason = headers["dlq.reason"].decode()
        for words in poison.reasons:
            assert words in reason, f"{poison.case}: {reason!r}"
        # The original headers come first and unchanged.
        assert (copy.headers() or [])[: len(original)] == original, poison.case


# --- tests -----------------------------------------------------------------------------------


def test_poison_messages_are_dead_lettered(
    process_control: Spawn,
    poison_producer: KafkaTools,
    kafka: KafkaTools,
    broker: Broker,
    group: str,
    dlq_topic: str,
) -> None:
    """Each kind of poison lands once on the DLQ with its bytes and dlq.* headers; the
    consumer keeps its partitions, counts them, and commits past them."""
    app = process_control(env={"KAFKA_DLQ_TOPIC": dlq_topic})
    sent = send_poison_then_valid(poison_producer, app.topic, DEAD_LETTERED)

    wait_processed_while_healthy(app, sent.valid["eventId"])
    dead_letters = kafka.read(dlq_topic, count=len(DEAD_LETTERED), timeout=10)
    assert len(dead_letters) == len(DEAD_LETTERED), [header_dict(m) for m in dead_letters]
    check_dead_letters(dead_letters, sent, DEAD_LETTERED, app.topic)

    health = app.health()
    assert health.status_code == 200, health.text
    counters = health.json()["counters"]
    assert counters["malformed"] == len(DEAD_LETTERED)
    assert counters["dead_lettered"] == len(DEAD_LETTERED)
    assert assignment_changes(app) == []
    assigned = [line for line in app.log_lines() if line["msg"] == "partitions assigned"]
    assert len(assigned) == 1, assigned

    assert app.terminate() == 0, app.log_tail()
    partition, valid_offset = sent.valid_position
    committed = committed_offsets(broker.bootstrap_servers, group, app.topic)
    assert committed.get(partition) == valid_offset + 1, committed


def test_oversized_poison_message_is_dead_lettered(
    process_control: Spawn,
    poison_producer: KafkaTools,
    kafka: KafkaTools,
    dlq_topic: str,
) -> None:
    """A record over 1 MB, which the source topic accepted but a dead-letter message of default
    size may not hold, is dead-lettered without its value (key, headers, the reason and its
    size are kept) and skipped: no consumer failure, and the valid event after it is
    processed."""
    app = process_control(env={"KAFKA_DLQ_TOPIC": dlq_topic})
    sent = send_poison_then_valid(poison_producer, app.topic, [ONE_MEGABYTE_PAYLOAD])
    app.wait_for_logs(  # the service's consumer did receive the record
        lambda line: (
            line["msg"] == "malformed message skipped" and line["offset"] == sent.positions[0][1]
        )
    )

    dead_letters = kafka.read(dlq_topic, count=1, timeout=6)
    failures = [
        line["error"].splitlines()[-1]
        for line in app.log_lines()
        if line["msg"] == "actor consumer failed"
    ]
    assert len(dead_letters) == 1, f"not dead-lettered; consumer failures: {failures}"
    check_dead_letters(
        dead_letters, sent, [ONE_MEGABYTE_PAYLOAD], app.topic, value_dropped="MSG_SIZE_TOO_LARGE"
    )
    wait_processed_while_healthy(app, sent.valid["eventId"])
    assert assignment_changes(app) == []
    counters = app.health().json()["counters"]
    assert (counters["malformed"], counters["dead_lettered"]) == (1, 1)


def test_poison_messages_are_logged_and_skipped_without_dlq(
    process_control: Spawn, poison_producer: KafkaTools
) -> None:
    """Without a DLQ each poison record gets one WARNING line (topic, partition, offset,
    reason), is counted as malformed and skipped, and the valid event after it is processed."""
    app = process_control()
    sent = send_poison_then_valid(poison_producer, app.topic, LOGGED_AND_SKIPPED)

    wait_processed_while_healthy(app, sent.valid["eventId"])
    skipped = app.wait_for_logs(
        lambda line: line["msg"] == "malformed message skipped", count=len(LOGGED_AND_SKIPPED)
    )
    assert len(skipped) == len(LOGGED_AND_SKIPPED)
    by_position = {(line["partition"], line["offset"]): line for line in skipped}
    assert set(by_position) == set(sent.positions)
    for poison, position in zip(LOGGED_AND_SKIPPED, sent.positions, strict=True):
        line = by_position[position]
        assert line["level"] == "WARNING", poison.case
        assert line["topic"] == app.topic, poison.case
        assert line["deadLettered"] is False, poison.case
        for words in poison.reasons:
            assert words in line["reason"], f"{poison.case}: {line['reason']!r}"
        assert len(json.dumps(line)) < 2000, f"{poison.case}: the log line echoes the record"

    counters = app.health().json()["counters"]
    assert counters["malformed"] == len(LOGGED_AND_SKIPPED)
    assert counters.get("dead_lettered", 0) == 0
    assert assignment_changes(app) == []
    consumed = [line for line in app.log_lines() if line["msg"] == "event consumed"]
    assert [line["eventId"] for line in consumed] == [sent.valid["eventId"]]
