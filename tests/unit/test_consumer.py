"""The consumer actor against a FakeConsumer and the real store, on virtual time.

At-least-once is the point of most of these tests: an offset is stored only after the store
confirmed the event (or the malformed record was dead-lettered and acknowledged), in order.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from fakes import FENCED, FakeConsumer, FakeProducer, Produced, RecordingHealth, opener
from settings_support import default_limits
from store_support import list_all, store_actor

from actors.consumer import CONSUME_TIMEOUT, POLL_GAP_SECONDS, run_consumer
from actors.domain.events import new_event
from actors.domain.messages import Placed, Put, PutOutcome, StoreCommand
from actors.kafka.ports import KafkaFailure, KafkaFatalError, ProduceRejected, Record
from actors.runtime.backoff import Backoff, no_jitter
from actors.runtime.health import ActorState, Health

TOPIC = "user-activity-events"
DLQ_TOPIC = "user-activity-events.dlq"
BACKOFF = Backoff(initial=0.1, maximum=2.0, jitter=no_jitter)
BATCH_SIZE = 2
#: Seconds of failing dead-letter deliveries after which the producer is replaced.
REPLACE_AFTER = 5.0


def approx(value: object) -> object:
    """Exact virtual times, allowing only float rounding."""
    return pytest.approx(value, abs=1e-9)


def event_document(user_id: str = "u1", **changes: Any) -> dict[str, Any]:
    document = new_event(user_id=user_id, event_type="LOGIN", payload={"secret": "pw"}).to_dict()
    document.update(changes)
    return document


def event_json(user_id: str = "u1", **changes: Any) -> bytes:
    return json.dumps(event_document(user_id, **changes)).encode()


def record(
    offset: int,
    value: bytes | None,
    *,
    key: bytes | None = b"u1",
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Record:
    return Record(topic=TOPIC, partition=0, offset=offset, key=key, value=value, headers=headers)


def make_health() -> Health:
    return Health(["store", "consumer"])


def consumer_actor(
    consumer: FakeConsumer,
    store: trio.MemorySendChannel[StoreCommand],
    health: Health,
    *,
    dead_letters: FakeProducer | Sequence[FakeProducer] | Callable[[], FakeProducer] | None = None,
) -> Callable[..., Awaitable[None]]:
    """The consumer actor; ``dead_letters`` is the DLQ producer, or the producers it opens in
    turn (the first, then each replacement)."""
    if isinstance(dead_letters, FakeProducer):
        dead_letters = [dead_letters]
    return functools.partial(
        run_consumer,
        open_consumer=lambda: consumer,
        open_dead_letter_producer=None if dead_letters is None else opener(dead_letters, "DLQ"),
        dlq_topic=None if dead_letters is None else DLQ_TOPIC,
        store=store,
        limits=default_limits(),
        batch_size=BATCH_SIZE,
        backoff=BACKOFF,
        replace_producer_after=REPLACE_AFTER,
        health=health,
    )


@contextlib.asynccontextmanager
async def running_consumer(
    consumer: FakeConsumer,
    health: Health,
    *,
    dead_letters: FakeProducer | Sequence[FakeProducer] | Callable[[], FakeProducer] | None = None,
) -> AsyncIterator[trio.MemorySendChannel[StoreCommand]]:
    """Run the real store and the consumer; leaving the block cancels both (the shutdown)."""
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        await nursery.start(consumer_actor(consumer, store_send, health, dead_letters=dead_letters))
        yield store_send
        nursery.cancel_scope.cancel()


async def stored_events(store: trio.MemorySendChannel[StoreCommand]) -> list[dict[str, Any]]:
    return [json.loads(encoded) for encoded in await list_all(store)]


async def wait_stored(consumer: FakeConsumer, count: int) -> None:
    with trio.fail_after(10):
        await consumer.stored_count.wait_value(lambda stored: stored >= count)


async def relay_store(
    inbox: trio.MemoryReceiveChannel[StoreCommand],
    store: trio.MemorySendChannel[StoreCommand],
    journal: list[str],
) -> None:
    """Forward commands to the store and write each confirmation of a Put to ``journal``."""
    async for command in inbox:
        if isinstance(command, Put):
            send, receive = trio.open_memory_channel[PutOutcome](1)
            await store.send(Put(event=command.event, reply=send))
            outcome = await receive.receive()
            journal.append(f"store confirmed {command.event.user_id}")
            command.reply.send_nowait(outcome)
        else:
            await store.send(command)


async def test_offsets_are_stored_in_order_after_the_store_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each offset is stored right after the store confirmed its event, in record order."""
    journal: list[str] = []
    health = make_health()
    consumer = FakeConsumer([record(n, event_json(f"u{n}")) for n in range(3)], journal=journal)
    relay_send, relay_receive = trio.open_memory_channel[StoreCommand](0)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        nursery.start_soon(relay_store, relay_receive, store_send, journal)
        await nursery.start(consumer_actor(consumer, relay_send, health))
        await wait_stored(consumer, 3)
        events = await stored_events(store_send)
        nursery.cancel_scope.cancel()
    assert [entry for entry in journal if entry != "consumer.consume"] == [
        "store confirmed u0",
        "consumer.store_offset 0",
        "store confirmed u1",
        "consumer.store_offset 1",
        "store confirmed u2",
        "consumer.store_offset 2",
        "consumer.close",
    ]
    assert [event["userId"] for event in events] == ["u0", "u1", "u2"]
    assert [stored.offset for stored in consumer.stored] == [0, 1, 2]
    assert health.counters["stored"] == 3


