"""The service process stopped, killed, or failing inside, under traffic; then started again.

What these tests hold the service to: a ``201`` always means the event is on the topic, even when
the process is stopped mid-traffic; a new process on the same group resumes at the committed
offset and skips nothing after it (at-least-once: after a SIGKILL it may replay what the killed
one processed but had not committed); an actor that raises is restarted with backoff while HTTP
keeps serving, and one that keeps raising ends the process with status 1.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
from confluent_kafka import Message
from support.brokers import Broker
from support.crashing_service import MARKER
from support.events import make_event, unique_user
from support.kafka_tools import KafkaTools, committed_offsets
from support.services import ServiceProcess, Services, Spawn, spawn_module
from support.waiting import wait_until

#: Errors a POST may meet once the server stopped accepting: refused, or closed under it.
CLEAN_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

CRASHING_SERVICE = "tests.support.crashing_service"

#: The partitions the service creates its topic with (KAFKA_TOPIC_PARTITIONS default).
PARTITIONS = 3


@attrs.frozen
class Answer:
    """One POST under traffic: a status (and the eventId of a 201), or a clean error."""

    status: int | None
    event_id: str | None = None
    error: str | None = None


def post_until(base_url: str, stop: threading.Event, answers: list[Answer]) -> None:
    """POST events one after another on a keep-alive connection until ``stop`` is set."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post(
                    "/events/generate", json={"userId": unique_user(), "eventType": "LOGIN"}
                )
            except CLEAN_ERRORS as error:  # anything else, a timeout included, fails the test
                answers.append(Answer(None, error=type(error).__name__))
                time.sleep(0.02)  # the server is gone: do not spin
                continue
            event_id = response.json().get("eventId") if response.status_code == 201 else None
            answers.append(Answer(response.status_code, event_id))


def event_id(message: Message) -> str:
    value = message.value()
    assert value is not None
    return str(json.loads(value)["eventId"])


def produce_on_every_partition(kafka: KafkaTools, topic: str, count: int) -> set[str]:
    """Produce at least ``count`` events, each with a new userId, until every partition holds
    one of them: once a reader has all of them it has read everything produced before."""
    produced: set[str] = set()
    partitions: set[int] = set()
    while len(produced) < count or len(partitions) < PARTITIONS:
        assert len(produced) < count + 100, f"partitions reached: {sorted(partitions)}"
        event = make_event(unique_user(), "PRODUCT_VIEW", n=len(produced))
        value = json.dumps(event, separators=(",", ":")).encode()
        [(partition, _)] = kafka.produce(topic, [(event["userId"].encode(), value)])
        partitions.add(partition)
        produced.add(event["eventId"])
    return produced


def read_through(kafka: KafkaTools, topic: str, last: set[str]) -> list[Message]:
    """Every message of ``topic``, read until all of ``last`` (one on every partition) is in."""
    messages = kafka.read(topic, until=lambda read: last <= {event_id(m) for m in read}, timeout=15)
    assert last <= {event_id(m) for m in messages}, "the topic could not be read to its end"
    return messages


def from_offsets(messages: list[Message], offsets: dict[int, int]) -> set[str]:
    """eventIds of the messages at or after the committed offset of their partition (the
    start of the partition where nothing was committed: auto.offset.reset=earliest)."""
    return {
        event_id(m) for m in messages if (m.offset() or 0) >= offsets.get(m.partition() or 0, 0)
    }


def listed_once(app: ServiceProcess) -> list[str]:
    """eventIds of GET /events/processed; asserts none is listed twice."""
    ids = [event["eventId"] for event in app.processed()]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} eventId(s) listed twice"
    return ids


