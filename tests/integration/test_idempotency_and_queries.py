"""Idempotency-Key, GET /events/{eventId} and the paged listing on the real service, checked
with an independent Kafka reader and real HTTP."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from support.kafka_tools import KafkaTools
from support.services import ServiceHandle, Services, Spawn, rss_bytes

from actors.store import EVENT_OVERHEAD_BYTES

JSON = {"Content-Type": "application/json"}


def unique_user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def keyed_post(base_url: str, key: str, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return client.post(
            "/events/generate", content=body, headers=JSON | {"Idempotency-Key": key}
        )


def records_of(kafka: KafkaTools, app: ServiceHandle, user: str, sentinel: str) -> list[Any]:
    """The topic's records of ``user``, read by an independent consumer up to ``sentinel`` (an
    event of the same user, so on the same partition, posted after everything else)."""
    messages = kafka.read(
        app.topic, until=lambda read: any(sentinel.encode() in (m.value() or b"") for m in read)
    )
    return [json.loads(m.value() or b"null") for m in messages if m.key() == user.encode()]


def assert_exactly_one_event(
    kafka: KafkaTools, app: ServiceHandle, user: str, event_id: str
) -> None:
    """On the topic and in the store: the keyed event once, then the unkeyed sentinel."""
    sentinel = app.post_event(user_id=user, payload={"sentinel": True})["eventId"]
    on_topic = records_of(kafka, app, user, sentinel)
    assert [record["eventId"] for record in on_topic] == [event_id, sentinel]
    app.wait_processed({sentinel})
    stored = app.http.get("/events/processed", params={"userId": user}).json()
    assert [event["eventId"] for event in stored] == [event_id, sentinel]


def test_the_same_keyed_post_three_times_is_one_event(service: Services, kafka: KafkaTools) -> None:
    """Three sequential POSTs with one key and body: the same 201 three times (the repeats
    marked Idempotent-Replayed), one record on the topic, one event in the store."""
    app = service()
    user = unique_user("keyed")
    body = json.dumps({"userId": user, "eventType": "LOGIN", "payload": {"try": 1}}).encode()
    key = str(uuid.uuid4())
    answers = [keyed_post(app.base_url, key, body) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert len({answer.content for answer in answers}) == 1
    assert [answer.headers.get("Idempotent-Replayed") for answer in answers] == [
        None,
        "true",
        "true",
    ]
    assert_exactly_one_event(kafka, app, user, answers[0].json()["eventId"])


def test_ten_concurrent_keyed_posts_are_one_event(service: Services, kafka: KafkaTools) -> None:
    """Ten POSTs with one key at once: each gets 201 (that event) or 409 (in flight), at least
    one 201, and exactly one record on the topic and one event in the store."""
    app = service()
    user = unique_user("concurrent")
    body = json.dumps({"userId": user, "eventType": "LOGOUT"}).encode()
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: keyed_post(app.base_url, key, body), range(10)))
    statuses = sorted(answer.status_code for answer in answers)
    created = {answer.json()["eventId"] for answer in answers if answer.status_code == 201}
    print(f"statuses of 10 concurrent keyed POSTs: {statuses}")
    assert set(statuses) <= {201, 409}
    assert len(created) == 1
    assert all("Retry-After" in a.headers for a in answers if a.status_code == 409)
    (event_id,) = created
    after = keyed_post(app.base_url, key, body)
    assert (after.status_code, after.json()["eventId"]) == (201, event_id)
    assert_exactly_one_event(kafka, app, user, event_id)


def test_the_same_key_with_another_body_is_422_and_not_published(
    service: Services, kafka: KafkaTools
) -> None:
    """A key reused with another body gets 422 and nothing reaches the topic."""
    app = service()
    user = unique_user("reused")
    key = str(uuid.uuid4())
    first = keyed_post(
        app.base_url, key, json.dumps({"userId": user, "eventType": "LOGIN"}).encode()
    )
    other = keyed_post(
        app.base_url, key, json.dumps({"userId": user, "eventType": "LOGOUT"}).encode()
    )
    assert (first.status_code, other.status_code) == (201, 422)
    assert_exactly_one_event(kafka, app, user, first.json()["eventId"])


def keyed_batch(base_url: str, items: list[dict[str, Any]]) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return client.post("/events/batch", json={"events": items})


def test_a_keyed_batch_sent_three_times_is_each_event_once(
    service: Services, kafka: KafkaTools
) -> None:
    """A batch of two keyed items and one unkeyed, then twice the keyed items alone: the
    repeats answer 201 with the same events (Idempotent-Replayed), and the topic and the store
    hold each keyed event once."""
    app = service()
    user = unique_user("keyed-batch")
    keyed = [
        {"userId": user, "eventType": "LOGIN", "idempotencyKey": str(uuid.uuid4())},
        {
            "userId": user,
            "eventType": "PRODUCT_VIEW",
            "payload": {"sku": 1},
            "idempotencyKey": str(uuid.uuid4()),
        },
    ]
    first = keyed_batch(app.base_url, [*keyed, {"userId": user, "eventType": "LOGOUT"}])
    assert first.status_code == 201, first.text
    created = first.json()["events"]
    repeats = [keyed_batch(app.base_url, keyed) for _ in range(2)]
    for repeat in repeats:
        assert repeat.status_code == 201, repeat.text
        assert repeat.json()["events"] == created[:2]
        assert repeat.headers["Idempotent-Replayed"] == "true"
    sentinel = app.post_event(user_id=user, payload={"sentinel": True})["eventId"]
    on_topic = records_of(kafka, app, user, sentinel)
    expected = [event["eventId"] for event in created] + [sentinel]
    assert [record["eventId"] for record in on_topic] == expected
    app.wait_processed({sentinel})
    stored = app.http.get("/events/processed", params={"userId": user}).json()
    assert [event["eventId"] for event in stored] == expected


def test_ten_concurrent_batches_with_one_keyed_item_publish_it_once(
    service: Services, kafka: KafkaTools
) -> None:
    """Ten batches at once, each with the same keyed item and an unkeyed item of its own: the
    keyed item is 201 (one event) or 409 in each, every unkeyed item is published, and the
    keyed event is on the topic and in the store exactly once."""
    app = service()
    user = unique_user("keyed-concurrent")
    key = str(uuid.uuid4())
    shared = {"userId": user, "eventType": "LOGIN", "idempotencyKey": key}

    def send(number: int) -> httpx.Response:
        own = {"userId": user, "eventType": "PRODUCT_VIEW", "payload": {"n": number}}
        return keyed_batch(app.base_url, [shared, own])

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(send, range(10)))
    keyed_ids, own_ids, statuses = set(), set(), []
    for answer in answers:
        assert answer.status_code in {201, 207}, answer.text
        results = (
            [{"status": 201, "event": event} for event in answer.json()["events"]]
            if answer.status_code == 201
            else answer.json()["results"]
        )
        statuses.append(results[0]["status"])
        if results[0]["status"] == 201:
            keyed_ids.add(results[0]["event"]["eventId"])
        assert results[1]["status"] == 201
        own_ids.add(results[1]["event"]["eventId"])
    print(f"the keyed item's statuses in 10 concurrent batches: {sorted(statuses)}")
    assert set(statuses) <= {201, 409}
    assert len(keyed_ids) == 1
    assert len(own_ids) == 10
    sentinel = app.post_event(user_id=user, payload={"sentinel": True})["eventId"]
    on_topic = [record["eventId"] for record in records_of(kafka, app, user, sentinel)]
    assert sorted(on_topic) == sorted([*keyed_ids, *own_ids, sentinel])
    app.wait_processed({sentinel})
    stored = app.http.get("/events/processed", params={"userId": user}).json()
    assert sorted(event["eventId"] for event in stored) == sorted(on_topic)


def test_event_by_id_says_where_the_event_was_read(service: Services, kafka: KafkaTools) -> None:
    """GET /events/{eventId}: 200 with the event and the partition and offset an independent
    reader finds it at; 404 for an unknown id, 400 for a non-UUID."""
    app = service()
    user = unique_user("status")
    created = app.post_event(user_id=user, event_type="PRODUCT_VIEW", payload={"sku": "A"})
    app.wait_processed({created["eventId"]})
    answer = app.http.get(f"/events/{created['eventId']}")
    (record,) = [
        m
        for m in kafka.read(
            app.topic, until=lambda read: any(m.key() == user.encode() for m in read)
        )
        if m.key() == user.encode()
    ]
    assert answer.status_code == 200
    assert answer.json() == {
        "event": created,
        "partition": record.partition(),
        "offset": record.offset(),
    }
    unknown = app.http.get(f"/events/{uuid.uuid4()}")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    assert app.http.get("/events/nope").status_code == 400


def all_pages(app: ServiceHandle, url: str | None) -> list[list[dict[str, Any]]]:
    pages = []
    while url is not None:
        answer = app.http.get(url)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        url = answer.links.get("next", {}).get("url")
    return pages


def test_pages_by_link_see_every_event_once_while_events_arrive(
    service: Services, kafka: KafkaTools
) -> None:
    """Pages of 7 followed by their Link headers, with more events produced between pages:
    every event of the user appears once, in store order, the late ones included."""
    app = service()
    user = unique_user("pages")
    early = [app.post_event(user_id=user, payload={"n": n})["eventId"] for n in range(20)]
    app.wait_processed(set(early))
    first = app.http.get("/events/processed", params={"limit": "7", "userId": user})
    late = [app.post_event(user_id=user, payload={"n": n})["eventId"] for n in range(20, 30)]
    app.wait_processed(set(late))
    pages = [first.json(), *all_pages(app, first.links["next"]["url"])]
    ids = [event["eventId"] for page in pages for event in page]
    assert ids == early + late
    assert all(len(page) == 7 for page in pages[:-1])


def page_latency(app: ServiceHandle, start_url: str, samples: int = 30) -> float:
    """Median seconds of one limit=100 page, fetched from a cursor in the middle."""
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        answer = app.http.get(start_url)
        timings.append(time.perf_counter() - started)
        assert answer.status_code == 200
        assert len(answer.json()) == 100
    return statistics.median(timings)


def produce_events(kafka: KafkaTools, topic: str, count: int, prefix: str) -> None:
    for start in range(0, count, 10_000):
        batch = []
        for n in range(start, min(count, start + 10_000)):
            event = {
                "eventId": str(uuid.uuid4()),
                "userId": f"{prefix}-{n % 50}",
                "eventType": "LOGIN",
                "timestamp": "2026-12-01T10:00:00.000Z",
                "payload": {"n": n},
            }
            batch.append((event["userId"].encode(), json.dumps(event).encode()))
        kafka.produce(topic, batch, timeout=60)


def stored(app: ServiceHandle) -> int:
    count: int = app.health().json()["counters"].get("stored", 0)
    return count


@pytest.mark.broker_neutral  # the store's and the stream's own costs
def test_a_page_costs_the_same_with_100k_events_as_with_1k(
    process_control: Spawn, kafka: KafkaTools
) -> None:
    """The median time of a limit=100 page from a cursor is about the same with 100,000
    events stored as with 1,000 (a page that walked the store would take ~100x longer).

    The process's growth per stored event is printed for the record; it includes librdkafka's
    fetch buffers and varies from run to run, so the store's own bound (400 B per event, JSON
    included) is checked in a fresh process by tests/unit/test_store_queries.py."""
    app = process_control()
    prefix = unique_user("bulk")
    produce_events(kafka, app.topic, 1_000, prefix)
    deadline = time.monotonic() + 30
    while stored(app) < 1_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    middle = app.http.get("/events/processed", params={"limit": "500"}).links["next"]["url"]
    small = page_latency(app, middle.replace("limit=500", "limit=100"))
    rss_before, bytes_before = rss_bytes(app.pid), app.health().json()["gauges"]["store_bytes"]
    produce_events(kafka, app.topic, 99_000, prefix)
    deadline = time.monotonic() + 120
    while stored(app) < 100_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored(app) == 100_000
    gauges = app.health().json()["gauges"]
    json_bytes = (gauges["store_bytes"] - bytes_before) - 99_000 * EVENT_OVERHEAD_BYTES
    per_event = (rss_bytes(app.pid) - rss_before) / 99_000
    large = page_latency(app, middle.replace("limit=500", "limit=100"))
    print(
        f"limit=100 page: median {small * 1000:.2f} ms at 1k, {large * 1000:.2f} ms at 100k; "
        f"process RSS {per_event:.0f} B per stored event "
        f"({json_bytes / 99_000:.0f} B of JSON each)"
    )
    assert large < small * 5
