"""Metrics, probes and trace context of the real service process, over real HTTP and Kafka.

``/metrics`` is scraped before and after a known mix of traffic and read with
prometheus-client's own parser; each counter must have moved by exactly the traffic's amounts.
The trace context is followed from the POST to the message on the topic (read by a consumer
that shares nothing with the service) and to the consumer's log line.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from metric_samples import Scrape
from monitoring_files import alert_rules, dashboard_expressions, metrics_used
from support.faults import ProxiedBroker
from support.kafka_tools import KafkaTools, header_dict
from support.services import ServiceHandle, Services, Spawn
from support.waiting import wait_until

from actors.devtools.local_broker import free_port
from actors.domain.events import utc_timestamp

P = "user_activity_"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def scrape(app: ServiceHandle) -> Scrape:
    response = app.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape.parse(response.text)


def consumed(result: Scrape, outcome: str) -> float:
    return result.value(f"{P}events_consumed_total", outcome=outcome)


def raw_event(user_id: str) -> dict[str, Any]:
    """An event as the service would publish it, written to the topic by the test itself."""
    return {
        "eventId": str(uuid.uuid4()),
        "userId": user_id,
        "eventType": "PRODUCT_VIEW",
        "timestamp": utc_timestamp(),
        "payload": {"sku": "1"},
    }


def test_counters_move_by_exactly_the_traffic_sent(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """3 valid POSTs, 2 invalid ones and 1 of the wrong type; one event on the topic twice and
    two malformed records: every counter moves by exactly that, and nothing else moves."""
    app = service()
    user = f"metrics-{uuid.uuid4().hex[:8]}"
    before = scrape(app)

    posted = [app.post_event(user_id=user)["eventId"] for _ in range(3)]
    invalid = [
        app.http.post("/events/generate", json={"userId": "", "eventType": "X"}) for _ in range(2)
    ]
    wrong_type = app.http.post(
        "/events/generate", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert [answer.status_code for answer in invalid] == [400, 400]
    assert wrong_type.status_code == 415
    twice = raw_event(user)
    kafka.produce_events(topic, [twice, twice])
    kafka.produce(topic, [(user.encode(), b"{not json"), (user.encode(), b"[1, 2]")])
    app.wait_processed({*posted, twice["eventId"]})

    def settled() -> Scrape | None:
        current = scrape(app)
        handled = sum(
            consumed(current, o) - consumed(before, o) for o in ("stored", "duplicate", "malformed")
        )
        return current if handled >= 7 else None

    wait_until(settled, 15, what="7 records handled by the consumer")
    time.sleep(0.5)  # anything beyond the traffic would show up by now
    after = scrape(app)

    def moved(name: str, **labels: str) -> float:
        return after.delta(before, name, **labels)

    generate = {"route": "/events/generate", "method": "POST"}
    assert moved(f"{P}http_requests_total", **generate, status="201") == 3
    assert moved(f"{P}http_requests_total", **generate, status="400") == 2
    assert moved(f"{P}http_requests_total", **generate, status="415") == 1
    assert moved(f"{P}http_request_duration_seconds_count", route="/events/generate") == 6
    assert moved(f"{P}events_published_total") == 3
    assert moved(f"{P}publish_latency_seconds_count") == 3
    for reason in ("timeout", "queue_full", "refused", "unavailable"):
        assert moved(f"{P}publish_failures_total", reason=reason) == 0, reason
    assert moved(f"{P}events_consumed_total", outcome="stored") == 4
    assert moved(f"{P}events_consumed_total", outcome="duplicate") == 1
    assert moved(f"{P}events_consumed_total", outcome="malformed") == 2
    assert moved(f"{P}events_consumed_total", outcome="dead_lettered") == 0
    assert moved(f"{P}end_to_end_latency_seconds_count") == 4
    assert moved(f"{P}stored_events") == 4
    for actor in ("consumer", "publisher"):
        assert moved(f"{P}actor_restarts_total", actor=actor) == 0
    assert after.value(f"{P}ready") == 1
    assert after.value(f"{P}actor_state", actor="consumer", state="running") == 1
    assert after.value(f"{P}mailbox_capacity", mailbox="publisher") > 0


def test_every_metric_the_dashboard_and_alerts_use_is_served(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """After some traffic, each user_activity_ series the dashboard and the alert rules query
    is in the real /metrics, consumer lag per partition included."""
    app = service()
    app.wait_processed({app.post_event(user_id=f"dash-{uuid.uuid4().hex[:8]}")["eventId"]})
    used = metrics_used(dashboard_expressions() + [rule["expr"] for rule in alert_rules()])
    assert len(used) > 10

    def served() -> Scrape | None:
        current = scrape(app)
        lagging = len(current.samples(f"{P}consumer_lag_messages"))
        assigned = current.samples(f"{P}assigned_partitions").get(frozenset(), 0)
        complete = used <= current.sample_names() and 0 < lagging == assigned
        return current if complete else None

    # Statistics come every second; each assigned partition gets its lag once it was fetched.
    result = wait_until(served, 10, what="every queried series, a lag per assigned partition")
    assert result.value(f"{P}assigned_partitions") >= 1


def test_traceparent_and_request_id_reach_the_topic_and_the_consumer_log(
    process_control: Spawn, kafka: KafkaTools, topic: str
) -> None:
    """A POST's traceparent and X-Request-Id are headers of its message on the topic and
    fields of the consumer's log line; the id is returned to the client."""
    app = process_control()
    response = app.http.post(
        "/events/generate",
        json={"userId": "traced", "eventType": "LOGIN"},
        headers={"traceparent": TRACEPARENT, "X-Request-Id": "trace-test-1"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-Id"] == "trace-test-1"
    event_id = response.json()["eventId"]

    messages = kafka.read(
        topic, until=lambda read: any(event_id.encode() in (m.value() or b"") for m in read)
    )
    [message] = [m for m in messages if json.loads(m.value() or b"{}").get("eventId") == event_id]
    headers = header_dict(message)
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert headers["x-request-id"] == b"trace-test-1"

    [line] = app.wait_for_logs(
        lambda line: line.get("msg") == "event consumed" and line.get("eventId") == event_id
    )
    assert (line["traceparent"], line["requestId"]) == (TRACEPARENT, "trace-test-1")


def test_malformed_trace_headers_are_ignored_and_never_logged(
    process_control: Spawn, kafka: KafkaTools, topic: str
) -> None:
    """A malformed traceparent and X-Request-Id still get 201; the message carries no
    traceparent and a new request id, and neither raw value appears in the service's output."""
    app = process_control()
    bad_parent = "00-NOT-A-TRACE-forged-7"
    bad_id = 'evil" injected'
    response = app.http.post(
        "/events/generate",
        json={"userId": "untraced", "eventType": "LOGIN"},
        headers={"traceparent": bad_parent, "X-Request-Id": bad_id},
    )
    assert response.status_code == 201, response.text
    new_id = response.headers["X-Request-Id"]
    assert new_id != bad_id
    event_id = response.json()["eventId"]
    app.wait_processed({event_id})
    messages = kafka.read(
        topic, until=lambda read: any(event_id.encode() in (m.value() or b"") for m in read)
    )
    [message] = [m for m in messages if json.loads(m.value() or b"{}").get("eventId") == event_id]
    assert header_dict(message) == {"x-request-id": new_id.encode()}
    [line] = app.wait_for_logs(
        lambda line: line.get("msg") == "event consumed" and line.get("eventId") == event_id
    )
    assert (line["traceparent"], line["requestId"]) == (None, new_id)
    output = app.log_text()
    assert bad_parent not in output
    assert "injected" not in output


def test_liveness_and_readiness_while_the_broker_is_missing(service: Services) -> None:
    """With no broker answering, the process is live (200) but not ready (503), and its
    metrics say so."""
    if service.external:
        # An external stack has its broker; the probes' healthy answers are checked above.
        app = service()
        assert app.http.get("/health/live").status_code == 200
        assert app.http.get("/health/ready").status_code == 200
        return
    app = service.spawn(wait_healthy=False, bootstrap_servers=f"127.0.0.1:{free_port()}")

    def answering() -> httpx.Response | None:
        try:
            return app.http.get("/health/live", timeout=1)
        except httpx.TransportError:
            return None

    live = wait_until(answering, 20, what="an answer to GET /health/live")
    assert live.status_code == 200
    ready = app.http.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready"}
    assert scrape(app).value(f"{P}ready") == 0


def test_an_outage_is_seen_in_the_probes_and_counted_as_timeouts(
    process_control: Spawn, proxied_broker: ProxiedBroker
) -> None:
    """With the path to the broker cut, the process stays live but turns not ready, each POST
    that times out is counted as a `timeout` failure, and readiness returns with the path."""
    app = process_control(
        env={"PUBLISH_TIMEOUT_MS": "1000"}, bootstrap_servers=proxied_broker.bootstrap_servers
    )
    app.post_event(user_id="before-the-cut")  # the producer id is acquired before the cut
    before = scrape(app)
    proxied_broker.proxy.cut()
    try:
        wait_until(lambda: app.http.get("/health/ready").status_code == 503, 15, what="not ready")
        assert app.http.get("/health/live").status_code == 200
        answers = [
            app.http.post("/events/generate", json={"userId": "cut", "eventType": "LOGIN"})
            for _ in range(3)
        ]
        assert [answer.status_code for answer in answers] == [503, 503, 503]
        during = scrape(app)
    finally:
        proxied_broker.proxy.restore()
    assert during.delta(before, f"{P}publish_failures_total", reason="timeout") == 3
    assert during.delta(before, f"{P}events_published_total") == 0
    assert during.value(f"{P}ready") == 0
    wait_until(lambda: app.http.get("/health/ready").status_code == 200, 30, what="ready again")
