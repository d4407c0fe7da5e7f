"""A broker stalled longer than the producer's delivery timeout, then continued.

The broker process is paused (``SIGSTOP``) while a delivery is in flight, for longer than
``KAFKA_DELIVERY_TIMEOUT_MS`` (librdkafka's ``message.timeout.ms``), then continued. An
idempotent producer that lived through that can be left unable to deliver ever again (against
Tansu it answers ``PRODUCER_FENCED`` for every later message; see the broker notes). The
promise: the service replaces such a producer by itself, answers the requests caught in it with
``503`` (retriable), shows ``degraded`` health meanwhile, and publishes again within a few
seconds of the broker's return; the dead-letter producer recovers likewise and loses nothing.
Apache Kafka does not fence the producer: there the same client delivers again, unreplaced.

Each test runs on the suite's broker kind (``TEST_BROKER``, see ``support/brokers.py``).
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from support.faults import OwnBroker
from support.kafka_tools import header_dict
from support.services import ServiceProcess, Spawn
from support.traffic import HealthSample, Outcome, figures, post, post_until, watch_health
from support.waiting import wait_until

DELIVERY_TIMEOUT = 3.0

#: Longer than the delivery timeout, with a margin: every delivery in flight times out.
STALL = DELIVERY_TIMEOUT + 3.0

#: Settings that make a stall beyond the delivery timeout short enough for a test.
STALL_SETTINGS = {
    "KAFKA_DELIVERY_TIMEOUT_MS": str(int(DELIVERY_TIMEOUT * 1000)),
    "PUBLISH_TIMEOUT_MS": "2000",
    "PRODUCER_REPLACE_AFTER_MS": "5000",
    "SHUTDOWN_TIMEOUT_MS": "5000",
}

#: The brokers that leave a producer caught in such a stall fenced for good (``PRODUCER_FENCED``
#: on every later message), so that the service must replace it: Tansu. Apache Kafka (3.4 and
#: 4.x) does not; the producer simply delivers again. The tests hold the service to recovering
#: either way, and to replacing the producer where the broker fenced it.
FENCES_AFTER_STALL = {"tansu"}

#: How soon after the broker's return publishing must work again.
RECOVERY_BOUND = 5.0

#: How long the test keeps posting after the return before it judges what it saw.
WATCH_AFTER_RESUME = 12.0


def stall(own: OwnBroker) -> float:
    """Pause the broker for :data:`STALL` seconds; returns when it was continued."""
    own.broker.pause()
    time.sleep(STALL)
    own.broker.resume()
    return time.monotonic()


def statuses(outcomes: list[Outcome]) -> dict[int, int]:
    return dict(sorted(collections.Counter(o.status for o in outcomes).items()))


def test_publishing_recovers_after_a_stall_beyond_the_delivery_timeout(
    process_control: Spawn, stallable_broker: OwnBroker
) -> None:
    """After the stall POSTs get 201 again within seconds, never 500; health degraded meanwhile."""
    own = stallable_broker
    app = process_control(env=STALL_SETTINGS, bootstrap_servers=own.bootstrap_servers)
    warm = app.post_event(user_id="warm")  # the producer id is acquired before the stall

    outcomes: list[Outcome] = []
    samples: list[HealthSample] = []
    stop = threading.Event()
    with (
        httpx.Client(base_url=app.base_url, timeout=10) as client,
        ThreadPoolExecutor(max_workers=3) as pool,
    ):
        watcher = pool.submit(watch_health, app, stop, samples)
        own.broker.pause()
        paused_at = time.monotonic()
        in_flight = pool.submit(post, client)  # its delivery is in flight during the stall
        time.sleep(0.5)
        poster = pool.submit(post_until, client, stop, outcomes)
        time.sleep(STALL - 0.5)
        own.broker.resume()
        resumed_at = time.monotonic()

        def recovered() -> Outcome | None:
            after = [o for o in outcomes if o.started >= resumed_at and o.status == 201]
            return after[0] if after else None

        first = None
        deadline = resumed_at + WATCH_AFTER_RESUME
        while first is None and time.monotonic() < deadline:
            first = recovered()
            time.sleep(0.05)  # paces the checks
        if first is not None:
            time.sleep(2.0)  # keep posting: recovery must last
        stop.set()
        stuck = in_flight.result()
        poster.result()
        watcher.result()

    later = [o for o in outcomes if o.started >= resumed_at]
    recovery = first.ended - resumed_at if first is not None else None
    degraded = [s for s in samples if s.states["publisher"] == "degraded"]
    print(
        f"\nstall {STALL:g} s (delivery timeout {DELIVERY_TIMEOUT:g} s): POST in flight got "
        f"{stuck.status} after {stuck.seconds:.2f} s; POSTs during the stall "
        f"{statuses([o for o in outcomes if o.started < resumed_at])}; POSTs after the return "
        f"{statuses(later)} over {WATCH_AFTER_RESUME if first is None else recovery + 2:.1f} s; "
        f"first 201 {'never' if recovery is None else f'{recovery:.2f} s'} after the return; "
        f"publisher degraded in {len(degraded)} of {len(samples)} health samples, details "
        f"{sorted({s.details['publisher'] for s in degraded})}; "
        f"503 latency {figures(o.seconds for o in outcomes if o.status == 503)}"
    )
    assert stuck.status == 503, stuck
    assert stuck.retry_after, "a 503 without Retry-After"
    assert {o.status for o in outcomes} <= {201, 503}, statuses(outcomes)
    assert recovery is not None, f"no 201 within {WATCH_AFTER_RESUME:g} s of the broker's return"
    assert recovery < RECOVERY_BOUND, f"first 201 {recovery:.2f} s after the return"
    assert first is not None
    assert all(o.status == 201 for o in later if o.started >= first.ended), statuses(later)
    assert [s for s in degraded if s.at >= paused_at], "health never said degraded"
    replaced = [s for s in degraded if "replaced" in s.details["publisher"]]
    final = app.wait_healthy(timeout=5)
    replacements = final["counters"].get("producer_replacements", 0)
    assert bool(replaced) == (replacements >= 1), (replacements, degraded[-3:])
    assert all(s.at >= paused_at for s in replaced)
    if own.broker.kind in FENCES_AFTER_STALL:
        assert replacements >= 1, f"{own.broker.kind} fences such a producer: {final['counters']}"

    created = {warm["eventId"]} | {o.event_id for o in outcomes if o.event_id}
    created.discard(None)
    read = own.kafka.read(
        app.topic,
        until=lambda messages: created <= {_event_id(m.value()) for m in messages},
        timeout=15,
    )
    on_topic = {_event_id(message.value()) for message in read}
    assert created <= on_topic, f"201 but not on the topic: {sorted(created - on_topic)}"


#: Malformed records produced before the stall: enough that the consumer is still writing them
#: to the dead-letter topic when the broker stops.
POISON_COUNT = 300


def test_dead_letters_recover_after_a_stall_beyond_the_delivery_timeout(
    process_control: Spawn, stallable_broker: OwnBroker
) -> None:
    """Malformed records caught in the stall, and one sent after it, all reach the DLQ, whole."""
    own = stallable_broker
    dlq_topic = f"it-dlq-{uuid.uuid4().hex}"
    app = process_control(
        env=STALL_SETTINGS | {"KAFKA_DLQ_TOPIC": dlq_topic},
        bootstrap_servers=own.bootstrap_servers,
    )
    own.kafka.produce(app.topic, [(b"poison", b"warm: not json")])
    wait_until(lambda: _counter(app, "dead_lettered") == 1, 10, what="the first dead letter")

    own.kafka.produce(app.topic, [(b"poison", b"stall %d" % n) for n in range(POISON_COUNT)])
    wait_until(lambda: _counter(app, "dead_lettered") >= 20, 10, what="dead-lettering under way")
    at_pause = _counter(app, "dead_lettered")
    resumed_at = stall(own)
    own.kafka.produce(app.topic, [(b"poison", b"after the stall")])

    expected = POISON_COUNT + 2

    def settled() -> int | None:
        counters = app.health().json()["counters"]
        done = counters.get("dead_lettered", 0) + counters.get("dead_letter_refused", 0)
        return done if done >= expected else None

    wait_until(settled, 20, what=f"{expected} poison records dead-lettered or refused")
    took = time.monotonic() - resumed_at
    counters = app.health().json()["counters"]
    dead_letters = own.kafka.read(
        dlq_topic,
        until=lambda messages: len({_source_offset(m) for m in messages}) >= expected,
        timeout=15,
    )
    dropped = [m for m in dead_letters if "dlq.value.dropped" in header_dict(m)]
    replayed = len(dead_letters) - len({_source_offset(m) for m in dead_letters})
    print(
        f"\nDLQ stall {STALL:g} s: {at_pause} of {expected} dead-lettered at the pause; all "
        f"settled {took:.2f} s after the return; counters {counters}; "
        f"{len(dead_letters)} on the DLQ ({len(dropped)} without their value, {replayed} "
        f"copies of records read again: the group lost its partitions in the stall)"
    )
    assert counters.get("dead_letter_refused", 0) == 0, counters
    if own.broker.kind in FENCES_AFTER_STALL:
        assert counters.get("dead_letter_producer_replacements", 0) >= 1, counters
    assert {_source_offset(m) for m in dead_letters} == set(range(expected))
    assert dropped == []
    assert b"after the stall" in {m.value() for m in dead_letters}


def _event_id(value: bytes | None) -> str:
    assert value is not None
    return str(json.loads(value)["eventId"])


def _source_offset(message: Any) -> int:
    return int(header_dict(message)["dlq.source.offset"])


def _counter(app: ServiceProcess, name: str) -> int:
    return int(app.health().json()["counters"].get(name, 0))
