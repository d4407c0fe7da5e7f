"""The publisher actor against a FakeProducer, on virtual time with exact delays.

``Backoff(initial=0.1, ...)`` without jitter makes the retry delays 0.1, 0.2, 0.4, ... seconds;
the fake delivers reports ``delivery_latency`` after ``produce`` (0 unless a test says so).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing
from fakes import FENCED, FakeProducer, RecordingHealth, opener

from actors.domain.events import UserEvent, new_event
from actors.domain.messages import (
    Placed,
    PublishBatch,
    PublishFailed,
    PublishOutcome,
    PublishRequest,
)
from actors.kafka.ports import KafkaFailure, KafkaFatalError, ProduceRejected
from actors.publisher import PUMP_INTERVAL, run_publisher
from actors.runtime.backoff import Backoff, no_jitter
from actors.runtime.health import ActorState, Health

TOPIC = "user-activity-events"
BACKOFF = Backoff(initial=0.1, maximum=2.0, jitter=no_jitter)
RETRIABLE = KafkaFailure(code="_MSG_TIMED_OUT", reason="broker did not answer", retriable=True)
PERMANENT = KafkaFailure(code="MSG_SIZE_TOO_LARGE", reason="message too large")
#: Seconds of failing deliveries after which the publisher replaces its producer.
REPLACE_AFTER = 5.0


def approx(value: object) -> object:
    """Exact virtual times, allowing only float rounding (0.1 + 0.2 != 0.3)."""
    return pytest.approx(value, abs=1e-9)


def make_event(user_id: str = "u1") -> UserEvent:
    return new_event(user_id=user_id, event_type="LOGIN", payload={"page": "/home"})


def make_request(
    event: UserEvent, *, timeout: float = 5.0
) -> tuple[PublishRequest, trio.MemoryReceiveChannel[PublishOutcome]]:
    send, receive = trio.open_memory_channel[PublishOutcome](1)
    return PublishRequest(event=event, deadline=trio.current_time() + timeout, reply=send), receive


async def publish(
    inbox: trio.MemorySendChannel[PublishRequest], event: UserEvent, *, timeout: float = 5.0
) -> tuple[PublishOutcome, float]:
    """Send one request and wait for its answer; returns it with the virtual time it came."""
    request, replies = make_request(event, timeout=timeout)
    await inbox.send(request)
    with replies:
        outcome = await replies.receive()
    return outcome, trio.current_time()


def publisher_actor(
    producer: FakeProducer | Sequence[FakeProducer],
    inbox: trio.MemoryReceiveChannel[PublishRequest],
    health: Health,
) -> Callable[..., Awaitable[None]]:
    """The publisher actor; ``producer`` is its producer, or the producers it opens in turn
    (the first, then each replacement)."""
    producers = [producer] if isinstance(producer, FakeProducer) else producer
    return functools.partial(
        run_publisher,
        inbox=inbox,
        open_producer=opener(producers, "producer"),
        topic=TOPIC,
        backoff=BACKOFF,
        replace_producer_after=REPLACE_AFTER,
        health=health,
    )


@contextlib.asynccontextmanager
async def running_publisher(
    producer: FakeProducer | Sequence[FakeProducer], health: Health, *, inbox_size: int = 8
) -> AsyncIterator[trio.MemorySendChannel[PublishRequest]]:
    """Start the publisher; leaving the block closes its inbox and waits for it to return."""
    send, receive = trio.open_memory_channel[PublishRequest](inbox_size)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher_actor(producer, receive, health))
        async with send:
            yield send


@pytest.fixture
def health() -> Health:
    return Health(["publisher"])


async def test_success_replies_published_with_partition_and_offset(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A delivered event is answered with the partition and offset the broker reported."""
    producer = FakeProducer(partition=2)
    async with running_publisher(producer, health) as inbox:
        first = await publish(inbox, make_event("u1"))
        second = await publish(inbox, make_event("u2"))
    assert first == (Placed(partition=2, offset=0), 0.0)
    assert second == (Placed(partition=2, offset=1), 0.0)
    assert health.counters["published"] == 2