async def test_no_offset_is_stored_while_the_store_has_not_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A Put the store has not confirmed leaves the offset unstored, even after a cancel."""
    health = make_health()
    consumer = FakeConsumer([record(0, event_json())])
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    async with trio.open_nursery() as nursery:
        await nursery.start(consumer_actor(consumer, store_send, health))
        await trio.testing.wait_all_tasks_blocked()  # the consumer waits for the reply
        assert store_receive.statistics().current_buffer_used == 1
        assert consumer.stored == []
        nursery.cancel_scope.cancel()
    assert consumer.stored == []
    assert len(consumer.closes) == 1


async def test_one_log_line_per_consumed_event(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every consumed event is logged once with eventId, userId and eventType (no payload)."""
    caplog.set_level(logging.INFO, logger="actors.consumer")
    documents = [event_document("u1"), event_document("u2", eventType="LOGOUT")]
    consumer = FakeConsumer(
        [record(n, json.dumps(document).encode()) for n, document in enumerate(documents)]
    )
    async with running_consumer(consumer, make_health()):
        await wait_stored(consumer, 2)
    lines = [entry for entry in caplog.records if entry.getMessage() == "event consumed"]
    fields = [entry.structured_fields for entry in lines]  # type: ignore[attr-defined]
    assert [(field["eventId"], field["userId"], field["eventType"]) for field in fields] == [
        (document["eventId"], document["userId"], document["eventType"]) for document in documents
    ]
    assert [field["offset"] for field in fields] == [0, 1]
    assert all("payload" not in field for field in fields)
    assert all(entry.levelno == logging.INFO for entry in lines)


MALFORMED = {
    "tombstone": None,
    "not-utf8": b"\xff\xfe{}",
    "not-json": b"{not json",
    "json-array": b'[{"eventId": "x"}]',
    "missing-field": json.dumps(
        {key: value for key, value in event_document().items() if key != "eventId"}
    ).encode(),
    "unknown-event-type": event_json(eventType="PURCHASE"),
}


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_record_is_skipped_counted_and_its_offset_stored(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, value: bytes | None
) -> None:
    """A malformed record is skipped and counted, its offset stored, and the next one handled."""
    caplog.set_level(logging.WARNING, logger="actors.consumer")
    health = make_health()
    valid = event_document("u2")
    consumer = FakeConsumer([record(0, value), record(1, json.dumps(valid).encode())])
    async with running_consumer(consumer, health) as store:
        await wait_stored(consumer, 2)
        events = await stored_events(store)
    assert events == [valid]
    assert [stored.offset for stored in consumer.stored] == [0, 1]
    assert health.counters["malformed"] == 1
    assert health.counters["stored"] == 1
    [warning] = [e for e in caplog.records if e.getMessage() == "malformed message skipped"]
    assert warning.structured_fields["offset"] == 0  # type: ignore[attr-defined]
    assert warning.structured_fields["deadLettered"] is False  # type: ignore[attr-defined]


