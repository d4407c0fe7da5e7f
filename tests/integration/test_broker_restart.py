"""A real broker restart under steady traffic: Apache Kafka stopped and started again on the same
port and data folder, its log and committed offsets intact.

The promise: every ``201`` is on the topic and exactly once in the store; the long-lived
idempotent producer keeps delivering (it is not replaced, no actor restarts); the consumer
resumes from the group's committed offsets; ``/health`` shows ``degraded`` while the broker is
away and ``200`` again after it is back.

Tansu forgets everything on a restart (memory storage), so these tests need a durable log: they
run on the Apache Kafka legs only and are deselected (never skipped) on Tansu (marker
``durable_broker``, see conftest).
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from support.faults import OwnBroker
from support.kafka_tools import committed_offsets
from support.services import ServiceProcess, Spawn
from support.traffic import HealthSample, Outcome, figures, post_until, watch_health
from support.waiting import wait_until

#: The service as docker-compose.yml runs it, but with the suite's fast group timings
#: (FAST_SETTINGS) and a publish timeout short enough that requests caught by the restart
#: answer 503 soon.
RESTART_SETTINGS = {
    "PUBLISH_TIMEOUT_MS": "2000",
    "SHUTDOWN_TIMEOUT_MS": "5000",
}

#: How many 201s the traffic must have had before the stop, and again after the restart.
STEADY = 20

#: Log lines that say an actor failed and was restarted by the supervisor.
ACTOR_FAILED = "actor %s failed"


def _consumed(app: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in app.log_lines() if line.get("msg") == "event consumed"]


def _created(outcomes: list[Outcome], since: float = 0.0) -> list[str]:
    return [o.event_id for o in outcomes if o.status == 201 and o.event_id and o.started >= since]


@pytest.mark.durable_broker
@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"]
)
def test_broker_restart_under_traffic_loses_and_repeats_nothing(
    process_control: Spawn, stallable_broker: OwnBroker, stop_signal: signal.Signals
) -> None:
    """The broker stopped (SIGTERM or SIGKILL) under POST traffic and started again: every 201
    is on the topic and listed once, the producer is never replaced, no actor restarts, the
    consumer resumes at the committed offsets, and health goes degraded and back to 200."""
    own = stallable_broker
    kafka = own.broker.kafka
    assert kafka is not None, "a restart needs an Apache Kafka broker of the test's own"
    app = process_control(RESTART_SETTINGS, bootstrap_servers=own.bootstrap_servers)
    first = app.post_event(user_id="before-traffic")
    app.wait_processed({first["eventId"]})

    stop, outcomes, samples = threading.Event(), list[Outcome](), list[HealthSample]()
    with httpx.Client(base_url=app.base_url, timeout=15) as client:
        workers = [
            threading.Thread(target=post_until, args=(client, stop, outcomes)),
            threading.Thread(target=watch_health, args=(app, stop, samples)),
        ]
        for worker in workers:
            worker.start()
        try:
            wait_until(lambda: len(_created(outcomes)) >= STEADY, 30, what="steady traffic")
            # Committed offsets to resume from: auto-commit runs every 5 s (librdkafka).
            before = wait_until(
                lambda: committed_offsets(own.bootstrap_servers, app.group, app.topic),
                15,
                what="a committed offset",
            )
            consumed_before = len(_consumed(app))
            stopped_at = time.monotonic()
            exit_code = kafka.stop_kafka(stop_signal)
            print(f"\nbroker stopped by {stop_signal.name}: exit {exit_code}")
            wait_until(
                lambda: [s for s in samples if s.at > stopped_at and s.status == 503],
                30,
                what="/health 503 while the broker is down",
            )
            kafka.start_kafka()
            back_at = time.monotonic()
            print(f"broker back after {back_at - stopped_at:.1f} s (starts: {kafka.starts})")
            wait_until(
                lambda: len(_created(outcomes, since=back_at)) >= STEADY,
                45,
                what=f"{STEADY} 201s after the broker came back",
            )
            healthy_at = wait_until(
                lambda: next((s.at for s in samples if s.at > back_at and s.status == 200), None),
                30,
                what="/health 200 after the broker came back",
            )
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)

    statuses = collections.Counter(o.status for o in outcomes)
    latency = figures(o.seconds for o in outcomes if o.status == 201)
    print(
        f"statuses {dict(statuses)}; 201 latency {latency}; "
        f"health 200 {healthy_at - back_at:.2f} s after the broker's return"
    )
    assert set(statuses) <= {201, 503}, statuses
    degraded = [
        s for s in samples if stopped_at < s.at < healthy_at and "degraded" in s.states.values()
    ]
    assert degraded, "health never reported degraded while the broker was down"

    created = set(_created(outcomes)) | {first["eventId"]}
    listed = app.wait_processed(created, timeout=30)
    listed_ids = [event["eventId"] for event in listed]
    repeated = sorted(i for i, n in collections.Counter(listed_ids).items() if n > 1)
    assert not repeated, f"listed more than once: {repeated}"

    on_topic = {
        json.loads(message.value())["eventId"]
        for message in own.kafka.read(
            app.topic,
            until=lambda read: created <= {json.loads(m.value())["eventId"] for m in read},
            timeout=20,
        )
    }
    assert created <= on_topic, f"201 but not on the topic: {sorted(created - on_topic)}"

    health: dict[str, Any] = app.health().json()
    assert health["counters"].get("producer_replacements", 0) == 0, health["counters"]
    assert not [line for line in app.log_lines() if line.get("msg") == ACTOR_FAILED]
    assert app.alive()

    replayed = [
        line
        for line in _consumed(app)[consumed_before:]
        if line["offset"] < before.get(line["partition"], 0)
    ]
    assert not replayed, f"consumed again below the committed offsets {before}: {replayed[:5]}"
    after = committed_offsets(own.bootstrap_servers, app.group, app.topic)
    assert all(after.get(partition, -1) >= offset for partition, offset in before.items()), (
        before,
        after,
    )
