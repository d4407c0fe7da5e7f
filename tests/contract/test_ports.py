"""One set of expectations for ``ProducerPort`` and ``ConsumerPort``, on the fakes and on Kafka.

Every test runs twice (see ``conftest.py``): against the in-memory doubles the actor tests use,
and against the confluent-kafka adapters on a real broker. What one backend does and the other
does not is a defect in the fake or in the adapter, which this suite is here to catch.
"""

from __future__ import annotations

import pytest
import trio
from support.port_backends import Backend

from actors.kafka.ports import (
    ConsumerPort,
    DeliveryReport,
    KafkaFailure,
    Placed,
    PortClosed,
    ProduceRejected,
    ProducerPort,
    Record,
)

#: Generous bounds on a wait; on the fakes they pass in virtual time.
DELIVERY_SECONDS = 10.0
CONSUME_SECONDS = 30.0

#: A key that lands every message of a test on one partition.
KEY = b"contract-key"

#: Bigger than librdkafka's default ``message.max.bytes`` (1 000 000).
TOO_LARGE = 1_100_000


async def deliver(
    producer: ProducerPort, values: list[bytes], *, topic: str
) -> list[DeliveryReport]:
    """Produce ``values`` with :data:`KEY` and poll until each has its report, in order."""
    reports: list[DeliveryReport] = []
    for value in values:
        producer.produce(topic=topic, key=KEY, value=value, on_delivery=reports.append)
    with trio.fail_after(DELIVERY_SECONDS):
        while len(reports) < len(values):
            await producer.poll(0.1)
    return reports


async def consume_at_least(
    consumer: ConsumerPort, count: int, already: list[Record] | None = None
) -> list[Record]:
    """Consume until ``count`` records came, ``already`` ones included (more may come in the
    last batch)."""
    records = list(already or [])
    with trio.fail_after(CONSUME_SECONDS):
        while len(records) < count:
            records += await consumer.consume(100, 0.5)
    return records


async def consume_for(consumer: ConsumerPort, seconds: float) -> list[Record]:
    """Everything ``consume`` returns within ``seconds``."""
    records: list[Record] = []
    with trio.move_on_after(seconds):
        while True:
            records += await consumer.consume(100, 0.5)
    return records


async def ready_consumer(backend: Backend, group: str) -> tuple[ConsumerPort, list[Record]]:
    """A member of ``group`` that holds its assignment, and the records that came with it."""
    consumer = backend.consumer(group)
    records: list[Record] = []
    with trio.fail_after(CONSUME_SECONDS):
        while not consumer.assigned:
            records += await consumer.consume(100, 0.5)
    return consumer, records


def values(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}-{index}".encode() for index in range(count)]


async def test_delivery_reports_place_messages_of_one_key_at_consecutive_offsets(
    backend: Backend, clock: trio.abc.Clock | None
) -> None:
    """Each produced message gets one report: Placed, one partition, offsets counting up by one."""
    producer = backend.producer()
    reports = await deliver(producer, values("m", 5), topic=backend.topic)
    assert all(isinstance(report, Placed) for report in reports)
    placed = [report for report in reports if isinstance(report, Placed)]
    assert len({report.partition for report in placed}) == 1
    first = placed[0].offset
    assert [report.offset for report in placed] == list(range(first, first + 5))
    assert await producer.flush(1.0) == 0