async def test_duplicate_event_ids_are_stored_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A replayed event (same eventId) is stored once; every offset is still stored."""
    health = make_health()
    first = event_json("u1")
    consumer = FakeConsumer([record(0, first), record(1, first), record(2, event_json("u2"))])
    async with running_consumer(consumer, health) as store:
        await wait_stored(consumer, 3)
        events = await stored_events(store)
    assert [event["userId"] for event in events] == ["u1", "u2"]
    assert [stored.offset for stored in consumer.stored] == [0, 1, 2]
    assert health.counters["stored"] == 2
    assert health.counters["duplicates"] == 1


async def test_malformed_record_is_dead_lettered_before_its_offset_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a DLQ the record is copied there with dlq.* headers; its offset waits for the ack,
    and a failed DLQ delivery is retried after exactly the backoff delay."""
    journal: list[str] = []
    health = make_health()
    dead_letters = FakeProducer(delivery_latency=0.25, journal=journal, name="dlq")
    dead_letters.fail_deliveries(
        KafkaFailure(code="_MSG_TIMED_OUT", reason="timed out", retriable=True)
    )
    poison = record(0, b"\xff\xfe", key=b"k1", headers=(("traceparent", b"00-abc"),))
    consumer = FakeConsumer([poison, record(1, event_json("u2"))], journal=journal)
    async with running_consumer(consumer, health, dead_letters=dead_letters) as store:
        await wait_stored(consumer, 2)
        events = await stored_events(store)

    # Tried at 0, failed at 0.25, retried 0.1 s later, acknowledged at 0.6.
    assert [message.at for message in dead_letters.produced] == approx([0.0, 0.35])
    assert [stored.at for stored in consumer.stored] == approx([0.6, 0.6])
    expected_headers = (
        ("traceparent", b"00-abc"),
        ("dlq.reason", b"not valid UTF-8"),
        ("dlq.source.topic", TOPIC.encode()),
        ("dlq.source.partition", b"0"),
        ("dlq.source.offset", b"0"),
    )
    for message in dead_letters.produced:
        assert message.topic == DLQ_TOPIC
        assert message.key == b"k1"
        assert message.value == b"\xff\xfe"
        assert message.headers == expected_headers
    # The record was held longer than the grace, so the assignment was paused meanwhile.
    assert [entry for entry in journal if entry != "consumer.consume"] == [
        "dlq.produce",
        "dlq.deliver",
        "dlq.produce",
        "consumer.pause",
        "dlq.deliver",
        "consumer.store_offset 0",
        "consumer.store_offset 1",
        "consumer.close",
        "dlq.flush",
    ]
    assert [event["userId"] for event in events] == ["u2"]
    assert health.counters["malformed"] == 1
    assert health.counters["dead_lettered"] == 1


async def test_cancellation_closes_the_consumer_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the actor (the shutdown path) closes the consumer once and reports STOPPED."""
    health = make_health()
    consumer = FakeConsumer([record(0, event_json())])
    async with running_consumer(consumer, health):
        await wait_stored(consumer, 1)
        await trio.sleep(3)  # idle consume() calls in the meantime
        assert consumer.closes == []
    assert consumer.closes == [3.0]
    assert health.state("consumer").value is ActorState.STOPPED


async def test_fatal_error_propagates_after_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """KafkaFatalError from consume() leaves the actor (for a restart) after close()."""
    journal: list[str] = []
    health = make_health()
    consumer = FakeConsumer([record(0, event_json())], journal=journal)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)

    async def fail_after_first_record() -> None:
        await wait_stored(consumer, 1)
        consumer.fail_next_consume(KafkaFatalError("_FENCED: instance fenced"))

    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        nursery.start_soon(fail_after_first_record)
        with pytest.RaisesGroup(pytest.RaisesExc(KafkaFatalError, match="fenced")):
            await consumer_actor(consumer, store_send, health)()
        store_send.close()
    assert journal[-3:] == ["consumer.store_offset 0", "consumer.consume", "consumer.close"]
    assert len(consumer.closes) == 1
    assert health.state("consumer").value is ActorState.STOPPED


async def test_health_starting_until_assigned_then_running_and_degraded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Health is STARTING until the group assigned, RUNNING after, DEGRADED when disconnected."""
    health = make_health()
    consumer = FakeConsumer(assigned=False)
    state = health.state("consumer")
    async with running_consumer(consumer, health):
        with trio.fail_after(10):
            await consumer.consume_calls.wait_value(lambda calls: calls >= 3)
        assert state.value is ActorState.STARTING
        assert health.snapshot()["actors"]["consumer"]["detail"] == "joining the consumer group"
        consumer.assigned = True
        with trio.fail_after(1):
            await state.wait_value(ActorState.RUNNING)
        consumer.connected = False
        with trio.fail_after(1):
            await state.wait_value(ActorState.DEGRADED)
        assert health.snapshot()["actors"]["consumer"]["detail"] == "broker unreachable"
        consumer.connected = True
        with trio.fail_after(1):
            await state.wait_value(ActorState.RUNNING)
    assert health.snapshot()["actors"]["consumer"]["state"] == "stopped"


