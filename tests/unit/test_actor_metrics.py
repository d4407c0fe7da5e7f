"""What the consumer, the publisher and supervision record in the metrics, on fake ports."""

from __future__ import annotations

import datetime
import functools
import json
import logging

import pytest
import trio
import trio.testing
from fakes import FakeConsumer, FakeProducer, opener
from metric_samples import Scrape
from settings_support import default_limits
from store_support import store_actor

from actors.consumer import run_consumer
from actors.domain.events import new_event, utc_timestamp
from actors.domain.messages import PublishOutcome, PublishRequest, StoreCommand
from actors.domain.trace import TraceContext
from actors.kafka.ports import ClientStatistics, Record
from actors.publisher import PUMP_INTERVAL, run_publisher
from actors.runtime.backoff import Backoff, no_jitter
from actors.runtime.health import ActorState, Health
from actors.runtime.metrics import PREFIX, Metrics
from actors.runtime.supervision import RestartPolicy, TooManyRestarts, supervise_actor

TOPIC = "user-activity-events"
DLQ_TOPIC = "user-activity-events.dlq"
BACKOFF = Backoff(initial=0.1, maximum=2.0, jitter=no_jitter)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def scrape(metrics: Metrics) -> Scrape:
    return Scrape.parse(metrics.exposition().decode())


def event_bytes(user_id: str, *, event_id: str | None = None, age: float = 0.0) -> bytes:
    """A valid event stamped ``age`` seconds ago (wall clock: the consumer compares to it)."""
    document = new_event(user_id=user_id, event_type="LOGIN", payload={}).to_dict()
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)
    document["timestamp"] = utc_timestamp(moment)
    if event_id is not None:
        document["eventId"] = event_id
    return json.dumps(document).encode()