async def test_consume_returns_a_partitions_records_in_order_with_their_content(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """Records come as produced: same key, value, headers, partition and offset, in order."""
    producer = backend.producer()
    reports: list[DeliveryReport] = []
    for value in values("v", 20):
        producer.produce(
            topic=backend.topic,
            key=KEY,
            value=value,
            headers=[("h", value)],
            on_delivery=reports.append,
        )
    with trio.fail_after(DELIVERY_SECONDS):
        while len(reports) < 20:
            await producer.poll(0.1)
    consumer, early = await ready_consumer(backend, group)
    records = await consume_at_least(consumer, 20, early)
    assert [record.value for record in records] == values("v", 20)
    assert [(r.partition, r.offset) for r in records] == [
        (report.partition, report.offset) for report in reports if isinstance(report, Placed)
    ]
    assert all(r.key == KEY and r.headers == (("h", r.value),) for r in records)
    assert {record.topic for record in records} == {backend.topic}
    await consumer.close()


async def test_a_new_member_resumes_after_the_last_stored_and_committed_record(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """Committed offset = last stored + 1: the group's next member starts right after it, and
    records read but not stored are read again."""
    producer = backend.producer()
    await deliver(producer, values("c", 10), topic=backend.topic)
    first, early = await ready_consumer(backend, group)
    records = await consume_at_least(first, 10, early)
    first.store_offset(records[5])
    await first.commit()
    await first.close()

    second, early = await ready_consumer(backend, group)
    again = await consume_at_least(second, 4, early)
    assert [record.value for record in again] == values("c", 10)[6:]
    assert again[0].offset == records[5].offset + 1
    await second.close()


async def test_close_commits_what_was_stored(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """close() commits the stored offsets itself: no explicit commit needed before it."""
    producer = backend.producer()
    await deliver(producer, values("k", 4), topic=backend.topic)
    first, early = await ready_consumer(backend, group)
    records = await consume_at_least(first, 4, early)
    first.store_offset(records[1])
    await first.close()

    second, early = await ready_consumer(backend, group)
    assert [record.value for record in await consume_at_least(second, 2, early)] == values("k", 4)[
        2:
    ]
    await second.close()


async def test_store_offset_while_a_consume_waits_neither_blocks_nor_is_lost(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """The actor stores offsets while its poll loop's consume() waits in the worker thread:
    store_offset returns at once (a call into librdkafka from trio's thread would wait for that
    consume and freeze every task), and the offset still reaches the next commit."""
    producer = backend.producer()
    await deliver(producer, values("w", 3), topic=backend.topic)
    first, early = await ready_consumer(backend, group)
    records = await consume_at_least(first, 3, early)
    first.pause()  # the waiting consume() below gets nothing and lasts its whole timeout
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.consume, 100, 0.5)
        await trio.sleep(0.1)  # that consume is under way
        started = trio.current_time()
        first.store_offset(records[0])
        assert trio.current_time() - started < 0.05
    await first.commit()
    await first.close()

    second, early = await ready_consumer(backend, group)
    assert [record.value for record in await consume_at_least(second, 2, early)] == values("w", 3)[
        1:
    ]
    await second.close()


async def test_paused_member_gets_nothing_and_resumes_at_the_next_record(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """While paused, consume() returns nothing (the member stays in its group); resume()
    carries on right after the last record returned: nothing lost, skipped or repeated."""
    producer = backend.producer()
    await deliver(producer, values("p", 3), topic=backend.topic)
    consumer, early = await ready_consumer(backend, group)
    before = await consume_at_least(consumer, 3, early)
    consumer.pause()
    consumer.pause()  # twice is once
    assert consumer.paused
    await deliver(producer, values("q", 5), topic=backend.topic)
    assert await consume_for(consumer, 3.0) == []
    assert consumer.assigned
    consumer.resume()
    assert not consumer.paused
    after = await consume_at_least(consumer, 5)
    assert [record.value for record in before + after] == values("p", 3) + values("q", 5)
    assert after[0].offset == before[-1].offset + 1
    assert consumer.take_revoked() == frozenset()
    await consumer.close()


async def test_pause_before_the_assignment_holds_for_the_partitions_assigned_later(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """A pause before the member joined applies to what it is assigned: nothing comes until
    resume(), then everything from the start, in order."""
    producer = backend.producer()
    await deliver(producer, values("a", 4), topic=backend.topic)
    consumer = backend.consumer(group)
    consumer.pause()
    with trio.fail_after(CONSUME_SECONDS):
        while not consumer.assigned:
            assert await consumer.consume(100, 0.5) == []
    assert await consume_for(consumer, 2.0) == []
    consumer.resume()
    records = await consume_at_least(consumer, 4)
    assert [record.value for record in records] == values("a", 4)
    await consumer.close()


async def test_no_call_after_close(
    backend: Backend, clock: trio.abc.Clock | None, group: str
) -> None:
    """Once close() began, every call raises PortClosed, a second close() included."""
    producer = backend.producer()
    await deliver(producer, values("x", 1), topic=backend.topic)
    consumer, early = await ready_consumer(backend, group)
    [record] = await consume_at_least(consumer, 1, early)
    await consumer.close()
    with pytest.raises(PortClosed):
        await consumer.consume(1, 0.1)
    with pytest.raises(PortClosed):
        consumer.store_offset(record)
    with pytest.raises(PortClosed):
        await consumer.commit()
    with pytest.raises(PortClosed):
        consumer.pause()
    with pytest.raises(PortClosed):
        consumer.resume()
    with pytest.raises(PortClosed):
        await consumer.close()
    assert consumer.assigned in (True, False)  # properties stay readable


async def test_no_call_after_discard(backend: Backend, clock: trio.abc.Clock | None) -> None:
    """Once discard() began, every call raises PortClosed, a second discard() included."""
    producer = backend.producer()
    await deliver(producer, values("d", 1), topic=backend.topic)
    await producer.discard(1.0)
    with pytest.raises(PortClosed):
        producer.produce(topic=backend.topic, key=KEY, value=b"late", on_delivery=print)
    with pytest.raises(PortClosed):
        await producer.poll(0.1)
    with pytest.raises(PortClosed):
        await producer.flush(0.1)
    with pytest.raises(PortClosed):
        await producer.discard(0.1)


async def test_a_message_larger_than_allowed_is_refused_at_once(
    backend: Backend, clock: trio.abc.Clock | None
) -> None:
    """produce() raises ProduceRejected with a KafkaFailure that is not retriable."""
    producer = backend.producer()
    with pytest.raises(ProduceRejected) as refused:
        producer.produce(topic=backend.topic, key=KEY, value=b"x" * TOO_LARGE, on_delivery=print)
    assert refused.value.failure.code == "MSG_SIZE_TOO_LARGE"
    assert not refused.value.failure.retriable
    assert not refused.value.failure.fatal


async def test_a_message_that_finds_no_broker_is_reported_as_a_retriable_failure(
    backend: Backend, clock: trio.abc.Clock | None
) -> None:
    """After the delivery timeout the report is a KafkaFailure, retriable, not fatal."""
    producer = backend.unreachable_producer()
    [report] = await deliver(producer, [b"lost"], topic=backend.topic)
    assert isinstance(report, KafkaFailure)
    assert report.code == "_MSG_TIMED_OUT"
    assert report.retriable
    assert not report.fatal
    await producer.discard(1.0)


async def test_discard_reports_every_undelivered_message_as_retriable(
    backend: Backend, clock: trio.abc.Clock | None
) -> None:
    """discard() hands each message it drops a retriable failure, within the call."""
    producer = backend.unreachable_producer()
    reports: list[DeliveryReport] = []
    for value in values("u", 3):
        producer.produce(topic=backend.topic, key=KEY, value=value, on_delivery=reports.append)
    await producer.discard(2.0)
    assert len(reports) == 3
    assert all(isinstance(report, KafkaFailure) and report.retriable for report in reports)