async def test_consumer_is_closed_when_the_dead_letter_producer_cannot_be_opened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A failure to open the DLQ producer leaves no consumer open behind it."""
    consumer = FakeConsumer()
    opened: list[FakeConsumer] = []

    def open_consumer() -> FakeConsumer:
        opened.append(consumer)
        return consumer

    def broken_producer() -> FakeProducer:
        raise RuntimeError("invalid producer configuration")

    store_send, _store_receive = trio.open_memory_channel[StoreCommand](8)
    with pytest.raises(RuntimeError, match="invalid producer configuration"):
        await run_consumer(
            open_consumer=open_consumer,
            open_dead_letter_producer=broken_producer,
            dlq_topic=DLQ_TOPIC,
            store=store_send,
            limits=default_limits(),
            batch_size=BATCH_SIZE,
            backoff=BACKOFF,
            replace_producer_after=REPLACE_AFTER,
            health=make_health(),
        )
    assert len(consumer.closes) == len(opened)


TOO_LARGE = KafkaFailure(code="MSG_SIZE_TOO_LARGE", reason="message too large")


async def test_record_too_large_for_the_dead_letter_topic_is_written_without_its_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A DLQ refusal for size writes the record's key and headers without its value, at once."""
    health = make_health()
    dead_letters = FakeProducer()
    dead_letters.refuse(ProduceRejected(TOO_LARGE))
    poison = record(0, b"[" * 50, key=b"k1")
    consumer = FakeConsumer([poison, record(1, event_json("u2"))])
    async with running_consumer(consumer, health, dead_letters=dead_letters):
        await wait_stored(consumer, 2)

    assert dead_letters.attempts == [0.0, 0.0]
    [message] = dead_letters.produced
    assert message.key == b"k1"
    assert message.value is None
    assert ("dlq.value.dropped", b"MSG_SIZE_TOO_LARGE") in message.headers
    assert ("dlq.value.size", b"50") in message.headers
    assert ("dlq.source.offset", b"0") in message.headers
    assert [stored.offset for stored in consumer.stored] == [0, 1]
    assert health.counters["dead_lettered"] == 1


async def test_record_the_dead_letter_topic_refuses_for_good_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When even the value-less copy is refused, the record is logged, counted and skipped."""
    health = make_health()
    dead_letters = FakeProducer()
    dead_letters.refuse(ProduceRejected(TOO_LARGE), times=2)
    consumer = FakeConsumer([record(0, b"not json"), record(1, event_json("u2"))])
    async with running_consumer(consumer, health, dead_letters=dead_letters):
        await wait_stored(consumer, 2)

    assert dead_letters.produced == []
    assert [stored.offset for stored in consumer.stored] == [0, 1]
    assert health.counters["dead_letter_refused"] == 1
    assert health.counters["dead_lettered"] == 0
    assert health.counters["malformed"] == 1


# --- a dead-letter producer that can no longer deliver is replaced ---------------------------


async def test_fenced_dead_letter_producer_is_replaced_and_the_record_written_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PRODUCER_FENCED on the DLQ: a new producer writes the record with its value; none lost."""
    health = RecordingHealth(["store", "consumer"])
    fenced, fresh = FakeProducer(name="old"), FakeProducer(name="new")
    fenced.fence()
    consumer = FakeConsumer([record(0, b"not json"), record(1, event_json("u2"))])
    async with running_consumer(consumer, health, dead_letters=[fenced, fresh]):
        await wait_stored(consumer, 2)

    assert fenced.discarded_at == 0.0
    [message] = fresh.produced
    assert message.at == approx(0.1)  # one backoff delay after the fenced report
    assert message.value == b"not json"
    assert ("dlq.source.offset", b"0") in message.headers
    assert [stored.offset for stored in consumer.stored] == [0, 1]
    assert health.counters["dead_letter_producer_replacements"] == 1
    assert health.counters["dead_lettered"] == 1
    assert health.counters["dead_letter_refused"] == 0
    degraded = [detail for actor, state, detail, _ in health.reports if state.value == "degraded"]
    assert degraded == [f"dead-letter producer replaced ({FENCED.code}: {FENCED.reason})"]


