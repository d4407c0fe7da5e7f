"""POST /events/batch through quart's test client, with a fake publisher on the real channel."""

from __future__ import annotations

import contextlib
import functools
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
    LedgerCommand,
    Placed,
    PublishBatch,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
    StoreCommand,
)
from actors.http.app import HttpOptions, create_app
from actors.http.batch import BatchOptions
from actors.idempotency import run_idempotency_ledger
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
ACTORS = ("http", "publisher", "consumer", "store", "idempotency")
#: Room in the ledger of the tests with idempotency keys.
LEDGER_KEYS = 6

#: Decides each event's outcome; None leaves the whole batch unanswered.
Answer = Callable[[UserEvent], PublishOutcome | None]


def place(event: UserEvent) -> PublishOutcome:
    return Placed(partition=0, offset=1)


@attrs.define
class Service:
    client: quart.typing.TestClientProtocol
    health: Health
    batches: list[PublishBatch]
    #: The fake publisher answers each batch once this is set.
    release: trio.Event = attrs.field(factory=trio.Event)


async def fake_publisher(
    inbox: trio.MemoryReceiveChannel[PublisherCommand], answer: Answer, service: Service
) -> None:
    async for command in inbox:
        assert isinstance(command, PublishBatch)
        service.batches.append(command)
        await service.release.wait()
        outcomes = [answer(event) for event in command.events]
        if all(outcome is not None for outcome in outcomes):
            # A request that stopped waiting (publish timeout) closed its reply channel.
            with contextlib.suppress(trio.BrokenResourceError):
                command.reply.send_nowait(tuple(o for o in outcomes if o is not None))


@contextlib.asynccontextmanager
async def serving(
    *,
    answer: Answer | None = place,
    publish_buffer: int = 4,
    options: HttpOptions = OPTIONS,
    ledger: bool = False,
    released: bool = True,
) -> AsyncIterator[Service]:
    """The app on real channels; ``answer=None`` leaves the publisher inbox unread, ``ledger``
    runs the idempotency ledger actor behind the app, ``released=False`` holds the publisher's
    answers until ``service.release`` is set."""
    publish_send, publish_receive = trio.open_memory_channel[PublisherCommand](publish_buffer)
    store_send, _store_receive = trio.open_memory_channel[StoreCommand](4)
    ledger_send, ledger_receive = trio.open_memory_channel[LedgerCommand](8)
    health = Health(ACTORS)
    for actor in ACTORS:
        health.report(actor, ActorState.RUNNING)
    app = create_app(
        publish=publish_send,
        store=store_send,
        health=health,
        options=options,
        ledger=ledger_send if ledger else None,
    )
    service = Service(client=app.test_client(), health=health, batches=[])
    if released:
        service.release.set()
    async with trio.open_nursery() as nursery:
        if ledger:
            await nursery.start(
                functools.partial(
                    run_idempotency_ledger,
                    inbox=ledger_receive,
                    health=health,
                    max_keys=LEDGER_KEYS,
                    ttl=60,
                )
            )
        if answer is not None:
            nursery.start_soon(fake_publisher, publish_receive, answer, service)
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


# --- idempotencyKey per item -----------------------------------------------------------------


def keyed(key: str, user_id: str = "u1", **overrides: Any) -> dict[str, Any]:
    return item(user_id, **overrides) | {"idempotencyKey": key}


def published_users(service: Service) -> list[list[str]]:
    return [[event.user_id for event in published.events] for published in service.batches]


async def test_a_repeated_keyed_batch_replays_every_event_and_publishes_nothing() -> None:
    """The same keyed batch twice: the second is 201 with the same events (eventId and
    timestamp), Idempotent-Replayed, and reaches no publisher."""
    async with serving(ledger=True) as service:
        body = batch(keyed("k-a", "a"), keyed("k-b", "b"))
        first_status, first, first_headers = await post_batch(service, body)
        second_status, second, second_headers = await post_batch(service, body)
    assert (first_status, second_status) == (201, 201)
    assert second == first
    assert "Idempotent-Replayed" not in first_headers
    assert second_headers["Idempotent-Replayed"] == "true"
    assert published_users(service) == [["a", "b"]]


async def test_replayed_new_and_unkeyed_items_mix_in_one_batch() -> None:
    """A batch holding an answered key, a new key and an unkeyed item: 201 with all three, the
    answered one with its first eventId; only the other two are published; not marked replayed
    as a whole."""
    async with serving(ledger=True) as service:
        _, first, _ = await post_batch(service, batch(keyed("k-a", "a")))
        status, body, headers = await post_batch(
            service, batch(keyed("k-a", "a"), keyed("k-c", "c"), item("d"))
        )
    assert status == 201
    assert body["events"][0] == first["events"][0]
    assert [event["userId"] for event in body["events"]] == ["a", "c", "d"]
    assert "Idempotent-Replayed" not in headers
    assert published_users(service) == [["a"], ["c", "d"]]


async def test_an_item_key_sent_with_another_item_is_422_in_its_result() -> None:
    """A key answered for one item, sent with another: 422 in that item's result; it is not
    published, the batch's other items are."""
    async with serving(ledger=True) as service:
        await post_batch(service, batch(keyed("k-a", "a")))
        status, body, headers = await post_batch(
            service, batch(keyed("k-a", "a", payload={"other": 1}), item("b"))
        )
    assert status == 207
    assert [result["status"] for result in body["results"]] == [422, 201]
    assert body["results"][0]["message"] == "this idempotencyKey was used with another event"
    assert "Retry-After" not in headers
    assert published_users(service) == [["a"], ["b"]]