async def test_the_message_value_is_the_events_own_bytes(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """The publisher sends the bytes the event was made with (no second encoding) and answers
    with the delivery report's own value."""
    producer = FakeProducer()
    event = make_event()
    async with running_publisher(producer, health) as inbox:
        outcome, _ = await publish(inbox, event)
    [produced] = producer.produced
    assert produced.value is event.encoded
    assert outcome == Placed(partition=0, offset=0)


async def test_reply_waits_for_the_delivery_report(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Placed comes only when the broker's report arrives, not when produce() returns."""
    producer = FakeProducer(delivery_latency=0.75)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
    assert outcome == Placed(partition=0, offset=0)
    assert at == 0.75
    assert producer.attempts == [0.0]


async def test_message_key_is_user_id_and_value_is_canonical_json(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """The message goes to the topic keyed by the userId bytes, valued by event.to_json()."""
    producer = FakeProducer()
    event = make_event("user-\u00e9")
    async with running_publisher(producer, health) as inbox:
        await publish(inbox, event)
    [message] = producer.produced
    assert message.topic == TOPIC
    assert message.key == "user-\u00e9".encode()
    assert message.value == event.to_json()
    assert message.headers == ()


async def test_retriable_delivery_failure_is_retried_after_backoff_delays(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Three retriable failures: retries after 0.1, 0.2 and 0.4 s, then Placed."""
    producer = FakeProducer()
    producer.fail_deliveries(RETRIABLE, times=3)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
    assert producer.attempts == approx([0.0, 0.1, 0.3, 0.7])
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(0.7)
    assert health.counters["publish_retries"] == 3
    assert health.counters["publish_failures"] == 0


async def test_retriable_produce_rejection_is_retried_after_backoff_delays(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A retriable immediate refusal of produce() is retried like a failed delivery."""
    producer = FakeProducer()
    producer.refuse(ProduceRejected(RETRIABLE), times=2)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
    assert producer.attempts == approx([0.0, 0.1, 0.3])
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(0.3)


async def test_retries_stop_at_the_deadline(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """With 0.5 s left, tries go at 0, 0.1, 0.3; the next would pass the deadline: 503-able."""
    producer = FakeProducer()
    producer.fail_deliveries(RETRIABLE, times=100)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event(), timeout=0.5)
    assert producer.attempts == approx([0.0, 0.1, 0.3])
    assert at == approx(0.3)
    assert at <= 0.5
    assert isinstance(outcome, PublishFailed)
    assert outcome.retriable is True
    assert RETRIABLE.code in outcome.reason
    assert health.counters["publish_failures"] == 1


async def test_failure_that_must_not_be_retried_is_answered_at_once(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A non-retriable delivery failure is answered at once, with no retry."""
    producer = FakeProducer()
    producer.fail_deliveries(PERMANENT)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
        # Give a wrong retry every chance to happen before the inbox closes.
        await trio.sleep(10)
    assert outcome == PublishFailed(reason="MSG_SIZE_TOO_LARGE: message too large", retriable=False)
    assert at == 0.0
    assert producer.attempts == [0.0]
    assert health.counters["publish_retries"] == 0


async def test_non_retriable_produce_rejection_fails_at_once(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """produce() refusing for good (ProduceRejected, not retriable) is answered at once."""
    producer = FakeProducer()
    producer.refuse(ProduceRejected(PERMANENT))
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
    assert outcome == PublishFailed(reason="MSG_SIZE_TOO_LARGE: message too large", retriable=False)
    assert at == 0.0
    assert producer.produced == []


async def test_full_producer_queue_is_backpressure(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """BufferError makes the request wait 0.1 s and try again; it succeeds once there is room."""
    producer = FakeProducer()
    producer.refuse(BufferError("Local: Queue full"), times=3)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event())
        assert health.state("publisher").value is ActorState.RUNNING
    assert producer.attempts == approx([0.0, 0.1, 0.2, 0.3])
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(0.3)
    assert health.counters["producer_queue_full"] == 3
    assert health.counters["publish_retries"] == 0


async def test_full_producer_queue_until_the_deadline_fails_retriable(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A queue that stays full past the request's deadline answers PublishFailed(retriable)."""
    producer = FakeProducer()
    producer.refuse(BufferError("Local: Queue full"), times=100)
    async with running_publisher(producer, health) as inbox:
        outcome, at = await publish(inbox, make_event(), timeout=0.35)
    assert outcome == PublishFailed(reason="producer queue full", retriable=True, kind="queue_full")
    assert at == approx(0.3)
    assert producer.attempts == approx([0.0, 0.1, 0.2, 0.3])


async def test_inbox_is_not_drained_while_the_producer_refuses(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """While produce() raises BufferError the publisher takes nothing more: the inbox fills."""
    producer = FakeProducer(queue_capacity=1, delivery_latency=10.0)
    replies = []
    async with running_publisher(producer, health, inbox_size=2) as inbox:
        for user in ("u1", "u2", "u3", "u4"):
            request, reply = make_request(make_event(user), timeout=100.0)
            inbox.send_nowait(request)
            replies.append(reply)
            await trio.testing.wait_all_tasks_blocked()
        # u1 is in the producer, u2 waits for room, u3 and u4 fill the inbox.
        assert inbox.statistics().current_buffer_used == 2
        with pytest.raises(trio.WouldBlock):
            inbox.send_nowait(make_request(make_event("u5"))[0])
        assert [message.key for message in producer.produced] == [b"u1"]
        outcomes = [await reply.receive() for reply in replies]
    assert outcomes == [Placed(partition=0, offset=n) for n in range(4)]
    assert [message.key for message in producer.produced] == [b"u1", b"u2", b"u3", b"u4"]
    assert health.counters["producer_queue_full"] > 0
    assert health.state("publisher").value is ActorState.STOPPED


async def test_closed_inbox_drains_outstanding_work_then_flushes_and_stops(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """On inbox close the publisher waits for deliveries (retries too), flushes, then returns."""
    journal: list[str] = []
    producer = FakeProducer(delivery_latency=1.0, journal=journal)
    producer.fail_deliveries(RETRIABLE)
    send, receive = trio.open_memory_channel[PublishRequest](4)
    first, first_reply = make_request(make_event("u1"))
    second, second_reply = make_request(make_event("u2"))
    send.send_nowait(first)
    send.send_nowait(second)
    send.close()

    await publisher_actor(producer, receive, health)()

    # u1 fails at 1.0, is retried at 1.1 and delivered at 2.1; only then may it return.
    assert trio.current_time() == approx(2.1)
    assert first_reply.receive_nowait() == Placed(partition=0, offset=1)
    assert second_reply.receive_nowait() == Placed(partition=0, offset=0)
    assert journal == [
        "producer.produce",
        "producer.produce",
        "producer.deliver",
        "producer.deliver",
        "producer.produce",
        "producer.deliver",
        "producer.flush",
    ]
    assert producer.flushes == approx([2.1])
    assert health.state("publisher").value is ActorState.STOPPED


async def test_cancelled_publisher_flushes_what_the_producer_holds(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Cancelled mid-delivery, the publisher still flushes and answers what got delivered."""
    producer = FakeProducer(delivery_latency=0.5)
    send, receive = trio.open_memory_channel[PublishRequest](4)
    request, reply = make_request(make_event())
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher_actor(producer, receive, health))
        await send.send(request)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert trio.current_time() == approx(0.5)
    assert producer.flushes == approx([0.2])
    assert reply.receive_nowait() == Placed(partition=0, offset=0)
    assert health.state("publisher").value is ActorState.STOPPED


async def test_crashing_producer_poll_propagates_after_flush(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """An error from poll() (a fatal client) ends the actor after its exit flush, for a restart."""
    producer = FakeProducer()
    producer.crash_next_poll(RuntimeError("fatal: producer fenced"))
    send, receive = trio.open_memory_channel[PublishRequest](4)
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="fenced")):
        await publisher_actor(producer, receive, health)()
    assert producer.flushes == [0.0]
    assert health.state("publisher").value is ActorState.STOPPED
    send.close()


async def test_health_follows_the_broker_connection(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Health goes DEGRADED while the producer reports no connection, then back to RUNNING."""
    producer = FakeProducer()
    async with running_publisher(producer, health):
        assert health.state("publisher").value is ActorState.RUNNING
        producer.connected = False
        with trio.fail_after(1):
            await health.state("publisher").wait_value(ActorState.DEGRADED)
        assert trio.current_time() == approx(0.1)  # within one pump interval
        assert health.snapshot()["actors"]["publisher"]["detail"] == "broker unreachable"
        producer.connected = None  # "don't know yet" is not "unreachable"
        with trio.fail_after(1):
            await health.state("publisher").wait_value(ActorState.RUNNING)
        producer.connected = False
        with trio.fail_after(1):
            await health.state("publisher").wait_value(ActorState.DEGRADED)
        producer.connected = True
        with trio.fail_after(1):
            await health.state("publisher").wait_value(ActorState.RUNNING)
        assert "detail" not in health.snapshot()["actors"]["publisher"]
    assert health.state("publisher").value is ActorState.STOPPED


async def test_request_expired_in_the_inbox_is_not_produced(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A request whose deadline passed before the publisher took it fails without a produce."""
    producer = FakeProducer()
    expired, replies = make_request(make_event(), timeout=1.0)
    await trio.sleep(1.0)
    async with running_publisher(producer, health) as inbox:
        await inbox.send(expired)
        with replies:
            outcome = await replies.receive()
    assert outcome == PublishFailed(reason="expired in the queue", retriable=True)
    assert producer.attempts == []


# --- a producer that can no longer deliver is replaced ---------------------------------------


async def test_fenced_delivery_replaces_the_producer_and_is_retried_on_the_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PRODUCER_FENCED: the old producer is discarded at once and the retry goes to a new one."""
    health = RecordingHealth(["publisher"])
    fenced, fresh = FakeProducer(name="old"), FakeProducer(name="new")
    fenced.fence()
    async with running_publisher([fenced, fresh], health) as inbox:
        outcome, at = await publish(inbox, make_event())
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(0.1)  # one backoff delay after the fenced report
    assert fenced.discarded_at == 0.0
    assert [message.at for message in fresh.produced] == approx([0.1])
    assert health.counters["producer_replacements"] == 1
    assert health.counters["publish_failures"] == 0


async def test_fenced_delivery_past_the_deadline_is_answered_retriable(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A request caught in a fenced producer with no time left is a 503 (retriable), not a 500."""
    fenced = FakeProducer()
    fenced.fence()
    async with running_publisher([fenced, FakeProducer()], health) as inbox:
        outcome, at = await publish(inbox, make_event(), timeout=0.05)
    assert outcome == PublishFailed(reason=f"{FENCED.code}: {FENCED.reason}", retriable=True)
    assert at == 0.0
    assert health.counters["producer_replacements"] == 1


async def test_health_is_degraded_from_the_replacement_until_the_new_producer_connects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """DEGRADED naming the reason while the new producer has neither connected nor delivered."""
    health = RecordingHealth(["publisher"])
    fenced, fresh = FakeProducer(), FakeProducer()
    fenced.fence()
    fresh.connected = None  # librdkafka knows nothing yet
    async with running_publisher([fenced, fresh], health) as inbox:
        await publish(inbox, make_event(), timeout=0.05)
        await trio.sleep(10)
        assert health.state("publisher").value is ActorState.DEGRADED
        detail = health.snapshot()["actors"]["publisher"]["detail"]
        assert detail == f"producer replaced ({FENCED.code}: {FENCED.reason})"
        fresh.connected = True
        with trio.fail_after(1):
            await health.state("publisher").wait_value(ActorState.RUNNING)
        assert trio.current_time() == approx(10.1)  # within one pump interval
    assert health.journal == [
        "publisher running",
        "publisher degraded",
        "publisher running",
        "publisher stopped",
    ]


async def test_every_delivery_failing_for_the_window_replaces_the_producer(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Retriable failures from 1.0 s on: the one at 6.5 s (5.5 s later) condemns the producer."""
    failing, fresh = FakeProducer(delivery_latency=1.0), FakeProducer()
    failing.fail_deliveries(RETRIABLE, times=100)
    async with running_publisher([failing, fresh], health) as inbox:
        outcome, at = await publish(inbox, make_event(), timeout=60)
    # Failures at 1.0, 2.1, 3.3, 4.7, 6.5; the retry after 1.6 s goes to the new producer.
    assert failing.attempts == approx([0.0, 1.1, 2.3, 3.7, 5.5])
    assert failing.discarded_at == approx(6.5)
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(8.1)
    assert health.counters["producer_replacements"] == 1


async def test_failures_for_less_than_the_window_keep_the_producer(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Failures at 1.0 to 4.7 s (3.7 s) and then a delivery: the same producer carries on."""
    failing = FakeProducer(delivery_latency=1.0)
    failing.fail_deliveries(RETRIABLE, times=4)
    async with running_publisher([failing], health) as inbox:
        outcome, at = await publish(inbox, make_event(), timeout=60)
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(6.5)
    assert failing.discarded_at is None
    assert health.counters["producer_replacements"] == 0


async def test_fatal_client_error_replaces_the_producer_without_a_restart(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A fatal error from poll() replaces the producer inside the actor; publishing goes on."""
    fatal, fresh = FakeProducer(), FakeProducer()
    fatal.crash_next_poll(KafkaFatalError("_FATAL: producer fenced"))
    async with running_publisher([fatal, fresh], health) as inbox:
        await trio.sleep(1)
        outcome, _ = await publish(inbox, make_event())
    assert outcome == Placed(partition=0, offset=0)
    assert fatal.discarded_at == approx(0.0)
    assert len(fresh.produced) == 1
    assert health.counters["producer_replacements"] == 1


async def publish_batch(
    inbox: trio.MemorySendChannel[PublishRequest],
    events: Sequence[UserEvent],
    *,
    timeout: float = 5.0,
) -> tuple[tuple[PublishOutcome, ...], float]:
    """Send one batch and wait for its one answer; returns it with the virtual time it came."""
    send, receive = trio.open_memory_channel[tuple[PublishOutcome, ...]](1)
    batch = PublishBatch(events=tuple(events), deadline=trio.current_time() + timeout, reply=send)
    await inbox.send(batch)  # type: ignore[arg-type]
    with receive:
        outcomes = await receive.receive()
    return outcomes, trio.current_time()


async def test_batch_is_produced_back_to_back_and_answered_once_in_order(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """Every event of a batch is produced at once, in order, and the one answer lists each
    event's placement in request order when the last report arrived."""
    producer = FakeProducer(delivery_latency=0.25)
    events = [make_event(f"u{index}") for index in range(5)]
    async with running_publisher(producer, health) as inbox:
        outcomes, at = await publish_batch(inbox, events)
    assert outcomes == tuple(Placed(partition=0, offset=offset) for offset in range(5))
    assert at == 0.25
    assert producer.attempts == [0.0] * 5
    assert [produced.value for produced in producer.produced] == [e.encoded for e in events]
    assert health.counters["published"] == 5


async def test_batch_answers_each_event_with_its_own_outcome(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A refused event fails alone: its neighbours in the batch are still placed."""
    producer = FakeProducer()
    producer.refuse(ProduceRejected(PERMANENT))
    async with running_publisher(producer, health) as inbox:
        outcomes, _ = await publish_batch(inbox, [make_event("a"), make_event("b")])
    assert isinstance(outcomes[0], PublishFailed)
    assert outcomes[0].retriable is False
    assert outcomes[1] == Placed(partition=0, offset=0)


async def test_batch_retries_one_event_within_the_deadline(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A retriable delivery failure of one event is retried after the backoff; the batch is
    answered when that retry was delivered."""
    producer = FakeProducer()
    producer.fail_deliveries(RETRIABLE)
    async with running_publisher(producer, health) as inbox:
        outcomes, at = await publish_batch(inbox, [make_event("a"), make_event("b")])
    assert outcomes == (Placed(partition=0, offset=1), Placed(partition=0, offset=0))
    assert at == approx(0.1)


async def test_batch_expired_in_the_inbox_is_not_produced(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """A batch whose deadline passed before the publisher took it is answered retriable for
    every event, and nothing of it is produced."""
    producer = FakeProducer()
    send, receive = trio.open_memory_channel[tuple[PublishOutcome, ...]](1)
    async with running_publisher(producer, health) as inbox:
        batch = PublishBatch(
            events=(make_event(), make_event()), deadline=trio.current_time(), reply=send
        )
        await inbox.send(batch)  # type: ignore[arg-type]
        outcomes = await receive.receive()
    assert [type(outcome) for outcome in outcomes] == [PublishFailed, PublishFailed]
    assert all(isinstance(o, PublishFailed) and o.retriable for o in outcomes)
    assert producer.produced == []


async def test_reports_in_flight_are_taken_without_waiting_and_idle_polls_block(
    autojump_clock: trio.testing.MockClock, health: Health
) -> None:
    """With nothing in flight the pump waits in a blocking poll (PUMP_INTERVAL); with messages
    in flight it first takes the reports already there with poll(0), and waits only when
    there are none, so each answer still comes exactly when its report does."""
    producer = FakeProducer(delivery_latency=0.25)
    async with running_publisher(producer, health) as inbox:
        await trio.sleep(0.35)
        idle = list(producer.poll_timeouts)
        outcome, at = await publish(inbox, make_event())
    assert idle
    assert set(idle) == {PUMP_INTERVAL}
    assert outcome == Placed(partition=0, offset=0)
    assert at == approx(0.6)
    after_produce = producer.poll_timeouts[len(idle) :]
    assert 0 in after_produce
    assert PUMP_INTERVAL in after_produce[after_produce.index(0) :]