def test_sigterm_under_traffic_loses_nothing_and_restart_resumes(
    process_control: Spawn, kafka: KafkaTools, broker: Broker, topic: str, group: str
) -> None:
    """SIGTERM mid-traffic exits 0 in time, every 201 is on the topic, a restart skips nothing."""
    first = process_control(env={"SHUTDOWN_TIMEOUT_MS": "5000", "PUBLISH_TIMEOUT_MS": "2000"})
    answers: list[Answer] = []
    stop = threading.Event()
    posters = [
        threading.Thread(target=post_until, args=(first.base_url, stop, answers), daemon=True)
        for _ in range(4)
    ]
    for poster in posters:
        poster.start()
    try:
        # the first process has consumed for a while: its shutdown has offsets to commit
        wait_until(lambda: len(listed_once(first)) >= 100, 15, what="100 events processed")
        processed_by_first = len(listed_once(first))
        started = time.monotonic()
        exit_code = first.terminate(timeout=10)
        shutdown = time.monotonic() - started
        sent_at_exit = len(answers)
    finally:
        stop.set()
        for poster in posters:
            poster.join(timeout=15)

    created = {a.event_id for a in answers if a.status == 201 and a.event_id}
    outcomes = sorted({a.error or str(a.status) for a in answers})
    print(
        f"\nSIGTERM under traffic: exit {exit_code} after {shutdown:.2f} s; {len(answers)} POSTs "
        f"({sent_at_exit} before the exit): {len(created)} got 201, outcomes {outcomes}"
    )
    assert exit_code == 0, first.log_tail()
    assert shutdown < 5.0  # SHUTDOWN_TIMEOUT_MS
    assert not [a for a in answers if a.status not in (None, 201, 503)], outcomes

    committed = committed_offsets(broker.bootstrap_servers, group, topic)
    # the final commit covers at least what was listed before the signal
    assert sum(committed.values()) >= processed_by_first, (committed, processed_by_first)
    produced_while_down = produce_on_every_partition(kafka, topic, 20)
    messages = read_through(kafka, topic, produced_while_down)
    on_topic = {event_id(m) for m in messages}
    assert created <= on_topic, f"201 but not on the topic: {sorted(created - on_topic)}"

    second = process_control()
    expected = from_offsets(messages, committed)
    second.wait_processed(expected, timeout=15)
    listed = listed_once(second)
    print(
        f"restart: committed offsets {committed}; {len(messages)} messages on the topic, "
        f"{len(expected)} after the committed offsets, all processed by the new process"
    )
    assert produced_while_down <= expected
    assert set(listed) == expected  # after a graceful stop nothing before the commit is replayed


def test_sigkill_under_traffic_replays_from_the_committed_offsets(
    process_control: Spawn, kafka: KafkaTools, broker: Broker, topic: str, group: str
) -> None:
    """After SIGKILL mid-traffic a new process processes every message after the committed ones."""
    first = process_control()
    stop = threading.Event()

    def produce_until_stopped() -> None:
        while not stop.is_set():
            kafka.produce_events(topic, [make_event(unique_user()) for _ in range(5)])
            time.sleep(0.02)  # paces the traffic

    producer = threading.Thread(target=produce_until_stopped, daemon=True)
    producer.start()
    try:
        # librdkafka auto-commits stored offsets every 5 s: wait for a first commit
        before = wait_until(
            lambda: committed_offsets(broker.bootstrap_servers, group, topic),
            15,
            what="a commit by the first process",
        )
        # more traffic is processed past that commit: the kill leaves it uncommitted
        at_commit = len(listed_once(first))
        wait_until(
            lambda: len(listed_once(first)) >= at_commit + 100, 10, what="100 more processed"
        )
        seen_by_first = set(listed_once(first))
        before = committed_offsets(broker.bootstrap_servers, group, topic)
        assert first.kill() == -9
        # what the group will resume from: a killed process commits nothing more
        resume_at = committed_offsets(broker.bootstrap_servers, group, topic)
        started = time.monotonic()
        second = process_control()
        rejoined = time.monotonic() - started
    finally:
        stop.set()
        producer.join(timeout=15)

    assert all(resume_at[p] >= offset for p, offset in before.items()), (before, resume_at)
    last = produce_on_every_partition(kafka, topic, 10)
    messages = read_through(kafka, topic, last)
    expected = from_offsets(messages, resume_at)
    second.wait_processed(expected, timeout=20)
    listed = listed_once(second)
    replayed = expected & seen_by_first
    print(
        f"\nSIGKILL under traffic: committed before the kill {before}, after {resume_at}; new "
        f"process healthy {rejoined:.2f} s after spawn; {len(messages)} messages on the topic, "
        f"{len(expected)} checked from the committed offsets (all processed), {len(replayed)} "
        "of them replayed after being processed by the killed process"
    )
    assert expected <= set(listed)
    assert len(expected) >= 50, "too little traffic to show anything"


