"""POST /events/batch through quart's test client, with a fake publisher on the real channel."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import quart.typing
import trio
import trio.testing
from settings_support import default_http_options, default_limits

from actors.domain.events import UserEvent
from actors.domain.messages import (
    Placed,
    PublishBatch,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
    StoreCommand,
)
from actors.http.app import HttpOptions, create_app
from actors.http.batch import BatchOptions
from actors.runtime.health import ActorState, Health

PUBLISH_TIMEOUT = 2.5
MAX_BATCH_EVENTS = 5
MAX_BATCH_BYTES = 2048
OPTIONS = default_http_options(
    limits=default_limits(max_payload_bytes=512),
    publish_timeout=PUBLISH_TIMEOUT,
    max_body_bytes=1024,
    batch=BatchOptions(
        max_events=MAX_BATCH_EVENTS, max_bytes=MAX_BATCH_BYTES, max_waiting_events=8
    ),
)
JSON = {"Content-Type": "application/json"}
ACTORS = ("http", "publisher", "consumer", "store")

#: Decides each event's outcome; None leaves the whole batch unanswered.
Answer = Callable[[UserEvent], PublishOutcome | None]


def place(event: UserEvent) -> PublishOutcome:
    return Placed(partition=0, offset=1)


@attrs.define
class Service:
    client: quart.typing.TestClientProtocol
    health: Health
    batches: list[PublishBatch]


async def fake_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherCommand], answer: Answer, seen: list[PublishBatch]
) -> None:
    async for command in inbox:
        assert isinstance(command, PublishBatch)
        seen.append(command)
        outcomes = [answer(event) for event in command.events]
        if all(outcome is not None for outcome in outcomes):
            command.reply.send_nowait(tuple(o for o in outcomes if o is not None))


@contextlib.asynccontextmanager
async def serving(
    *, answer: Answer | None = place, publish_buffer: int = 4, options: HttpOptions = OPTIONS
) -> AsyncIterator[Service]:
    """The app on real channels; ``answer=None`` leaves the publisher inbox unread."""
    publish_send, publish_receive = trio.open_memory_channel[PublisherCommand](publish_buffer)
    store_send, _store_receive = trio.open_memory_channel[StoreCommand](4)
    health = Health(ACTORS)
    for actor in ACTORS:
        health.report(actor, ActorState.RUNNING)
    app = create_app(publish=publish_send, store=store_send, health=health, options=options)
    service = Service(client=app.test_client(), health=health, batches=[])
    async with trio.open_nursery() as nursery:
        if answer is not None:
            nursery.start_soon(fake_publisher, publish_receive, answer, service.batches)
        yield service
        nursery.cancel_scope.cancel()


def item(user_id: str = "u1", **overrides: Any) -> dict[str, Any]:
    return {"userId": user_id, "eventType": "LOGIN", "payload": {"page": "/"}} | overrides


def batch(*items: Any) -> bytes:
    return json.dumps({"events": list(items)}).encode()


async def post_batch(service: Service, body: bytes) -> tuple[int, Any, Any]:
    response = await service.client.post("/events/batch", data=body, headers=JSON)
    return response.status_code, await response.get_json(), response.headers


async def test_all_published_is_201_with_every_event_in_order() -> None:
    """A batch of valid events goes to the publisher as one message and is answered 201 with
    each event (its own eventId and timestamp) in request order."""
    async with serving() as service:
        status, body, headers = await post_batch(service, batch(item("a"), item("b"), item("c")))
    assert status == 201
    assert [event["userId"] for event in body["events"]] == ["a", "b", "c"]
    assert len({event["eventId"] for event in body["events"]}) == 3
    assert all(event["timestamp"].endswith("Z") for event in body["events"])
    [published] = service.batches
    assert [json.loads(e.encoded) for e in published.events] == body["events"]
    assert "Retry-After" not in headers


async def test_invalid_items_are_400_in_place_and_never_published() -> None:
    """Mixed items: 207, each invalid one 400 with its problems at its index, the valid ones
    201 with their event; only the valid ones reach the publisher."""
    async with serving() as service:
        status, body, headers = await post_batch(
            service, batch(item("a"), item("", eventType="NOPE"), "text", item("d"))
        )
    assert status == 207
    statuses = [(result["index"], result["status"]) for result in body["results"]]
    assert statuses == [(0, 201), (1, 400), (2, 400), (3, 201)]
    assert {p["field"] for p in body["results"][1]["problems"]} == {"userId", "eventType"}
    assert body["results"][2]["problems"] == [{"field": "body", "message": "must be a JSON object"}]
    assert body["results"][3]["event"]["userId"] == "d"
    [published] = service.batches
    assert [event.user_id for event in published.events] == ["a", "d"]
    assert "Retry-After" not in headers


@pytest.mark.parametrize(
    "fields",
    [
        {"userId": "u1"},
        {"userId": " \u200b", "eventType": "LOGIN"},
        {"userId": "u" * 300, "eventType": "LOGIN"},
        {"userId": "u1", "eventType": "LOGIN", "payload": []},
        {"userId": "u1", "eventType": "LOGIN", "payload": {"big": "x" * 600}},
        {"userId": "u1", "eventType": "LOGIN", "payload": {"a": {"b": {"c": {}}}}},
        {"userId": 7, "eventType": "LOGIN"},
    ],
)
async def test_each_item_gets_exactly_the_problems_of_post_events_generate(
    fields: dict[str, Any],
) -> None:
    """An item breaking a rule gets in its result the very problems POST /events/generate
    answers for the same fields."""
    limits = attrs.evolve(OPTIONS.limits, max_payload_depth=2)
    options = attrs.evolve(OPTIONS, limits=limits)
    async with serving(options=options) as service:
        single = await service.client.post(
            "/events/generate", data=json.dumps(fields), headers=JSON
        )
        status, body, _ = await post_batch(service, batch(fields))
    assert single.status_code == 400
    assert status == 207
    assert body["results"] == [
        {"index": 0, "status": 400, "problems": (await single.get_json())["problems"]}
    ]
    assert service.batches == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"events": {}}',
        b'{"events": []}',
        b'{"events": [{"userId": "u1", "userId": "u2", "eventType": "LOGIN"}]}',
        b'{"events": [{"userId": "u1", "eventType": "LOGIN", "payload": {"n": 1e999}}]}',
        b'{"events": [' + b'{"userId": "u1", "eventType": "LOGIN"}\xff]}',
    ],
)
async def test_body_that_is_not_a_batch_envelope_is_400(body: bytes) -> None:
    """Not strict JSON, not {"events": [...]}, or an empty list: 400 for the whole batch,
    nothing published."""
    async with serving() as service:
        status, answer, _ = await post_batch(service, body)
    assert status == 400
    assert answer["error"] == "invalid_request"
    assert answer["problems"]
    assert service.batches == []


async def test_more_than_max_batch_events_is_413() -> None:
    """One event more than MAX_BATCH_EVENTS: 413, nothing published; exactly the limit: 201."""
    async with serving() as service:
        over, answer, _ = await post_batch(service, batch(*[item()] * (MAX_BATCH_EVENTS + 1)))
        at_limit, _, _ = await post_batch(service, batch(*[item()] * MAX_BATCH_EVENTS))
    assert over == 413
    assert answer["error"] == "request_entity_too_large"
    assert at_limit == 201
    assert len(service.batches) == 1


async def test_body_above_max_batch_bytes_is_413() -> None:
    """A body one byte over MAX_BATCH_BYTES is 413 (larger than a single event's limit is
    fine below it)."""
    padding = "x" * 400
    body = batch(*[item(payload={"p": padding})] * 3)
    assert 1024 < len(body) <= MAX_BATCH_BYTES
    over = body[:-2] + b" " * (MAX_BATCH_BYTES - len(body) + 1) + body[-2:]
    async with serving() as service:
        ok, _, _ = await post_batch(service, body)
        too_large, answer, _ = await post_batch(service, over)
    assert ok == 201
    assert too_large == 413
    assert str(MAX_BATCH_BYTES) in answer["message"]
    assert len(service.batches) == 1


async def test_non_json_content_type_is_415() -> None:
    """The content type rule of POST /events/generate holds for batches too."""
    async with serving() as service:
        response = await service.client.post(
            "/events/batch", data=batch(item()), headers={"Content-Type": "text/plain"}
        )
    assert response.status_code == 415
    assert service.batches == []


async def test_retriable_failure_of_one_event_is_207_with_503_and_retry_after() -> None:
    """One event not confirmed (retriable): 207, that result 503 with the reason, the others
    201, and Retry-After on the answer."""

    def answer(event: UserEvent) -> PublishOutcome:
        if event.user_id == "slow":
            return PublishFailed(reason="_MSG_TIMED_OUT: no answer", retriable=True)
        return Placed(partition=0, offset=1)

    async with serving(answer=answer) as service:
        status, body, headers = await post_batch(service, batch(item("a"), item("slow")))
    assert status == 207
    assert body["results"][0]["status"] == 201
    assert body["results"][1] == {"index": 1, "status": 503, "message": "_MSG_TIMED_OUT: no answer"}
    assert headers["Retry-After"] == "3"


async def test_refused_event_is_500_in_its_result_without_retry_after() -> None:
    """A non-retriable refusal is 500 in the event's result; no Retry-After without a 503."""

    def answer(event: UserEvent) -> PublishOutcome:
        return PublishFailed(reason="MSG_SIZE_TOO_LARGE: too large", retriable=False)

    async with serving(answer=answer) as service:
        status, body, headers = await post_batch(service, batch(item()))
    assert status == 207
    assert body["results"] == [
        {"index": 0, "status": 500, "message": "MSG_SIZE_TOO_LARGE: too large"}
    ]
    assert "Retry-After" not in headers


