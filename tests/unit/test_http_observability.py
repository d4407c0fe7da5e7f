"""The HTTP actor's observability: /metrics, liveness and readiness, trace context on requests."""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing
from metric_samples import Scrape

from actors.domain.messages import Placed, PublishFailed, PublishOutcome, PublishRequest
from actors.runtime.health import ActorState
from actors.runtime.metrics import CONTENT_TYPE, PREFIX, Metrics

from .test_http import (
    JSON,
    PUBLISH_TIMEOUT,
    Service,
    never_answer,
    new_event_body,
    post_event,
    serving,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def scrape(service: Service) -> Scrape:
    response = await service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return Scrape.parse((await response.get_data()).decode())


# --- /health/live and /health/ready -----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "live", "ready"),
    [
        (ActorState.RUNNING, 200, 200),
        (ActorState.STARTING, 200, 503),
        (ActorState.DEGRADED, 200, 503),
        (ActorState.RESTARTING, 200, 503),
        (ActorState.STOPPED, 200, 503),
        (ActorState.FAILED, 503, 503),
    ],
)
async def test_liveness_fails_only_when_an_actor_is_given_up_on(
    state: ActorState, live: int, ready: int
) -> None:
    """Liveness is 503 only for a failed actor; readiness is 200 only when all run."""
    async with serving() as service:
        service.health.report("consumer", state)
        live_answer = await service.client.get("/health/live")
        ready_answer = await service.client.get("/health/ready")
        health = await service.client.get("/health")
    assert (live_answer.status_code, ready_answer.status_code) == (live, ready)
    assert health.status_code == ready, "readiness is /health's own answer"
    assert (await ready_answer.get_json())["status"] == ("ready" if ready == 200 else "not ready")
    assert (await live_answer.get_json())["status"] == ("live" if live == 200 else "failed")


# --- /metrics ----------------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_method_and_status() -> None:
    """Each answered request is counted once under its route pattern; unknown paths share one
    label, so a scanner cannot grow the number of series."""
    metrics = Metrics()
    async with serving(metrics=metrics) as service:
        before = await scrape(service)
        await post_event(service)
        await post_event(service, b"{not json")
        await service.client.get("/health")
        await service.client.get("/no/such/path")
        await service.client.get("/another/unknown")
        after = await scrape(service)
    requests = f"{PREFIX}http_requests_total"
    assert after.delta(before, requests, route="/events/generate", method="POST", status="201") == 1
    assert after.delta(before, requests, route="/events/generate", method="POST", status="400") == 1
    assert after.delta(before, requests, route="/health", method="GET", status="200") == 1
    assert after.delta(before, requests, route="unmatched", method="GET", status="404") == 2
    # The first scrape itself was counted before the second was taken.
    assert after.value(requests, route="/metrics", method="GET", status="200") == 1
    duration = f"{PREFIX}http_request_duration_seconds_count"
    assert after.delta(before, duration, route="/events/generate") == 2


async def test_acknowledged_publish_is_timed_from_hand_over_to_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """publish_latency_seconds measures the wait for the publisher's answer, in virtual time."""
    metrics = Metrics()
    async with serving(answer=never_answer, metrics=metrics) as service, trio.open_nursery() as n:
        n.start_soon(post_event, service)
        await trio.sleep(0.3)
        [request] = service.publish_requests
        request.reply.send_nowait(Placed(partition=0, offset=1))
    result = Scrape.parse(metrics.exposition().decode())
    assert result.value(f"{PREFIX}publish_latency_seconds_count") == 1
    assert result.value(f"{PREFIX}publish_latency_seconds_sum") == pytest.approx(0.3)
    assert result.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.25") == 0
    assert result.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.5") == 1


async def test_publish_failures_are_counted_by_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """timeout (no answer by the deadline), refused (non-retriable), queue_full (inbox full)
    and unavailable (publisher starting) are each counted once per failed POST."""

    def refuse(request: PublishRequest) -> PublishOutcome:
        return PublishFailed(reason="too large", retriable=False)

    reasons = f"{PREFIX}publish_failures_total"
    timeout_metrics, refused_metrics, full_metrics = Metrics(), Metrics(), Metrics()
    async with serving(answer=never_answer, metrics=timeout_metrics) as service:
        assert (await post_event(service)).status_code == 503
        assert trio.current_time() == pytest.approx(PUBLISH_TIMEOUT)
        service.health.report("publisher", ActorState.STARTING)
        assert (await post_event(service)).status_code == 503
    async with serving(answer=refuse, metrics=refused_metrics) as service:
        assert (await post_event(service)).status_code == 500
    async with serving(answer=None, publish_buffer=0, metrics=full_metrics) as service:
        assert (await post_event(service)).status_code == 503
    timeouts = Scrape.parse(timeout_metrics.exposition().decode())
    assert timeouts.value(reasons, reason="timeout") == 1
    assert timeouts.value(reasons, reason="unavailable") == 1
    assert timeouts.value(f"{PREFIX}publish_latency_seconds_count") == 0
    refused = Scrape.parse(refused_metrics.exposition().decode())
    assert refused.value(reasons, reason="refused") == 1
    assert refused.value(reasons, reason="timeout") == 0
    full = Scrape.parse(full_metrics.exposition().decode())
    assert full.value(reasons, reason="queue_full") == 1


# --- trace context -----------------------------------------------------------------------------


async def test_traceparent_and_request_id_reach_the_publish_request_and_the_answer() -> None:
    """A valid traceparent and X-Request-Id go to the publisher; the id comes back."""
    async with serving() as service:
        response = await post_event(
            service, traceparent=TRACEPARENT, **{"X-Request-Id": "client-7"}
        )
        [request] = service.publish_requests
    assert response.status_code == 201
    assert response.headers["X-Request-Id"] == "client-7"
    assert request.trace.traceparent == TRACEPARENT
    assert request.trace.request_id == "client-7"


@pytest.mark.parametrize(
    ("traceparent", "request_id"),
    [
        ("00-zz-not-hex", "has space"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x" * 200),
        ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"', '{"forged":1}'),
    ],
)
async def test_malformed_trace_headers_are_ignored_never_an_error(
    traceparent: str, request_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed values still get 201; the traceparent is dropped, the id replaced, and
    neither value reaches a log record."""
    caplog.set_level(logging.DEBUG)
    async with serving() as service:
        response = await post_event(
            service, traceparent=traceparent, **{"X-Request-Id": request_id}
        )
        [request] = service.publish_requests
    assert response.status_code == 201
    assert request.trace.traceparent is None
    assert request.trace.request_id == response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    logged = [repr(record.__dict__) for record in caplog.records]
    assert logged, "the access log line was not captured"
    assert not [line for line in logged if traceparent in line or request_id in line]


async def test_every_answer_carries_a_request_id() -> None:
    """Errors and other routes answer with X-Request-Id too, new for each request."""
    async with serving() as service:
        missing = await service.client.get("/no/such/path")
        invalid = await service.client.post(
            "/events/generate", data=new_event_body(userId=""), headers=JSON
        )
        health = await service.client.get("/health", headers={"X-Request-Id": "probe-1"})
    ids = [answer.headers.get("X-Request-Id") for answer in (missing, invalid)]
    assert all(ids)
    assert ids[0] != ids[1]
    assert health.headers["X-Request-Id"] == "probe-1"
