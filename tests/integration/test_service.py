"""The real service process against a real broker, driven over real HTTP and independent clients."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from confluent_kafka import Message
from support.events import encode, make_event, unique_user
from support.kafka_tools import KafkaTools
from support.services import Services, Spawn

from actors.devtools.local_broker import free_port

FIELDS = {"eventId", "userId", "eventType", "timestamp", "payload"}


def test_posted_event_is_processed_unchanged(service: Services) -> None:
    """A POSTed event is listed by GET /events/processed with all five fields as in the 201."""
    app = service()
    created = app.post_event(
        user_id=unique_user(), event_type="PRODUCT_VIEW", payload={"sku": "A-1", "price": 9.5}
    )
    assert set(created) == FIELDS
    listed = app.wait_processed({created["eventId"]}, timeout=5)
    assert [event for event in listed if event["eventId"] == created["eventId"]] == [created]


def test_concurrent_posts_are_each_processed_once(service: Services) -> None:
    """Fifty concurrent POSTs all get 201 and each event is listed exactly once."""
    app = service()
    users = [unique_user() for _ in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        created = list(pool.map(lambda user: app.post_event(user_id=user), users))
    ids = [event["eventId"] for event in created]
    assert len(set(ids)) == 50
    listed = app.wait_processed(set(ids), timeout=10)
    listed_ids = [event["eventId"] for event in listed]
    assert {event_id: listed_ids.count(event_id) for event_id in ids} == dict.fromkeys(ids, 1)
    by_id = {event["eventId"]: event for event in listed}
    assert [by_id[event_id] for event_id in ids] == created


def test_redelivered_event_is_stored_once(service: Services, kafka: KafkaTools) -> None:
    """The same event produced three times is listed once; the copies count as duplicates."""
    app = service()
    duplicates_before = app.health().json()["counters"].get("duplicates", 0)
    user = unique_user()
    event = make_event(user, "LOGOUT", reason="idle")
    sentinel = make_event(user)  # same key, same partition: read after the three copies
    kafka.produce(app.topic, [(user.encode(), encode(event))] * 3)
    kafka.produce(app.topic, [(user.encode(), encode(sentinel))])
    listed = app.wait_processed({event["eventId"], sentinel["eventId"]})
    assert [e for e in listed if e["eventId"] == event["eventId"]] == [event]
    duplicates_after = app.health().json()["counters"].get("duplicates", 0)
    assert duplicates_after - duplicates_before >= 2


#: Malformed values with a word of the reason the service must give for skipping each.
MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("not UTF-8", b"\xff\xfe\x00garbage", "UTF-8"),
    ("not JSON", b"{this is not json", "not valid JSON"),
    ("JSON array", b'[{"userId": "u1"}]', "list instead of an object"),
    ("null value", None, "tombstone"),
    ("missing fields", b'{"userId": "u1", "eventType": "LOGIN"}', "eventId: is required"),
    ("unknown eventType", encode(make_event("u1") | {"eventType": "PURCHASE"}), "eventType:"),
]


def produce_malformed_then_valid(
    kafka: KafkaTools, topic: str
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Produce every MALFORMED value, then a valid event, all on one key (one partition).

    Returns:
        The (partition, offset) of each malformed message, and the valid event.
    """
    user = unique_user()
    valid = make_event(user, "LOGIN")
    positions = kafka.produce(topic, [(user.encode(), value) for _, value, _ in MALFORMED])
    kafka.produce(topic, [(user.encode(), encode(valid))])
    return positions, valid


def test_malformed_messages_are_skipped(service: Services, kafka: KafkaTools) -> None:
    """Malformed messages are skipped: the service stays healthy and processes what follows."""
    app = service()
    malformed_before = app.health().json()["counters"].get("malformed", 0)
    _, valid = produce_malformed_then_valid(kafka, app.topic)
    listed = app.wait_processed({valid["eventId"]})
    assert [event for event in listed if event["eventId"] == valid["eventId"]] == [valid]
    health = app.health()
    assert health.status_code == 200, health.text
    assert health.json()["counters"]["malformed"] - malformed_before == len(MALFORMED)


def test_skipped_messages_are_logged(process_control: Spawn, kafka: KafkaTools) -> None:
    """Each skipped message gets one log line with its partition, offset and the reason."""
    app = process_control()
    positions, valid = produce_malformed_then_valid(kafka, app.topic)
    app.wait_processed({valid["eventId"]})
    skipped = app.wait_for_logs(lambda line: line["msg"] == "malformed message skipped", count=6)
    assert len(skipped) == len(MALFORMED)
    by_position = {(line["partition"], line["offset"]): line for line in skipped}
    assert set(by_position) == set(positions)
    for (case, _, reason), position in zip(MALFORMED, positions, strict=True):
        line = by_position[position]
        assert line["topic"] == app.topic, case
        assert line["level"] == "WARNING", case
        assert reason in line["reason"], f"{case}: {line['reason']!r}"