def record(offset: int, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record(topic=TOPIC, partition=0, offset=offset, key=b"k", value=value, headers=headers)


async def consume_all(
    records: list[Record], metrics: Metrics, *, dead_letters: FakeProducer | None = None
) -> FakeConsumer:
    """Run the store and the consumer until every record's offset is stored, then stop."""
    consumer = FakeConsumer(records)
    health = Health(["store", "consumer"])
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    actor = functools.partial(
        run_consumer,
        open_consumer=lambda: consumer,
        open_dead_letter_producer=None if dead_letters is None else opener([dead_letters], "d"),
        dlq_topic=None if dead_letters is None else DLQ_TOPIC,
        store=store_send,
        limits=default_limits(),
        batch_size=2,
        backoff=BACKOFF,
        replace_producer_after=5.0,
        health=health,
        metrics=metrics,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        await nursery.start(actor)
        with trio.fail_after(10):
            await consumer.stored_count.wait_value(len(records))
        nursery.cancel_scope.cancel()
    return consumer


@pytest.mark.parametrize("with_dead_letters", [False, True])
async def test_consumer_counts_each_record_by_outcome(
    autojump_clock: trio.testing.MockClock, with_dead_letters: bool
) -> None:
    """Stored, duplicate and malformed records move their own outcome by exactly their count;
    with a dead-letter topic the malformed ones are counted as dead_lettered instead."""
    metrics = Metrics()
    records = [
        record(0, event_bytes("u1", event_id="11111111-1111-4111-8111-111111111111")),
        record(1, event_bytes("u2")),
        record(2, event_bytes("u1", event_id="11111111-1111-4111-8111-111111111111")),
        record(3, b"not json"),
        record(4, None),
    ]
    await consume_all(records, metrics, dead_letters=FakeProducer() if with_dead_letters else None)
    result = scrape(metrics)
    consumed = f"{PREFIX}events_consumed_total"
    assert result.value(consumed, outcome="stored") == 2
    assert result.value(consumed, outcome="duplicate") == 1
    assert result.value(consumed, outcome="malformed") == (0 if with_dead_letters else 2)
    assert result.value(consumed, outcome="dead_lettered") == (2 if with_dead_letters else 0)


async def test_end_to_end_latency_is_timed_from_the_events_timestamp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An event stamped 3 s ago lands in the (2.5, 5] bucket; a duplicate is not timed."""
    metrics = Metrics()
    same = "22222222-2222-4222-8222-222222222222"
    await consume_all(
        [
            record(0, event_bytes("u1", event_id=same, age=3)),
            record(1, event_bytes("u1", event_id=same)),
        ],
        metrics,
    )
    result = scrape(metrics)
    latency = f"{PREFIX}end_to_end_latency_seconds"
    assert result.value(f"{latency}_count") == 1
    assert result.value(f"{latency}_bucket", le="2.5") == 0
    assert result.value(f"{latency}_bucket", le="5.0") == 1


async def test_consumer_log_line_carries_the_records_trace_context(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The traceparent and request id from the record's headers are in "event consumed";
    malformed header values are left out, not logged."""
    caplog.set_level(logging.INFO, logger="actors.consumer")
    traced = (("traceparent", TRACEPARENT.encode()), ("x-request-id", b"req-9"))
    forged = (("traceparent", b'00-x"}\n{"level":"CRITICAL'), ("x-request-id", b"a b"))
    await consume_all(
        [record(0, event_bytes("u1"), traced), record(1, event_bytes("u2"), forged)], Metrics()
    )
    lines = [
        record.structured_fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "event consumed"
    ]
    assert [(line["traceparent"], line["requestId"]) for line in lines] == [
        (TRACEPARENT, "req-9"),
        (None, None),
    ]


async def test_consumer_exports_assignment_and_lag_from_its_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a consume, the assignment size and each partition's lag are the latest report's."""
    metrics = Metrics()
    consumer = FakeConsumer([record(0, event_bytes("u1"))])
    consumer.statistics = ClientStatistics(
        assigned_partitions=3, lag={(TOPIC, 0): 4, (TOPIC, 2): 0}
    )
    health = Health(["store", "consumer"])
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        await nursery.start(
            functools.partial(
                run_consumer,
                open_consumer=lambda: consumer,
                open_dead_letter_producer=None,
                dlq_topic=None,
                store=store_send,
                limits=default_limits(),
                batch_size=2,
                backoff=BACKOFF,
                replace_producer_after=5.0,
                health=health,
                metrics=metrics,
            )
        )
        await consumer.stored_count.wait_value(1)
        first = scrape(metrics)
        consumer.statistics = ClientStatistics(assigned_partitions=1, lag={(TOPIC, 2): 9})
        await consumer.consume_calls.wait_value(lambda calls: calls >= 3)
        second = scrape(metrics)
        nursery.cancel_scope.cancel()
    lag = f"{PREFIX}consumer_lag_messages"
    assert first.value(f"{PREFIX}assigned_partitions") == 3
    assert first.value(lag, topic=TOPIC, partition="0") == 4
    assert second.value(f"{PREFIX}assigned_partitions") == 1
    assert second.samples(lag) == {frozenset({("topic", TOPIC), ("partition", "2")}): 9.0}


async def test_publisher_counts_acks_writes_trace_headers_and_exports_its_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each acknowledged event is counted, its trace context becomes the message's headers,
    and the producer's queue length is the latest statistics report's."""
    metrics = Metrics()
    producer = FakeProducer()
    producer.statistics = ClientStatistics(queued_messages=42)
    send, receive = trio.open_memory_channel[PublishRequest](8)
    trace = TraceContext(traceparent=TRACEPARENT, request_id="req-3")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                run_publisher,
                inbox=receive,
                open_producer=opener([producer], "producer"),
                topic=TOPIC,
                backoff=BACKOFF,
                replace_producer_after=5.0,
                health=Health(["publisher"]),
                metrics=metrics,
            )
        )
        async with send:
            for user in ("u1", "u2"):
                reply, replies = trio.open_memory_channel[PublishOutcome](1)
                event = new_event(user_id=user, event_type="LOGIN", payload={})
                await send.send(PublishRequest(event=event, deadline=5.0, reply=reply, trace=trace))
                await replies.receive()
            await trio.sleep(PUMP_INTERVAL * 2)
            result = scrape(metrics)
    assert result.value(f"{PREFIX}events_published_total") == 2
    assert result.value(f"{PREFIX}producer_queue_messages") == 42
    assert [message.headers for message in producer.produced] == [
        (("traceparent", TRACEPARENT.encode()), ("x-request-id", b"req-3"))
    ] * 2


async def test_restarts_are_counted_and_giving_up_fails_liveness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each restart moves actor_restarts_total; the failure that ends it marks the actor
    failed, which is what /health/live reports."""
    metrics = Metrics(restartable=("worker",))
    health = Health(["worker"])

    async def failing(*, task_status: trio.TaskStatus[None]) -> None:
        health.report("worker", ActorState.RUNNING)
        task_status.started()
        raise RuntimeError("boom")

    policy = RestartPolicy(backoff=BACKOFF, max_failures=3, window=100.0)
    assert health.live
    with pytest.raises(TooManyRestarts):
        await supervise_actor("worker", failing, policy=policy, health=health, metrics=metrics)
    assert scrape(metrics).value(f"{PREFIX}actor_restarts_total", actor="worker") == 2
    assert health.state("worker").value is ActorState.FAILED
    assert not health.live
    assert not health.healthy
