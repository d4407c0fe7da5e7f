"""The metrics module: what each recording does to the exposition, read back with the parser."""

from __future__ import annotations

import pytest
import trio
from metric_samples import Scrape

from actors.domain.events import new_event
from actors.domain.messages import PublishOutcome, PublishRequest
from actors.kafka.bridge import statistics_from
from actors.runtime.health import ActorState, Health
from actors.runtime.metrics import (
    CONSUME_OUTCOMES,
    PREFIX,
    PUBLISH_FAILURE_KINDS,
    Metrics,
)


def scrape(metrics: Metrics) -> Scrape:
    return Scrape.parse(metrics.exposition().decode())


def test_every_metric_has_the_prefix_and_counters_end_in_total() -> None:
    """Each family starts with the one prefix, each counter is named ..._total, and no
    `_created` series clutters the exposition."""
    metrics = Metrics(restartable=("consumer",))
    metrics.watch_health(Health(("consumer",)))
    text = metrics.exposition().decode()
    declared = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert len(declared) > 20
    assert [name for name in declared if not name.startswith(PREFIX)] == []
    counters = [name for name, kind in declared.items() if kind == "counter"]
    assert counters
    assert [name for name in counters if not name.endswith("_total")] == []
    assert [name for name in declared if name.endswith("_created")] == []
    assert set(scrape(metrics).families) == {name.removesuffix("_total") for name in declared}


def test_labelled_counters_start_at_zero_for_every_known_label() -> None:
    """Failure reasons, consume outcomes and restartable actors are exported at 0 from the
    start, so an alert's increase() sees their first occurrence."""
    result = scrape(Metrics(restartable=("consumer", "publisher")))
    assert result.samples(f"{PREFIX}publish_failures_total") == {
        frozenset({("reason", reason)}): 0.0 for reason in PUBLISH_FAILURE_KINDS
    }
    assert result.samples(f"{PREFIX}events_consumed_total") == {
        frozenset({("outcome", outcome)}): 0.0 for outcome in CONSUME_OUTCOMES
    }
    assert result.samples(f"{PREFIX}actor_restarts_total") == {
        frozenset({("actor", "consumer")}): 0.0,
        frozenset({("actor", "publisher")}): 0.0,
    }


def test_recordings_move_exactly_their_own_series() -> None:
    """Each recording method moves its own series by exactly what was recorded."""
    metrics = Metrics(restartable=("consumer",))
    before = scrape(metrics)
    metrics.http_request(route="/health", method="GET", status=503, seconds=0.002)
    metrics.http_request(route="/health", method="GET", status=503, seconds=0.004)
    metrics.publish_failed("queue_full")
    metrics.publish_acknowledged(0.03)
    metrics.event_published()
    metrics.event_consumed("duplicate")
    metrics.event_consumed("duplicate")
    metrics.end_to_end(-1.0)  # clocks apart: counted as 0, not negative
    metrics.actor_restarted("consumer")
    metrics.producer_queue(17)
    after = scrape(metrics)
    route = {"route": "/health", "method": "GET", "status": "503"}
    assert after.delta(before, f"{PREFIX}http_requests_total", **route) == 2
    assert after.value(f"{PREFIX}http_request_duration_seconds_count", route="/health") == 2
    assert after.value(
        f"{PREFIX}http_request_duration_seconds_sum", route="/health"
    ) == pytest.approx(0.006)
    assert after.delta(before, f"{PREFIX}publish_failures_total", reason="queue_full") == 1
    assert after.delta(before, f"{PREFIX}publish_failures_total", reason="timeout") == 0
    assert after.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.025") == 0
    assert after.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.05") == 1
    assert after.delta(before, f"{PREFIX}events_published_total") == 1
    assert after.delta(before, f"{PREFIX}events_consumed_total", outcome="duplicate") == 2
    assert after.delta(before, f"{PREFIX}events_consumed_total", outcome="stored") == 0
    assert after.value(f"{PREFIX}end_to_end_latency_seconds_sum") == 0
    assert after.value(f"{PREFIX}end_to_end_latency_seconds_count") == 1
    assert after.delta(before, f"{PREFIX}actor_restarts_total", actor="consumer") == 1
    assert after.value(f"{PREFIX}producer_queue_messages") == 17