def test_published_message_is_the_event_keyed_by_user(service: Services, kafka: KafkaTools) -> None:
    """The record on the topic holds exactly the five fields of the 201 body, keyed by userId."""
    app = service()
    user = unique_user()
    created = app.post_event(user_id=user, event_type="LOGIN", payload={"device": "phone"})

    def is_ours(message: Message) -> bool:
        return message.key() == user.encode()

    messages = kafka.read(app.topic, until=lambda read: any(map(is_ours, read)))
    ours = [message for message in messages if is_ours(message)]
    assert len(ours) == 1
    raw = ours[0].value()
    assert raw is not None
    value = json.loads(raw)
    assert set(value) == FIELDS
    assert value == created


def test_restart_resumes_from_committed_offset(
    process_control: Spawn, kafka: KafkaTools, topic: str
) -> None:
    """After SIGTERM a new process on the same group lists only what arrived while it was down."""
    first = process_control()
    users = [unique_user() for _ in range(3)]
    old = [first.post_event(user_id=user) for user in users]
    first.wait_processed({event["eventId"] for event in old})

    started = time.monotonic()
    exit_code = first.terminate()
    shutdown_seconds = time.monotonic() - started
    print(f"graceful shutdown took {shutdown_seconds:.2f} s")
    assert exit_code == 0, first.log_tail()
    assert shutdown_seconds < 10  # SHUTDOWN_TIMEOUT_MS; exit code 0 already says within it

    # The same keys as the old events: each partition holding an old event also gets a new one
    # after it, so an old event replayed from an uncommitted offset would be listed first.
    new = [make_event(users[index % 3], "PRODUCT_VIEW", n=index) for index in range(5)]
    kafka.produce_events(topic, new)

    second = process_control()  # its store starts empty: anything listed, it consumed
    listed = second.wait_processed({event["eventId"] for event in new})
    assert sorted(listed, key=lambda e: e["payload"]["n"]) == new


def test_consumed_events_are_logged(process_control: Spawn) -> None:
    """Each consumed event gets one JSON log line on stdout with eventId, userId and eventType."""
    app = process_control()
    created = [
        app.post_event(user_id=unique_user(), event_type=event_type)
        for event_type in ("LOGIN", "PRODUCT_VIEW", "LOGOUT")
    ]
    app.wait_processed({event["eventId"] for event in created})
    consumed = app.wait_for_logs(lambda line: line["msg"] == "event consumed", count=3)
    assert sorted(
        (line["eventId"], line["userId"], line["eventType"]) for line in consumed
    ) == sorted((event["eventId"], event["userId"], event["eventType"]) for event in created)
    assert all(line["logger"] == "actors.consumer" for line in consumed)


def test_unreachable_broker_is_retried_without_starting_one(process_control: Spawn) -> None:
    """Pointed at a closed port, it starts no broker, keeps retrying, and stops on SIGTERM."""
    closed = f"127.0.0.1:{free_port()}"  # bound and released at once: nothing listens there
    app = process_control(
        bootstrap_servers=closed, env={"SHUTDOWN_TIMEOUT_MS": "2000"}, wait_healthy=False
    )
    retries = app.wait_for_logs(
        lambda line: line["msg"] == "broker not reachable; retrying", timeout=20
    )
    assert retries[0]["bootstrapServers"] == closed
    assert retries[0]["level"] == "WARNING"
    time.sleep(1.0)  # observing that nothing happens takes a while: it must not give up
    assert app.alive(), app.log_tail()
    assert app.children() == []
    assert not [line for line in app.log_lines() if line["msg"] == "local broker started"]
    started = time.monotonic()
    exit_code = app.terminate(timeout=10)
    took = time.monotonic() - started
    print(f"shutdown while waiting for the broker: exit {exit_code} after {took:.2f} s")
    assert exit_code == 0  # a stop during start-up is graceful, not a missed deadline (2 s)
    assert took < 1.5


def test_sigterm_with_idle_keepalive_client_exits_promptly(process_control: Spawn) -> None:
    """SIGTERM exits 0 within seconds even while a client holds an idle keep-alive connection."""
    app = process_control(env={"SHUTDOWN_TIMEOUT_MS": "3000"})
    with httpx.Client(base_url=app.base_url) as client:
        assert client.get("/health").status_code == 200  # the pooled connection stays open
        started = time.monotonic()
        exit_code = app.terminate()
        took = time.monotonic() - started
    print(f"shutdown with an idle keep-alive connection: exit {exit_code} after {took:.2f} s")
    assert exit_code == 0
    assert took < 2