async def test_unconfirmed_batch_is_503_for_each_event_after_publish_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No answer from the publisher: every event 503 exactly PUBLISH_TIMEOUT after the POST."""

    def never(event: UserEvent) -> None:
        return None

    async with serving(answer=never) as service:
        started = trio.current_time()
        status, body, headers = await post_batch(service, batch(item(), item()))
        waited = trio.current_time() - started
    assert status == 207
    assert [result["status"] for result in body["results"]] == [503, 503]
    assert waited == pytest.approx(PUBLISH_TIMEOUT)
    assert "Retry-After" in headers


async def test_full_publisher_inbox_is_503_for_each_event_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An inbox with no room: 503 for every valid event without waiting; invalid ones 400."""
    async with serving(answer=None, publish_buffer=0) as service:
        started = trio.current_time()
        status, body, headers = await post_batch(service, batch(item(), {"userId": "u1"}))
        assert trio.current_time() == started
    assert status == 207
    assert [result["status"] for result in body["results"]] == [503, 400]
    assert "Retry-After" in headers


async def test_starting_publisher_is_503_for_each_event_and_queues_nothing() -> None:
    """While the publisher waits for the broker, a batch is answered 503 with that reason."""
    async with serving() as service:
        service.health.report("publisher", ActorState.STARTING, "waiting")
        status, body, _ = await post_batch(service, batch(item(), item()))
    assert status == 207
    assert [r["message"] for r in body["results"]] == ["waiting", "waiting"]
    assert service.batches == []