async def test_an_item_whose_key_is_in_flight_is_409_with_retry_after() -> None:
    """While a keyed item waits for the broker, the same item in another batch is 409 with
    Retry-After, and not published; within one batch, the second item with a key is 409 too."""
    async with serving(ledger=True, released=False) as service, trio.open_nursery() as nursery:
        nursery.start_soon(post_batch, service, batch(keyed("k-a", "a")))
        await trio.testing.wait_all_tasks_blocked()
        status, body, headers = await post_batch(service, batch(keyed("k-a", "a"), {"userId": "x"}))
        service.release.set()
        await trio.testing.wait_all_tasks_blocked()
        twice_status, twice, _ = await post_batch(
            service, batch(keyed("k-z", "z"), keyed("k-z", "z"))
        )
    assert status == 207
    assert [result["status"] for result in body["results"]] == [409, 400]
    assert body["results"][0]["message"] == (
        "a request with this idempotencyKey is still being handled"
    )
    assert headers["Retry-After"] == "3"
    assert twice_status == 207
    assert [result["status"] for result in twice["results"]] == [201, 409]
    assert published_users(service) == [["a"], ["z"]]


async def test_a_key_whose_event_failed_is_not_remembered() -> None:
    """An item answered 503 leaves its key free: the same item again is published anew."""
    failures = [PublishFailed(reason="down", retriable=True)]

    def fail_once(event: UserEvent) -> PublishOutcome:
        return failures.pop() if failures else Placed(partition=0, offset=2)

    async with serving(ledger=True, answer=fail_once) as service:
        first_status, first, _ = await post_batch(service, batch(keyed("k-a", "a")))
        again_status, _, headers = await post_batch(service, batch(keyed("k-a", "a")))
    assert first_status == 207
    assert first["results"][0]["status"] == 503
    assert again_status == 201
    assert "Idempotent-Replayed" not in headers
    assert published_users(service) == [["a"], ["a"]]


async def test_a_replayed_item_in_a_207_says_so() -> None:
    """Among failed items, a replayed one is 201 with its first event and "replayed": true."""
    async with serving(ledger=True) as service:
        _, first, _ = await post_batch(service, batch(keyed("k-a", "a")))
        status, body, _ = await post_batch(service, batch(keyed("k-a", "a"), {"userId": "x"}))
    assert status == 207
    assert body["results"][0] == {
        "index": 0,
        "status": 201,
        "event": first["events"][0],
        "replayed": True,
    }
    assert body["results"][1]["status"] == 400


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "é", 7, None], ids=repr)
async def test_an_invalid_item_key_is_400_naming_it_with_the_items_other_problems(
    key: object,
) -> None:
    """A key that is not 1-255 visible ASCII characters: that item is 400 with a problem about
    idempotencyKey, listed with its other problems; it is not published."""
    async with serving(ledger=True) as service:
        status, body, _ = await post_batch(
            service, batch(item("a") | {"idempotencyKey": key, "eventType": "NOPE"}, item("b"))
        )
    assert status == 207
    assert [result["status"] for result in body["results"]] == [400, 201]
    fields = [problem["field"] for problem in body["results"][0]["problems"]]
    assert fields == ["idempotencyKey", "eventType"]
    assert published_users(service) == [["b"]]


async def test_keyed_items_without_a_ledger_are_503_and_unkeyed_ones_published() -> None:
    """With no ledger to ask, a keyed item cannot be made safe: 503 with Retry-After; the
    unkeyed items of the batch are published."""
    async with serving(ledger=False) as service:
        status, body, headers = await post_batch(service, batch(keyed("k-a", "a"), item("b")))
    assert status == 207
    assert [result["status"] for result in body["results"]] == [503, 201]
    assert "Retry-After" in headers
    assert published_users(service) == [["b"]]


async def test_a_full_ledger_is_503_for_the_keys_it_has_no_room_for() -> None:
    """While every place of the ledger holds a key in flight, a further keyed item is 503 with
    Retry-After at once, and not published."""
    keys = [keyed(f"k-{number}", f"u{number}") for number in range(LEDGER_KEYS)]
    options = attrs.evolve(
        OPTIONS, batch=attrs.evolve(OPTIONS.batch, max_events=LEDGER_KEYS, max_bytes=4096)
    )
    async with (
        serving(ledger=True, released=False, options=options) as service,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(post_batch, service, batch(*keys))
        await trio.testing.wait_all_tasks_blocked()
        status, body, headers = await post_batch(
            service, batch(keyed("k-new", "n"), {"userId": "x"})
        )
        service.release.set()
    assert status == 207
    assert [result["status"] for result in body["results"]] == [503, 400]
    assert body["results"][0]["message"] == "idempotency keys are not available right now"
    assert "Retry-After" in headers
    assert published_users(service) == [[f"u{number}" for number in range(LEDGER_KEYS)]]


async def test_a_client_that_leaves_mid_publish_still_has_its_keys_remembered() -> None:
    """The client goes while its keyed batch waits for the broker: once the broker confirms,
    the key is remembered, so the client's retry is a replay and publishes nothing more."""
    async with serving(ledger=True, released=False) as service, trio.open_nursery() as nursery:
        leaving = trio.CancelScope()

        async def post_then_leave() -> None:
            with leaving:
                await post_batch(service, batch(keyed("k-a", "a")))

        nursery.start_soon(post_then_leave)
        await trio.testing.wait_all_tasks_blocked()
        leaving.cancel()
        await trio.testing.wait_all_tasks_blocked()
        service.release.set()
        await trio.testing.wait_all_tasks_blocked()
        status, _, headers = await post_batch(service, batch(keyed("k-a", "a")))
    assert status == 201
    assert headers["Idempotent-Replayed"] == "true"
    assert published_users(service) == [["a"]]