def health_watcher(app: ServiceProcess, on_restarting: Callable[[str], None]) -> Callable[[], bool]:
    """A predicate for wait_until: true once the process exited; meanwhile calls
    ``on_restarting(detail)`` once per distinct detail of a ``restarting`` consumer."""
    seen: set[str] = set()

    def check() -> bool:
        if not app.alive():
            return True
        try:
            response = app.health()
        except httpx.TransportError:  # exiting
            return False
        consumer = response.json()["actors"]["consumer"]
        if consumer["state"] == "restarting" and consumer["detail"] not in seen:
            seen.add(consumer["detail"])
            on_restarting(consumer["detail"])
        return False

    return check


#: Fast restarts: delays are drawn from [B/2, B], then [B, 2B], ... (equal jitter).
CRASH_SETTINGS = {
    "RESTART_BACKOFF_MS": "400",
    "RESTART_MAX_FAILURES": "3",
    "RESTART_WINDOW_MS": "60000",
    "SHUTDOWN_TIMEOUT_MS": "3000",
}


def failures_logged(app: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in app.log_lines() if line["msg"] == "actor consumer failed"]


def test_crashing_consumer_is_restarted_with_backoff_then_gives_up(
    service: Services, kafka: KafkaTools, topic: str
) -> None:
    """A consumer that keeps raising is restarted with growing delays, HTTP serves, then exit 1."""
    app = spawn_module(service, CRASHING_SERVICE, env=CRASH_SETTINGS)
    warm = app.post_event(user_id=unique_user())
    app.wait_processed({warm["eventId"]})

    served: list[tuple[str, int, int]] = []

    def while_restarting(detail: str) -> None:
        posted = app.http.post(
            "/events/generate", json={"userId": unique_user(), "eventType": "LOGIN"}
        )
        listed = app.http.get("/events/processed")
        served.append((detail, posted.status_code, listed.status_code))

    poison = make_event(unique_user(), "LOGIN", note=MARKER.decode())
    kafka.produce_events(topic, [poison])
    started = time.monotonic()
    wait_until(health_watcher(app, while_restarting), 45, what="the process to exit", interval=0.02)
    exit_code = app.process.wait(timeout=5)
    took = time.monotonic() - started

    failures = failures_logged(app)
    delays = [float(re.findall(r"retry in ([0-9.]+) s", detail)[0]) for detail, _, _ in served]
    print(
        f"\ncrash loop: exit {exit_code} {took:.2f} s after the poison record; "
        f"{len(failures)} failures logged; restart delays seen in /health {delays}; "
        f"while restarting POST/GET answered {[(p, g) for _, p, g in served]}"
    )
    assert exit_code == 1, app.log_tail()
    assert [line["failures"] for line in failures] == [1, 2, 3]
    offsets = {
        re.findall(r"injected failure at (partition \d+ offset \d+)", line["error"])[0]
        for line in failures
    }
    assert len(offsets) == 1, f"the same record each time: {offsets}"
    giving_up = [line for line in app.log_lines() if line["msg"] == "giving up"]
    assert [line["level"] for line in giving_up] == ["CRITICAL"]
    # The first two failures are restarted: delay n is drawn from [B/2, B] * 2 ** (n - 1).
    assert len(delays) == 2, served
    base = int(CRASH_SETTINGS["RESTART_BACKOFF_MS"]) / 1000
    for attempt, delay in enumerate(delays, start=1):
        ceiling = base * 2 ** (attempt - 1)
        assert ceiling / 2 - 0.01 <= delay <= ceiling + 0.01, (attempt, delay)
    assert delays[0] <= delays[1]
    assert [(p, g) for _, p, g in served] == [(201, 200)] * 2


def test_consumer_crash_once_is_restarted_and_the_record_processed(
    service: Services, kafka: KafkaTools, topic: str, tmp_path: Path
) -> None:
    """After one crash on a record the restarted consumer processes that record normally."""
    flag = tmp_path / "crash-once"
    flag.touch()
    app = spawn_module(
        service, CRASHING_SERVICE, env=CRASH_SETTINGS | {"CRASH_ONCE_FILE": str(flag)}
    )
    event = make_event(unique_user(), "LOGIN", note=MARKER.decode())
    started = time.monotonic()
    kafka.produce_events(topic, [event])
    listed = app.wait_processed({event["eventId"]}, timeout=20)
    took = time.monotonic() - started
    print(f"\ncrash once: the record was processed {took:.2f} s after it was produced")
    assert not flag.exists(), "the consumer never crashed"
    assert [line["failures"] for line in failures_logged(app)] == [1]
    assert [e for e in listed if e["eventId"] == event["eventId"]] == [event]
    app.wait_healthy(timeout=10)
    assert app.alive()
