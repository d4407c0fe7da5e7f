"""POST /events/batch against the real service and broker, checked by an independent reader."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from support.events import unique_user
from support.kafka_tools import KafkaTools
from support.services import Services, Spawn


def batch_item(user_id: str, **payload: Any) -> dict[str, Any]:
    return {"userId": user_id, "eventType": "PRODUCT_VIEW", "payload": payload}


def topic_events(kafka: KafkaTools, topic: str, count: int) -> list[dict[str, Any]]:
    """The events on ``topic`` as an independent reader sees them (waits for ``count``)."""
    return [json.loads(message.value() or b"") for message in kafka.read(topic, count=count)]


def test_published_batch_is_on_the_topic_and_listed_once(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """A batch of valid events is answered 201 with each event; the topic holds exactly those
    events, keyed by userId, and the listing holds each of them once, as answered."""
    app = service()
    items = [batch_item(unique_user(), n=n) for n in range(50)]
    response = app.http.post("/events/batch", json={"events": items})
    assert response.status_code == 201, response.text
    created = response.json()["events"]
    assert [event["payload"] for event in created] == [item["payload"] for item in items]
    ids = {event["eventId"] for event in created}
    assert len(ids) == 50
    messages = kafka.read(topic, count=50)
    assert {json.loads(message.value() or b"")["eventId"] for message in messages} == ids
    by_id = {json.loads(message.value() or b"")["eventId"]: message for message in messages}
    for event in created:
        assert by_id[event["eventId"]].key() == event["userId"].encode()
    listed = app.wait_processed(ids)
    counts = Counter(event["eventId"] for event in listed)
    assert all(counts[event_id] == 1 for event_id in ids)
    listed_by_id = {event["eventId"]: event for event in listed}
    assert all(listed_by_id[event["eventId"]] == event for event in created)


def test_invalid_items_are_answered_400_and_never_reach_the_topic(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """A mixed batch is 207: the valid items 201 and on the topic, the invalid ones 400 with
    their problems, and nothing else on the topic."""
    app = service()
    items: list[Any] = [
        batch_item("valid-1"),
        {"userId": "", "eventType": "LOGIN"},
        batch_item("valid-2"),
        {"eventType": "NOPE"},
    ]
    response = app.http.post("/events/batch", json={"events": items})
    assert response.status_code == 207, response.text
    results = response.json()["results"]
    assert [result["status"] for result in results] == [201, 400, 201, 400]
    assert all(result["problems"] for result in results if result["status"] == 400)
    published = {results[0]["event"]["eventId"], results[2]["event"]["eventId"]}
    # Read for a while after both valid ones arrived: an invalid one published would show.
    on_topic = topic_events(kafka, topic, count=3)
    assert {event["eventId"] for event in on_topic} == published
    app.wait_processed(published)


def test_batch_beyond_the_limits_is_413_and_publishes_nothing(
    process_control: Spawn, kafka: KafkaTools, topic: str
) -> None:
    """MAX_BATCH_EVENTS + 1 events, or a body beyond MAX_BATCH_BYTES: 413, nothing on the
    topic; at the limits the batch is published."""
    app = process_control(env={"MAX_BATCH_EVENTS": "3", "MAX_BATCH_BYTES": "600"})
    too_many = app.http.post("/events/batch", json={"events": [batch_item("u")] * 4})
    too_large = app.http.post("/events/batch", json={"events": [batch_item("u", pad="x" * 600)]})
    empty = app.http.post("/events/batch", json={"events": []})
    assert (too_many.status_code, too_large.status_code, empty.status_code) == (413, 413, 400)
    assert kafka.read(topic, count=1, timeout=2) == []
    at_limit = app.http.post("/events/batch", json={"events": [batch_item("u")] * 3})
    assert at_limit.status_code == 201
    assert len(kafka.read(topic, count=4, timeout=3)) == 3


def test_concurrent_batches_are_each_listed_exactly_once(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """Eight clients posting 100-event batches at once: every event gets 201, is on the topic,
    and is listed exactly once."""
    app = service()

    def post(client: int) -> list[str]:
        items = [batch_item(f"user-{client}-{n % 7}", n=n) for n in range(100)]
        response = app.http.post("/events/batch", json={"events": items})
        assert response.status_code == 201, response.text
        return [event["eventId"] for event in response.json()["events"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = [event_id for batch in pool.map(post, range(8 * 5)) for event_id in batch]
    assert len(set(ids)) == 4000
    listed = app.wait_processed(set(ids), timeout=30)
    counts = Counter(event["eventId"] for event in listed)
    assert {counts[event_id] for event_id in ids} == {1}
    assert {json.loads(m.value() or b"")["eventId"] for m in kafka.read(topic, count=4000)} == set(
        ids
    )
