"""Broker outages: the path between the service and a live broker is cut, then restored.

The broker (of the suite's kind, ``TEST_BROKER``) keeps running behind a
:class:`~tests.support.proxy.TcpProxy` (its data survives); the real service process talks to it
through the proxy, and an independent client reads the topic back through the proxy once it
forwards again. The promise: during an outage the service answers quickly (``503`` with
``Retry-After``, never a hang), never answers ``201`` for an event that is not on the topic,
sheds load instead of growing, and recovers by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from confluent_kafka.admin import AdminClient
from support.events import unique_user
from support.faults import ProxiedBroker
from support.services import ServiceProcess, Spawn, rss_bytes
from support.traffic import Outcome, figures, post_until
from support.waiting import wait_until

from actors.devtools.local_broker import free_port, start_local_broker

PUBLISH_TIMEOUT = 2.0

#: Settings of the service behind the proxy: a short publish timeout so that an outage shows.
OUTAGE_SETTINGS = {
    "PUBLISH_TIMEOUT_MS": str(int(PUBLISH_TIMEOUT * 1000)),
    "SHUTDOWN_TIMEOUT_MS": "5000",
}

#: What a POST may take beyond the publish timeout: scheduling and HTTP on a busy 2-core box.
MARGIN = 0.5


def degraded_health(app: ServiceProcess) -> dict[str, Any] | None:
    """The /health body when it answers 503 with the publisher or consumer degraded."""
    response = app.health()
    if response.status_code != 503:
        return None
    body: dict[str, Any] = response.json()
    states = {name: actor["state"] for name, actor in body["actors"].items()}
    return body if "degraded" in (states["publisher"], states["consumer"]) else None


def wait_recovered(app: ServiceProcess, timeout: float = 30) -> float:
    """Wait for GET /health 200; returns how long that took, and prints what it waited for."""
    started = time.monotonic()
    waited_for: dict[str, str] = {}

    def healthy() -> bool:
        response = app.health()
        for name, actor in response.json()["actors"].items():
            if actor["state"] != "running":
                waited_for[name] = f"{actor['state']} ({actor.get('detail', '')})"
        return response.status_code == 200

    wait_until(healthy, timeout, what="health 200 after restore")
    took = time.monotonic() - started
    print(f"\nrecovery: health 200 after {took:.2f} s; not running meanwhile: {waited_for}")
    return took


def event_ids_on_topic(
    proxied: ProxiedBroker, topic: str, expected: set[str], timeout: float = 15
) -> list[str]:
    """Read the topic (independent client, through the proxy) until ``expected`` is all there
    or ``timeout``; returns every eventId read, in the order read."""

    def ids(messages: Sequence[Any]) -> list[str]:
        return [json.loads(message.value())["eventId"] for message in messages]

    messages = proxied.kafka.read(
        topic, until=lambda read: expected <= set(ids(read)), timeout=timeout
    )
    return ids(messages)


def assert_listed_once(app: ServiceProcess) -> list[dict[str, Any]]:
    listed = app.processed()
    ids = [event["eventId"] for event in listed]
    repeated = sorted({event_id for event_id in ids if ids.count(event_id) > 1})
    assert not repeated, f"listed more than once: {repeated}"
    return listed


def test_local_broker_advertises_the_given_port() -> None:
    """start_local_broker(advertised_port=P) tells clients to connect to port P (the proxy)."""
    advertised = free_port()
    local = start_local_broker(advertised_port=advertised)
    try:
        metadata = AdminClient({"bootstrap.servers": local.bootstrap_servers}).list_topics(
            timeout=5
        )
        ports = {broker.port for broker in metadata.brokers.values()}
    finally:
        local.stop()
    assert ports == {advertised}, f"listens on {local.port}, advertises {ports}, asked {advertised}"


def test_outage_answers_503_quickly_and_health_recovers(
    process_control: Spawn, proxied_broker: ProxiedBroker
) -> None:
    """While cut, POSTs get 503 in time, health degrades then recovers; 201s are on the topic."""
    proxy = proxied_broker.proxy
    app = process_control(env=OUTAGE_SETTINGS, bootstrap_servers=proxied_broker.bootstrap_servers)
    warm = app.post_event(user_id=unique_user())  # the producer id is acquired before the cut

    outcomes: list[Outcome] = []
    stop = threading.Event()
    with (
        httpx.Client(base_url=app.base_url, timeout=10) as client,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        proxy.cut()
        cut_at = time.monotonic()
        posters = [pool.submit(post_until, client, stop, outcomes) for _ in range(4)]
        degraded = wait_until(lambda: degraded_health(app), 15, what="degraded health")
        noticed = time.monotonic() - cut_at
        wait_until(
            lambda: sum(o.status == 503 for o in outcomes) >= 8, 15, what="eight 503s in the cut"
        )
        proxy.restore()
        restored_at = time.monotonic()
        recovery = wait_recovered(app)
        stop.set()
        for poster in posters:
            poster.result()  # a transport error or a client timeout (a hang) fails here
    after = app.post_event(user_id=unique_user())

    in_cut = [o for o in outcomes if o.ended <= restored_at]
    refused = [o for o in outcomes if o.status == 503]
    accepted = [o for o in outcomes if o.status == 201]
    print(
        f"\noutage: health degraded {noticed:.2f} s after the cut "
        f"({ {n: a['state'] for n, a in degraded['actors'].items()} }); "
        f"503 latency {figures(o.seconds for o in refused)}; "
        f"201 {len(accepted)} ({figures(o.seconds for o in accepted)}); "
        f"health 200 again {recovery:.2f} s after restore"
    )
    assert {o.status for o in outcomes} <= {201, 503}, sorted({o.status for o in outcomes})
    assert all(o.retry_after for o in refused), "a 503 without Retry-After"
    slowest = max(outcomes, key=lambda o: o.seconds)
    assert slowest.seconds < PUBLISH_TIMEOUT + MARGIN, slowest
    assert all(o.status == 503 for o in in_cut if o.started > cut_at), "201 while cut"
    assert degraded["status"] == "degraded"

    created = {warm["eventId"], after["eventId"]} | {o.event_id for o in accepted if o.event_id}
    on_topic = set(event_ids_on_topic(proxied_broker, app.topic, created))
    assert created <= on_topic, f"201 but not on the topic: {sorted(created - on_topic)}"
    app.wait_processed(created, timeout=15)  # consumption resumed by itself
    assert_listed_once(app)


def test_events_in_flight_at_the_cut_are_delivered_after_restore(
    process_control: Spawn, proxied_broker: ProxiedBroker
) -> None:
    """POSTs in flight at the cut get 201 after the restore, are on the topic and processed once."""
    proxy = proxied_broker.proxy
    app = process_control(
        env=OUTAGE_SETTINGS | {"PUBLISH_TIMEOUT_MS": "8000"},
        bootstrap_servers=proxied_broker.bootstrap_servers,
    )
    app.post_event(user_id=unique_user())  # the producer id is acquired before the cut

    outcomes: list[Outcome] = []
    straddling: list[Outcome] = []
    cuts = 0
    with httpx.Client(base_url=app.base_url, timeout=15) as client:
        # NOTE: most of a POST's time is spent outside the service on this busy box, so a cut
        # can miss every request; a few cuts make sure some were waiting for their ack.
        while cuts < 3 and not [o for o in straddling if o.status == 201]:
            cuts += 1
            stop = threading.Event()
            with ThreadPoolExecutor(max_workers=8) as pool:
                traffic = len(outcomes) + 40
                posters = [pool.submit(post_until, client, stop, outcomes) for _ in range(8)]
                wait_until(lambda n=traffic: len(outcomes) >= n, 10, what="steady POST traffic")
                proxy.cut()
                stop.set()  # each poster finishes the request it has in flight, then stops
                cut_at = time.monotonic()
                time.sleep(2.0)  # the outage
                proxy.restore()
                restored_at = time.monotonic()
                for poster in posters:
                    poster.result()
            straddling += [o for o in outcomes if o.started < cut_at and o.ended > restored_at]

    accepted = [o for o in outcomes if o.status == 201]
    print(
        f"\nin flight at {cuts} cut(s): {len(straddling)} POST(s) answered after the restore "
        f"({figures(o.seconds for o in straddling)}), statuses "
        f"{sorted({o.status for o in straddling})}; {len(accepted)} of {len(outcomes)} got 201"
    )
    assert {o.status for o in outcomes} <= {201, 503}, sorted({o.status for o in outcomes})
    assert [o for o in straddling if o.status == 201], "no POST in flight at the cut got 201"

    created = {o.event_id for o in accepted if o.event_id}
    read = event_ids_on_topic(proxied_broker, app.topic, created)
    assert created <= set(read), f"201 but not on the topic: {sorted(created - set(read))}"
    listed = app.wait_processed(created, timeout=20)
    print(
        f"after the restore: {len(created)} accepted events all processed; topic holds "
        f"{len(read)} records ({len(read) - len(set(read))} duplicate eventIds), "
        f"GET lists {len(listed)}"
    )
    assert_listed_once(app)


def test_long_outage_sheds_load_with_bounded_memory(
    process_control: Spawn, proxied_broker: ProxiedBroker
) -> None:
    """With small queues a long outage is shed at once with 503 and the memory stays bounded."""
    proxy = proxied_broker.proxy
    app = process_control(
        env=OUTAGE_SETTINGS | {"PUBLISH_QUEUE_SIZE": "5", "KAFKA_PRODUCER_QUEUE_MESSAGES": "5"},
        bootstrap_servers=proxied_broker.bootstrap_servers,
    )
    app.post_event(user_id=unique_user())
    baseline = rss_bytes(app.pid)

    outcomes: list[Outcome] = []
    stop = threading.Event()
    peak = baseline
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with (
        httpx.Client(base_url=app.base_url, timeout=10, limits=limits) as client,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        proxy.cut()
        posters = [pool.submit(post_until, client, stop, outcomes) for _ in range(16)]
        ends = time.monotonic() + 5.0
        while time.monotonic() < ends:
            peak = max(peak, rss_bytes(app.pid))
            time.sleep(0.1)  # paces the memory samples
        stop.set()
        for poster in posters:
            poster.result()
        peak = max(peak, rss_bytes(app.pid))
    counters = app.health().json()["counters"]
    proxy.restore()
    recovery = wait_recovered(app)
    app.post_event(user_id=unique_user())

    fast = [o for o in outcomes if o.status == 503 and o.seconds < 0.25 * PUBLISH_TIMEOUT]
    waited = [o for o in outcomes if o not in fast]
    growth = peak - baseline
    print(
        f"\nshedding: {len(outcomes)} POSTs in 5 s of outage; {len(fast)} immediate 503 "
        f"({figures(o.seconds for o in fast)}); {len(waited)} waited "
        f"({figures(o.seconds for o in waited)}); RSS {baseline / 2**20:.1f} MiB -> peak "
        f"{peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB); counters {counters}; "
        f"health 200 {recovery:.2f} s after restore"
    )
    assert {o.status for o in outcomes} == {503}, sorted({o.status for o in outcomes})
    assert len(outcomes) >= 200, "too little load to show shedding"
    assert len(fast) >= 0.9 * len(outcomes)
    assert max(o.seconds for o in outcomes) < PUBLISH_TIMEOUT + MARGIN
    assert growth < 32 * 2**20