async def test_dead_letter_deliveries_failing_for_the_window_replace_the_producer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """DLQ failures from 1.0 s on: the one at 6.5 s condemns the producer; the next try works."""
    health = make_health()
    failing, fresh = FakeProducer(delivery_latency=1.0), FakeProducer()
    failing.fail_deliveries(KafkaFailure(code="_MSG_TIMED_OUT", reason="x", retriable=True), 100)
    consumer = FakeConsumer([record(0, b"not json")])
    async with running_consumer(consumer, health, dead_letters=[failing, fresh]):
        await wait_stored(consumer, 1)

    assert failing.attempts == approx([0.0, 1.1, 2.3, 3.7, 5.5])
    assert failing.discarded_at == approx(6.5)
    assert [message.at for message in fresh.produced] == approx([8.1])
    assert [stored.at for stored in consumer.stored] == approx([8.1])
    assert health.counters["dead_letter_producer_replacements"] == 1


async def test_each_put_carries_the_partition_and_offset_it_was_read_from(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The store learns where each event was read, so GET /events/{eventId} can say it."""
    documents = [event_document(f"u{n}") for n in range(3)]
    records = [
        attrs.evolve(record(10 + n, json.dumps(doc).encode()), partition=n)
        for n, doc in enumerate(documents)
    ]
    consumer = FakeConsumer(records)
    seen: list[Put] = []
    spy_send, spy_receive = trio.open_memory_channel[StoreCommand](0)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)

    async def spy() -> None:
        async for command in spy_receive:
            if isinstance(command, Put):
                seen.append(command)
            await store_send.send(command)

    health = make_health()
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        nursery.start_soon(spy)
        await nursery.start(consumer_actor(consumer, spy_send, health))
        await wait_stored(consumer, 3)
        nursery.cancel_scope.cancel()
    assert [(put.event.event_id, put.source) for put in seen] == [
        (doc["eventId"], Placed(partition=n, offset=10 + n)) for n, doc in enumerate(documents)
    ]


# --- pausing, never blocking -----------------------------------------------------------------

#: How long the dead-letter topic stays unwritable in the tests below: far longer than a short
#: ``max.poll.interval.ms`` would allow a member to stop polling.
OUTAGE_SECONDS = 30.0

TIMED_OUT = KafkaFailure(code="_MSG_TIMED_OUT", reason="timed out", retriable=True)


class UnwritableDeadLetters:
    """DLQ producers (the first and each replacement) whose deliveries fail, retriably, for every
    message produced before ``until``; each report comes 0.25 s after its message."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.producers: list[FakeProducer] = []

    def __call__(self) -> FakeProducer:
        producer = FakeProducer(delivery_latency=0.25, name="dlq")
        producer.fail_deliveries_until(TIMED_OUT, self.until)
        self.producers.append(producer)
        return producer

    @property
    def produced(self) -> list[Produced]:
        return sorted((m for p in self.producers for m in p.produced), key=lambda m: m.at)


def largest_gap(times: Sequence[float]) -> float:
    return max(later - earlier for earlier, later in itertools.pairwise(times))


async def test_unwritable_dead_letter_topic_pauses_and_keeps_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the DLQ cannot be written the assignment is paused at the grace and consume() keeps
    being called (never more than POLL_GAP_SECONDS apart); nothing after the poison is handed
    out meanwhile, and after the write everything follows in order, each offset once."""
    health = make_health()
    dead_letters = UnwritableDeadLetters(until=OUTAGE_SECONDS)
    later = [record(offset, event_json(f"u{offset}")) for offset in range(1, 6)]
    consumer = FakeConsumer([record(0, b"not json"), *later])
    async with running_consumer(consumer, health, dead_letters=dead_letters) as store:
        await trio.sleep(OUTAGE_SECONDS / 2)
        assert consumer.paused
        assert health.state("consumer").value is ActorState.DEGRADED
        assert consumer.stored == []
        with trio.fail_after(OUTAGE_SECONDS):
            await consumer.stored_count.wait_value(6)
        resumed_at = trio.current_time()
        events = await stored_events(store)
        await trio.sleep(1)

    write_done = dead_letters.produced[-1].at + 0.25
    assert write_done > OUTAGE_SECONDS
    assert consumer.pauses == approx([0.5])
    assert len(consumer.resumes) == 1
    assert write_done <= consumer.resumes[0] <= write_done + CONSUME_TIMEOUT
    assert largest_gap(consumer.consumed_at) <= POLL_GAP_SECONDS + 1e-9
    # Only the first batch (BATCH_SIZE records) was handed out before the write went through.
    assert [r.offset for r in consumer.handed_out] == [0, 1, 2, 3, 4, 5]
    assert consumer.consume_calls.value > OUTAGE_SECONDS / POLL_GAP_SECONDS
    assert [stored.offset for stored in consumer.stored] == [0, 1, 2, 3, 4, 5]
    assert consumer.stored[1].at == approx(write_done)
    assert [event["userId"] for event in events] == [f"u{offset}" for offset in range(1, 6)]
    assert resumed_at >= write_done
    assert health.state("consumer").value is ActorState.STOPPED
    assert health.counters["dead_lettered"] == 1


async def test_store_that_does_not_take_puts_pauses_instead_of_blocking_the_poll_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store inbox that stays full for a minute pauses the assignment after the grace; polling
    goes on, and once the store reads again every record arrives in order and consumption
    resumes."""
    health = make_health()
    consumer = FakeConsumer([record(offset, event_json(f"u{offset}")) for offset in range(4)])
    stuck_send, stuck_receive = trio.open_memory_channel[StoreCommand](0)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    journal: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health))
        await nursery.start(consumer_actor(consumer, stuck_send, health))
        await trio.sleep(60)
        assert consumer.paused
        assert consumer.stored == []
        assert largest_gap(consumer.consumed_at) <= POLL_GAP_SECONDS + 1e-9
        nursery.start_soon(relay_store, stuck_receive, store_send, journal)
        await wait_stored(consumer, 4)
        await trio.sleep(1)
        assert not consumer.paused
        events = await stored_events(store_send)
        nursery.cancel_scope.cancel()

    assert consumer.pauses == approx([0.5])
    assert [stored.offset for stored in consumer.stored] == [0, 1, 2, 3]
    assert [event["userId"] for event in events] == ["u0", "u1", "u2", "u3"]
    assert journal == [
        "store confirmed u0",
        "store confirmed u1",
        "store confirmed u2",
        "store confirmed u3",
    ]