async def test_events_waiting_for_the_publisher_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Beyond max_waiting_events events waiting for an answer, a further batch gets 503 at
    once without being queued; once the first batch is answered, batches are taken again."""

    def never(event: UserEvent) -> None:
        return None

    async with serving(answer=never) as service, trio.open_nursery() as nursery:
        nursery.start_soon(post_batch, service, batch(*[item()] * 5))
        await trio.sleep(0.1)
        status, body, _ = await post_batch(service, batch(*[item()] * 4))
        assert trio.current_time() == pytest.approx(0.1)
        await trio.sleep(PUBLISH_TIMEOUT)
        later, _, _ = await post_batch(service, batch(*[item()] * 4))
    assert status == 207
    assert {result["message"] for result in body["results"]} == {
        "too many events waiting to be published"
    }
    assert later == 207
    assert [len(published.events) for published in service.batches] == [5, 4]


async def test_openapi_documents_the_batch_limits() -> None:
    """GET /openapi.json describes POST /events/batch with the live MAX_BATCH_EVENTS."""
    async with serving() as service:
        response = await service.client.get("/openapi.json")
        document = await response.get_json()
    post = document["paths"]["/events/batch"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["events"]["maxItems"] == MAX_BATCH_EVENTS
    assert set(post["responses"]) == {"201", "207", "400", "413", "415"}
