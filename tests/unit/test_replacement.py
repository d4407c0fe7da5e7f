"""BrokenProducerWatch and ReplacingProducer on their own, over FakeProducers in virtual time."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from fakes import FakeProducer, opener

from actors.kafka.ports import DeliveryReport, KafkaFailure, Placed, ProduceRejected
from actors.kafka.replacement import BrokenProducerWatch, ReplacingProducer
from actors.runtime.backoff import Backoff, no_jitter
from actors.runtime.health import Health

TIMED_OUT = KafkaFailure(code="_MSG_TIMED_OUT", reason="timed out", retriable=True)
BACKOFF = Backoff(initial=0.1, maximum=2.0, jitter=no_jitter)


def replacing(producers: list[FakeProducer], health: Health) -> ReplacingProducer:
    return ReplacingProducer(
        opener(producers, "producer"),
        name="test",
        replace_after=5.0,
        backoff=BACKOFF,
        health=health,
        counter="replacements",
    )


async def send(producer: ReplacingProducer) -> DeliveryReport:
    """Produce one message and poll until its report is handed over."""
    reports: list[DeliveryReport] = []
    producer.produce(topic="t", key=None, value=b"v", on_delivery=reports.append)
    while not reports:
        await producer.poll(0.1)
    return reports[0]


async def test_watch_a_delivery_restarts_the_window(autojump_clock: trio.testing.MockClock) -> None:
    """Failures spanning more than the window condemn only if no delivery came between them."""
    watch = BrokenProducerWatch(replace_after=5.0)
    assert watch.failed(TIMED_OUT) is None
    await trio.sleep(4)
    watch.delivered()
    await trio.sleep(2)
    assert watch.failed(TIMED_OUT) is None  # 6 s after the first failure, but one delivered
    await trio.sleep(5)
    assert watch.failed(TIMED_OUT) == (
        "every delivery failed for 5.0 s, last _MSG_TIMED_OUT: timed out"
    )


@pytest.mark.parametrize("code", ["UNKNOWN_PRODUCER_ID", "INVALID_PRODUCER_EPOCH", "_FENCED"])
def test_watch_condemns_a_lost_producer_state_at_once(code: str) -> None:
    """Failures naming the producer's own state need no window."""
    assert BrokenProducerWatch(replace_after=5.0).failed(KafkaFailure(code=code, reason="r"))


async def test_replacements_in_a_row_are_paced_by_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A broker fencing every new producer gets new ones no faster than 0.1, 0.2, 0.4 s apart."""
    health = Health([])
    producers = [FakeProducer() for _ in range(4)]
    for fake in producers:
        fake.fence()
    producer = replacing(producers, health)
    step = 0.05
    while health.counters["replacements"] < 3:
        report = await send(producer)
        assert isinstance(report, KafkaFailure)
        assert report.retriable  # a condemned producer's failures are retriable
        await trio.sleep(step)  # the callers' own retry backoff
    times = [fake.discarded_at or 0.0 for fake in producers[:3]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert times[0] == 0.0
    for gap, delay in zip(gaps, [0.1, 0.2], strict=True):
        assert delay - 1e-9 <= gap < delay + step + 1e-9


async def test_fatal_refusal_at_produce_is_retriable_and_the_next_produce_uses_a_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """produce() refused with a fatal error: the caller may retry, and the retry gets a new one."""
    broken, fresh = FakeProducer(), FakeProducer()
    fatal = KafkaFailure(code="_FATAL", reason="fatal", fatal=True)
    broken.refuse(ProduceRejected(fatal))
    producer = replacing([broken, fresh], Health([]))
    with pytest.raises(ProduceRejected) as refused:
        await send(producer)
    assert refused.value.failure == KafkaFailure(code="_FATAL", reason="fatal", retriable=True)
    assert await send(producer) == Placed(partition=0, offset=0)
    assert len(fresh.produced) == 1
    assert broken.discarded_at == 0.0
