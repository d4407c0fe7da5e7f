"""The store's bounds and the streamed listing, on the real service process and a real broker."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

import httpx
from support.events import encode, make_event
from support.kafka_tools import KafkaTools
from support.services import ServiceProcess, Spawn, rss_bytes
from support.waiting import wait_until

#: Events of about 33 KB each, ~100 MB in all: the listing the issue reported freezing the
#: service, scaled down to what a test can produce in a few seconds.
BIG_EVENTS = 3000
BIG_PAYLOAD_CHARS = 32_000

#: A listing may not grow the process by more than this (the body alone is ~100 MB).
LISTING_RSS_GROWTH_LIMIT = 40 * 1024 * 1024

#: How quickly /health must answer while the listing is being sent.
HEALTH_DURING_LISTING_SECONDS = 0.050


def counters(app: ServiceProcess) -> dict[str, int]:
    body: dict[str, Any] = app.health().json()
    result: dict[str, int] = body["counters"] | body["gauges"]
    return result


def test_store_beyond_max_events_keeps_the_newest(
    process_control: Spawn, kafka: KafkaTools
) -> None:
    """With STORE_MAX_EVENTS=50, 120 events leave 50 listed, 70 counted as evicted, one
    warning logged, and the service healthy."""
    app = process_control({"STORE_MAX_EVENTS": "50"})
    events = [make_event(f"user-{n % 7}", n=n) for n in range(120)]
    kafka.produce(app.topic, [(event["userId"].encode(), encode(event)) for event in events])
    wait_until(lambda: counters(app).get("stored", 0) >= 120, 20, what="120 events stored")
    listed = app.processed()
    assert len(listed) == 50
    assert {event["eventId"] for event in listed} <= {event["eventId"] for event in events}
    seen = counters(app)
    assert (seen["store_evicted"], seen["store_events"]) == (70, 50)
    assert app.health().status_code == 200
    warnings = app.wait_for_logs(lambda line: line.get("msg", "").startswith("store full"))
    assert len(warnings) == 1


def test_a_100_mb_listing_is_streamed_without_freezing_or_copying(
    process_control: Spawn, kafka: KafkaTools
) -> None:
    """While a ~100 MB GET /events/processed is read by a slow client, every /health probe is
    answered within 50 ms, the process grows by far less than the body, and the listing is
    complete, valid JSON."""
    app = process_control({"STORE_MAX_BYTES": str(512 * 1024 * 1024)})
    blob = "x" * BIG_PAYLOAD_CHARS
    events = [make_event(f"user-{n % 11}", blob=blob) for n in range(BIG_EVENTS)]
    for start in range(0, BIG_EVENTS, 500):
        batch = events[start : start + 500]
        kafka.produce(app.topic, [(e["userId"].encode(), encode(e)) for e in batch], timeout=30)
    wait_until(
        lambda: counters(app).get("stored", 0) >= BIG_EVENTS, 60, what="the big events stored"
    )
    rss_before = rss_bytes(app.pid)

    # NOTE: chunks in a list, joined at the end: growing one 100 MB bytearray copies it on
    # reallocation while holding the GIL, which would stall this process's own probe thread.
    chunks: list[bytes] = []
    done = threading.Event()

    def slow_reader() -> None:
        with (
            httpx.Client(base_url=app.base_url, timeout=30) as client,
            client.stream("GET", "/events/processed") as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw(256 * 1024):
                chunks.append(chunk)
                time.sleep(0.004)
        done.set()

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    latencies: list[float] = []
    peak_rss = rss_before
    with httpx.Client(base_url=app.base_url, timeout=5) as probe:
        while not done.wait(0.02):
            started = time.perf_counter()
            assert probe.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            peak_rss = max(peak_rss, rss_bytes(app.pid))
    reader.join(30)
    body = b"".join(chunks)

    listing: list[dict[str, Any]] = httpx.Response(200, content=body).json()
    growth = peak_rss - rss_before
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 20 else max(latencies)
    print(
        f"listing of {len(body) / 1e6:.1f} MB: {len(latencies)} health probes during it, "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; RSS {rss_before / 1e6:.0f} MB -> peak "
        f"{peak_rss / 1e6:.0f} MB (+{growth / 1e6:.1f} MB)"
    )
    assert len(listing) == BIG_EVENTS
    assert {event["eventId"] for event in listing} == {event["eventId"] for event in events}
    assert len(latencies) >= 20, "the listing ended before /health could be probed"
    assert max(latencies) < HEALTH_DURING_LISTING_SECONDS
    assert growth < LISTING_RSS_GROWTH_LIMIT


def test_listing_ids_are_unique(process_control: Spawn, kafka: KafkaTools) -> None:
    """Redelivered events (same eventId, produced twice) are listed once even across pages."""
    app = process_control()
    events = [make_event(f"user-{uuid.uuid4().hex[:6]}", blob="y" * 2000) for _ in range(200)]
    records = [(e["userId"].encode(), encode(e)) for e in events]
    kafka.produce(app.topic, records + records)
    wait_until(
        lambda: counters(app).get("stored", 0) + counters(app).get("duplicates", 0) >= 400,
        20,
        what="400 records consumed",
    )
    ids = [event["eventId"] for event in app.processed()]
    assert len(ids) == len(set(ids)) == 200