def test_consumer_lag_series_follow_the_assignment() -> None:
    """Lag is exported per assigned partition; a partition no longer listed loses its series."""
    metrics = Metrics()
    metrics.consumer_assignment(2, {("t", 0): 5, ("t", 1): 0})
    first = scrape(metrics)
    metrics.consumer_assignment(1, {("t", 1): 3})
    second = scrape(metrics)
    lag = f"{PREFIX}consumer_lag_messages"
    assert first.samples(lag) == {
        frozenset({("topic", "t"), ("partition", "0")}): 5.0,
        frozenset({("topic", "t"), ("partition", "1")}): 0.0,
    }
    assert second.samples(lag) == {frozenset({("topic", "t"), ("partition", "1")}): 3.0}
    assert (
        first.value(f"{PREFIX}assigned_partitions"),
        second.value(f"{PREFIX}assigned_partitions"),
    ) == (2, 1)


async def test_mailboxes_and_health_are_read_when_scraped() -> None:
    """Mailbox depth and capacity, actor states, readiness and the store's size are read from
    their owners at scrape time, not copied when they change."""
    metrics = Metrics()
    send, _receive = trio.open_memory_channel[PublishRequest](8)
    health = Health(("store", "consumer"))
    metrics.watch_mailbox("publisher", send)
    metrics.watch_health(health)
    empty = scrape(metrics)
    send.send_nowait(_request())
    send.send_nowait(_request())
    health.report("store", ActorState.RUNNING)
    health.report("consumer", ActorState.RUNNING)
    health.gauge("store_events", 12)
    health.gauge("store_bytes", 3400)
    later = scrape(metrics)
    assert empty.value(f"{PREFIX}mailbox_depth", mailbox="publisher") == 0
    assert later.value(f"{PREFIX}mailbox_depth", mailbox="publisher") == 2
    assert later.value(f"{PREFIX}mailbox_capacity", mailbox="publisher") == 8
    assert empty.value(f"{PREFIX}ready") == 0
    assert later.value(f"{PREFIX}ready") == 1
    assert empty.value(f"{PREFIX}actor_state", actor="consumer", state="starting") == 1
    assert later.value(f"{PREFIX}actor_state", actor="consumer", state="starting") == 0
    assert later.value(f"{PREFIX}actor_state", actor="consumer", state="running") == 1
    states = later.samples(f"{PREFIX}actor_state")
    assert sum(value for labels, value in states.items() if ("actor", "store") in labels) == 1
    assert (later.value(f"{PREFIX}stored_events"), later.value(f"{PREFIX}stored_bytes")) == (
        12,
        3400,
    )


def _request() -> PublishRequest:
    reply, _ = trio.open_memory_channel[PublishOutcome](1)
    event = new_event(user_id="u", event_type="LOGIN", payload={})
    return PublishRequest(event=event, deadline=0.0, reply=reply)


def test_two_services_in_one_process_keep_separate_metrics() -> None:
    """Each Metrics has its own registry: what one records, the other does not show."""
    first, second = Metrics(), Metrics()
    first.event_published()
    assert scrape(first).value(f"{PREFIX}events_published_total") == 1
    assert scrape(second).value(f"{PREFIX}events_published_total") == 0


# --- librdkafka statistics -------------------------------------------------------------------


def _partition(number: int, **fields: object) -> dict[str, object]:
    unknown = {
        "hi_offset": -1001,
        "lo_offset": -1001,
        "consumer_lag": -1,
        "consumer_lag_stored": -1,
    }
    return {"partition": number, "desired": True} | unknown | fields


def test_statistics_lag_prefers_the_stored_offset_then_the_committed_one() -> None:
    """Lag counts from what the store confirmed (stored offset), else from the committed
    offset, else, with neither yet, from the partition's start; unassigned partitions and
    librdkafka's internal -1 partition are left out."""
    stats = {
        "msg_cnt": 4,
        "cgrp": {"assignment_size": 3},
        "topics": {
            "t": {
                "partitions": {
                    "0": _partition(0, hi_offset=150, consumer_lag_stored=120, consumer_lag=140),
                    "1": _partition(1, hi_offset=200, consumer_lag=140),
                    "2": _partition(2, hi_offset=9, lo_offset=2),
                    "3": _partition(3, hi_offset=9, lo_offset=0, desired=False),
                    "4": _partition(4),
                    "-1": _partition(-1, hi_offset=5, consumer_lag=5),
                }
            }
        },
    }
    statistics = statistics_from(stats)
    assert statistics.queued_messages == 4
    assert statistics.assigned_partitions == 3
    assert statistics.lag == {("t", 0): 120, ("t", 1): 140, ("t", 2): 7}


def test_statistics_of_a_producer_have_no_assignment() -> None:
    """A producer's report (no cgrp, no consumer fields) gives its queue and nothing else."""
    statistics = statistics_from({"msg_cnt": 0, "topics": {}})
    assert (statistics.queued_messages, statistics.assigned_partitions, statistics.lag) == (
        0,
        0,
        {},
    )