async def test_rebalance_while_paused_drops_the_backlog_and_reads_on_from_the_committed_offset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A rebalance during the DLQ outage revokes the held records; the pause stays in force; the
    partition comes back from its committed offset, so the poison record is dead-lettered again
    (at least once) and no record is skipped, stored twice or out of order."""
    health = make_health()
    dead_letters = UnwritableDeadLetters(until=10.0)
    consumer = FakeConsumer(
        [record(0, b"not json"), record(1, event_json("u1")), record(2, event_json("u2"))]
    )
    async with running_consumer(consumer, health, dead_letters=dead_letters) as store:
        await trio.sleep(5)
        assert consumer.paused
        consumer.rebalance()
        await trio.sleep(1)
        assert consumer.paused  # still held: the write has not gone through
        await wait_stored(consumer, 3)
        events = await stored_events(store)

    # Read 0, 1 (first batch); the rebalance gave 0, 1 back; then 0, 1 and 2 again in order.
    assert [r.offset for r in consumer.handed_out] == [0, 1, 0, 1, 2]
    assert [stored.offset for stored in consumer.stored] == [0, 1, 2]
    assert [event["userId"] for event in events] == ["u1", "u2"]
    assert [message.value for message in dead_letters.produced][-1] == b"not json"
    assert health.counters["dead_lettered"] == 2
