"""The HTTP actor through quart's test client, with fake publisher and store tasks on channels.

The last sections: its observability (/metrics, liveness and readiness, trace context).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import quart.typing
import trio
import trio.testing
from metric_samples import Scrape
from quart_trio import QuartTrio
from settings_support import default_http_options, default_limits

from actors.domain.events import decode_event, new_event
from actors.domain.messages import (
    EventsPage,
    Placed,
    PublishFailed,
    PublishOutcome,
    PublishRequest,
    Put,
    ReadEvents,
    StoreCommand,
)
from actors.http.app import STORE_QUERY_SECONDS, HttpOptions, create_app
from actors.runtime.health import ActorState, Health
from actors.runtime.metrics import CONTENT_TYPE, PREFIX, Metrics

PUBLISH_TIMEOUT = 2.5
MAX_BODY_BYTES = 1024
OPTIONS = default_http_options(
    limits=default_limits(max_payload_bytes=512),
    publish_timeout=PUBLISH_TIMEOUT,
    max_body_bytes=MAX_BODY_BYTES,
)
JSON = {"Content-Type": "application/json"}
ACTORS = ("http", "publisher", "consumer", "store")

Answer = Callable[[PublishRequest], PublishOutcome | None]


def confirm(request: PublishRequest) -> PublishOutcome:
    return Placed(partition=0, offset=7)


def never_answer(request: PublishRequest) -> None:
    return None


@attrs.define
class Service:
    """The app under test, its client, and what the fakes behind it saw."""

    app: QuartTrio
    client: quart.typing.TestClientProtocol
    health: Health
    publish: trio.MemorySendChannel[PublishRequest]
    store_inbox: trio.MemoryReceiveChannel[StoreCommand]
    publish_requests: list[PublishRequest]
    store_events: list[bytes]


async def fake_publisher(
    inbox: trio.MemoryReceiveChannel[PublishRequest], answer: Answer, seen: list[PublishRequest]
) -> None:
    """Record each request and answer it with ``answer(request)``, or never when that is None."""
    async for request in inbox:
        seen.append(request)  # keeps an unanswered reply channel open, as a slow broker would
        outcome = answer(request)
        if outcome is not None:
            request.reply.send_nowait(outcome)


#: Events per page of the fake store: small, so that listings span several chunks.
FAKE_PAGE_EVENTS = 2


async def fake_store(
    inbox: trio.MemoryReceiveChannel[StoreCommand], events: list[bytes], pages: int | None
) -> None:
    """Answer ReadEvents from ``events`` (positions are list indexes), ``FAKE_PAGE_EVENTS`` at a
    time; after ``pages`` answers (``None``: never) fall silent, as a stuck store would."""
    answered = 0
    async for command in inbox:
        match command:
            case ReadEvents(start=start, end=end, reply=reply):
                if pages is not None and answered >= pages:
                    continue
                answered += 1
                start = start or 0
                end = len(events) if end is None else end
                taken = events[start : min(end, start + FAKE_PAGE_EVENTS)]
                reply.send_nowait(EventsPage(events=tuple(taken), next=start + len(taken), end=end))
            case Put():
                raise AssertionError("the HTTP actor never writes to the store")


@contextlib.asynccontextmanager
async def serving(
    *,
    answer: Answer | None = confirm,
    publish_buffer: int = 4,
    store_answers: bool = True,
    store_pages: int | None = None,
    options: HttpOptions = OPTIONS,
    metrics: Metrics | None = None,
) -> AsyncIterator[Service]:
    """Build the app on real channels; ``answer=None`` leaves the publisher inbox unread."""
    publish_send, publish_receive = trio.open_memory_channel[PublishRequest](publish_buffer)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](4)
    health = Health(ACTORS)
    for actor in ACTORS:
        health.report(actor, ActorState.RUNNING)
    app = create_app(
        publish=publish_send, store=store_send, health=health, options=options, metrics=metrics
    )
    service = Service(
        app=app,
        client=app.test_client(),
        health=health,
        publish=publish_send,
        store_inbox=store_receive,
        publish_requests=[],
        store_events=[],
    )
    async with trio.open_nursery() as nursery:
        if answer is not None:
            nursery.start_soon(fake_publisher, publish_receive, answer, service.publish_requests)
        if store_answers:
            nursery.start_soon(fake_store, store_receive, service.store_events, store_pages)
        yield service
        nursery.cancel_scope.cancel()


def new_event_body(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {"userId": "u1", "eventType": "LOGIN", "payload": {"page": "/"}}
    fields.update(overrides)
    return json.dumps(fields).encode()


async def post_event(service: Service, data: bytes | None = None, **headers: str) -> Any:
    return await service.client.post(
        "/events/generate", data=new_event_body() if data is None else data, headers=JSON | headers
    )


def assert_error_body(body: Any, error: str) -> None:
    assert isinstance(body, dict)
    assert body["error"] == error
    assert isinstance(body["message"], str)
    assert body["message"]


# --- POST /events/generate --------------------------------------------------------------------


async def test_post_returns_201_with_the_published_event() -> None:
    """201 carries the whole event, and it is the very event handed to the publisher."""
    async with serving() as service:
        response = await post_event(service)
        assert response.status_code == 201
        assert response.mimetype == "application/json"
        body = await response.get_json()
        [request] = service.publish_requests
    assert list(body) == ["eventId", "userId", "eventType", "timestamp", "payload"]
    assert (body["userId"], body["eventType"], body["payload"]) == ("u1", "LOGIN", {"page": "/"})
    assert await response.get_data() == request.event.to_json()
    assert decode_event(await response.get_data(), OPTIONS.limits) == request.event


async def test_post_accepts_json_media_types_with_parameters_and_suffix() -> None:
    """application/json with a charset and a +json media type are both accepted."""
    async with serving() as service:
        charset = await post_event(service, **{"Content-Type": "application/json; charset=utf-8"})
        suffixed = await post_event(service, **{"Content-Type": "application/event+json"})
    assert (charset.status_code, suffixed.status_code) == (201, 201)


async def test_publish_request_deadline_is_now_plus_publish_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The publisher is told to answer by the time the HTTP request gives up."""
    async with serving() as service:
        start = trio.current_time()
        await post_event(service)
        [request] = service.publish_requests
    assert request.deadline == start + PUBLISH_TIMEOUT


async def test_invalid_event_is_400_with_problems() -> None:
    """An invalid body is 400 listing every problem, and nothing is published."""
    async with serving() as service:
        response = await post_event(service, new_event_body(userId="", eventType="SIGNUP"))
        assert response.status_code == 400
        body = await response.get_json()
        assert service.publish_requests == []
    assert_error_body(body, "invalid_request")
    assert body["problems"] == [
        {"field": "userId", "message": "must not be empty"},
        {"field": "eventType", "message": "must be one of LOGIN, LOGOUT, PRODUCT_VIEW"},
    ]


async def test_body_not_json_is_400_about_the_body() -> None:
    """A body that is not JSON is 400 with one problem naming the body."""
    async with serving() as service:
        response = await post_event(service, b"{not json")
        body = await response.get_json()
    assert response.status_code == 400
    [problem] = body["problems"]
    assert problem["field"] == "body"


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
)
async def test_non_json_content_type_is_415(headers: dict[str, str]) -> None:
    """A body declared as anything but JSON is 415 and is not published."""
    async with serving() as service:
        response = await service.client.post(
            "/events/generate", data=new_event_body(), headers=headers
        )
        body = await response.get_json()
        assert service.publish_requests == []
    assert response.status_code == 415
    assert_error_body(body, "unsupported_media_type")


async def test_body_above_max_body_bytes_is_413() -> None:
    """A body one byte above max_body_bytes is 413 JSON and is not published."""
    padding = MAX_BODY_BYTES - len(new_event_body(pad=""))
    at_limit = new_event_body(pad="x" * padding)
    assert len(at_limit) == MAX_BODY_BYTES
    async with serving() as service:
        accepted = await post_event(service, at_limit)
        response = await post_event(service, new_event_body(pad="x" * (padding + 1)))
        body = await response.get_json()
        assert len(service.publish_requests) == 1
    assert accepted.status_code == 201
    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert_error_body(body, "request_entity_too_large")


@pytest.mark.parametrize("buffer", [0, 1])
async def test_full_publish_channel_is_503_with_retry_after(
    buffer: int, autojump_clock: trio.testing.MockClock
) -> None:
    """With nobody reading and the publish channel full, POST answers 503 at once."""
    async with serving(answer=None, publish_buffer=buffer) as service:
        reply, _replies = trio.open_memory_channel[PublishOutcome](1)
        filler = new_event(user_id="earlier", event_type="LOGIN", payload={})
        for _ in range(buffer):
            service.publish.send_nowait(PublishRequest(event=filler, deadline=0.0, reply=reply))
        start = trio.current_time()
        response = await post_event(service)
        assert trio.current_time() == start
        body = await response.get_json()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"  # ceil(2.5 s)
    assert_error_body(body, "publish_unavailable")


async def test_unconfirmed_publish_is_503_after_exactly_publish_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A publisher that never answers gives 503 + Retry-After when publish_timeout has passed."""
    async with serving(answer=never_answer) as service:
        start = trio.current_time()
        response = await post_event(service)
        elapsed = trio.current_time() - start
        body = await response.get_json()
        assert len(service.publish_requests) == 1
    assert elapsed == PUBLISH_TIMEOUT
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert_error_body(body, "publish_unavailable")
    assert "in time" in body["message"]


async def test_retriable_publish_failure_is_503() -> None:
    """A retriable PublishFailed is 503 with Retry-After and the reason as message."""

    def fail(request: PublishRequest) -> PublishOutcome:
        return PublishFailed(reason="broker unreachable", retriable=True)

    async with serving(answer=fail) as service:
        response = await post_event(service)
        body = await response.get_json()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert body == {"error": "publish_unavailable", "message": "broker unreachable"}


async def test_non_retriable_publish_failure_is_500() -> None:
    """A non-retriable PublishFailed is 500 without Retry-After."""

    def fail(request: PublishRequest) -> PublishOutcome:
        return PublishFailed(reason="message too large", retriable=False)

    async with serving(answer=fail) as service:
        response = await post_event(service)
        body = await response.get_json()
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert body == {"error": "publish_failed", "message": "message too large"}


# --- GET /events/processed --------------------------------------------------------------------


async def test_processed_events_is_a_json_array_in_store_order() -> None:
    """GET /events/processed returns the store's events as one JSON array, in its order."""
    events = [new_event(user_id=f"u{n}", event_type="LOGOUT", payload={"n": n}) for n in range(3)]
    async with serving() as service:
        empty = await service.client.get("/events/processed")
        assert await empty.get_json() == []
        service.store_events.extend(event.to_json() for event in events)
        response = await service.client.get("/events/processed")
        body = await response.get_json()
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert body == [event.to_dict() for event in events]


async def test_processed_events_503_when_store_does_not_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store that never answers gives 503 + Retry-After after STORE_QUERY_SECONDS."""
    async with serving(store_answers=False) as service:
        start = trio.current_time()
        response = await service.client.get("/events/processed")
        elapsed = trio.current_time() - start
        body = await response.get_json()
    assert elapsed == STORE_QUERY_SECONDS
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert_error_body(body, "store_unavailable")


async def test_processed_events_spanning_many_pages_is_one_array() -> None:
    """A listing of more events than a page holds is still exactly one JSON array."""
    events = [new_event(user_id=f"u{n}", event_type="LOGIN", payload={}) for n in range(7)]
    async with serving() as service:
        service.store_events.extend(event.to_json() for event in events)
        response = await service.client.get("/events/processed")
        text = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert json.loads(text) == [event.to_dict() for event in events]


async def test_listings_beyond_http_max_listings_get_503_until_one_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With max_listings=1, a second listing while the first is being sent is 503 with
    Retry-After; once the first ends, listings are served again."""
    options = attrs.evolve(OPTIONS, max_listings=1)
    events = [new_event(user_id=f"u{n}", event_type="LOGIN", payload={}) for n in range(5)]
    outcome: list[BaseException] = []

    async def stuck_listing() -> None:
        try:
            await service.client.get("/events/processed")
        except Exception as error:  # noqa: BLE001 - the cut-off listing's error is the point
            outcome.append(error)

    async with serving(options=options, store_pages=1) as service:
        service.store_events.extend(event.to_json() for event in events)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck_listing)
            await trio.sleep(1)  # the first page is out; the second is never answered
            refused = await service.client.get("/events/processed")
        body = await refused.get_json()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert_error_body(body, "too_many_listings")
    assert len(outcome) == 1, "the stuck listing was cut off when the store stopped answering"
    async with serving(options=options) as service:
        assert (await service.client.get("/events/processed")).status_code == 200


# --- GET /health ------------------------------------------------------------------------------


async def test_health_200_when_all_running() -> None:
    """GET /health is 200 with status ok when every actor is RUNNING."""
    async with serving() as service:
        service.health.count("stored", 3)
        service.health.gauge("store_events", 3)
        response = await service.client.get("/health")
        body = await response.get_json()
    assert response.status_code == 200
    assert body == {
        "status": "ok",
        "actors": {actor: {"state": "running"} for actor in ACTORS},
        "counters": {"stored": 3},
        "gauges": {"store_events": 3},
    }


async def test_health_503_with_same_shape_when_one_is_degraded() -> None:
    """GET /health is 503 with the same body shape when one actor is DEGRADED."""
    async with serving() as service:
        healthy = await (await service.client.get("/health")).get_json()
        service.health.report("consumer", ActorState.DEGRADED, "broker unreachable")
        response = await service.client.get("/health")
        body = await response.get_json()
    assert response.status_code == 503
    assert set(body) == set(healthy) == {"status", "actors", "counters", "gauges"}
    assert set(body["actors"]) == set(healthy["actors"])
    assert body["status"] == "degraded"
    assert body["actors"]["consumer"] == {"state": "degraded", "detail": "broker unreachable"}
    assert body["actors"]["store"] == {"state": "running"}


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_route_is_404_json() -> None:
    """An unknown path is a JSON 404."""
    async with serving() as service:
        response = await service.client.get("/nowhere")
        body = await response.get_json()
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert_error_body(body, "not_found")


async def test_wrong_method_is_405_json_with_allow() -> None:
    """A known path with the wrong method is a JSON 405 that says which methods are allowed."""
    async with serving() as service:
        response = await service.client.get("/events/generate")
        body = await response.get_json()
        deleted = await service.client.delete("/health")
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert_error_body(body, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert deleted.status_code == 405


async def test_exception_in_handler_is_json_500_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raises (its store inbox is gone) gives a JSON 500 leaking no traceback."""
    async with serving(store_answers=False) as service:
        service.store_inbox.close()  # the handler's store.send now raises BrokenResourceError
        with caplog.at_level(logging.ERROR, logger="actors.http.app"):
            response = await service.client.get("/events/processed")
        text = await response.get_data(as_text=True)
    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert json.loads(text) == {
        "error": "internal_error",
        "message": "the service failed to handle the request",
    }
    assert "Traceback" not in text
    assert "BrokenResourceError" not in text
    [record] = [r for r in caplog.records if r.name == "actors.http.app"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], trio.BrokenResourceError)


# --- /openapi.json ----------------------------------------------------------------------------


def app_routes(app: QuartTrio) -> dict[str, set[str]]:
    """The app's routes in OpenAPI's spelling (``/events/<event_id:eventId>`` is
    ``/events/{eventId}``), with their methods; the static files are left out."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/static"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(
            method.lower() for method in rule.methods or () if method not in {"HEAD", "OPTIONS"}
        )
    return routes


async def test_openapi_documents_exactly_the_app_routes() -> None:
    """Every route of the app, with its methods, is in /openapi.json and nothing else is."""
    async with serving() as service:
        response = await service.client.get("/openapi.json")
        document = await response.get_json()
        routes = app_routes(service.app)
    assert response.status_code == 200
    documented = {path: set(operations) for path, operations in document["paths"].items()}
    assert documented == routes
    assert "/events/generate" in routes


async def test_openapi_route_check_would_catch_an_undocumented_route() -> None:
    """A route added without documentation makes the app's routes differ from the document."""
    async with serving() as service:

        @service.app.get("/undocumented")
        async def undocumented() -> str:
            return "{}"

        document = await (await service.client.get("/openapi.json")).get_json()
        routes = app_routes(service.app)
    assert "/undocumented" in routes
    assert {path: set(operations) for path, operations in document["paths"].items()} != routes


async def test_openapi_reflects_the_live_limits() -> None:
    """The documented bounds are the options the app enforces."""
    options = default_http_options(
        limits=default_limits(event_types=frozenset({"LOGIN"}), max_user_id_length=12),
        publish_timeout=1.0,
        max_body_bytes=999,
    )
    async with serving(options=options) as service:
        document = await (await service.client.get("/openapi.json")).get_json()
    new_event_schema = document["components"]["schemas"]["NewEvent"]["properties"]
    assert new_event_schema["eventType"]["enum"] == ["LOGIN"]
    assert new_event_schema["userId"]["maxLength"] == 12
    responses = document["paths"]["/events/generate"]["post"]["responses"]
    assert "999" in responses["413"]["description"]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}",  # deep, yet within the JSON parser's limit
        b'{"k": "\\udc00"}',  # a lone surrogate escape
    ],
    ids=["nested-500", "lone-surrogate"],
)
async def test_hostile_payload_is_400_not_500(payload: bytes) -> None:
    """A well-formed but hostile payload is a 400 about the request, never a 500."""
    options = attrs.evolve(OPTIONS, max_body_bytes=65536)
    async with serving(options=options) as service:
        response = await post_event(
            service, b'{"userId": "u", "eventType": "LOGIN", "payload": ' + payload + b"}"
        )
        assert service.publish_requests == []
    assert response.status_code == 400


# --- hostile framing and slow bodies ----------------------------------------------------------


async def test_stalled_body_is_408_once_at_body_read_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A body that stops arriving gets one JSON 408 exactly body_read_timeout later, with
    ``Connection: close``, one access line and no traceback."""
    options = attrs.evolve(OPTIONS, body_read_timeout=7.0)
    async with serving(options=options) as service:
        headers = JSON | {"Content-Length": "100"}
        with caplog.at_level(logging.INFO):
            start = trio.current_time()
            async with service.client.request(
                "/events/generate", method="POST", headers=headers
            ) as connection:
                await connection.send(b'{"userId": "u1", ')
                body = json.loads(await connection.receive())
                elapsed = trio.current_time() - start
                status, answered = connection.status_code, connection.headers
        assert service.publish_requests == []
    assert elapsed == 7.0
    assert status == 408
    assert answered is not None
    assert answered["Connection"] == "close"
    assert_error_body(body, "request_timeout")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("actors.http.access", "http request")
    ]


async def test_stalled_body_on_an_unknown_route_is_408_not_500(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The error handler's own body read timing out becomes 408 too, at the same time."""
    options = attrs.evolve(OPTIONS, body_read_timeout=7.0)
    async with serving(options=options) as service:
        with caplog.at_level(logging.INFO):
            start = trio.current_time()
            async with service.client.request(
                "/nowhere", method="POST", headers=JSON | {"Content-Length": "100"}
            ) as connection:
                await connection.send(b"{")
                body = json.loads(await connection.receive())
                elapsed = trio.current_time() - start
    assert (elapsed, connection.status_code) == (7.0, 408)
    assert_error_body(body, "request_timeout")
    assert not any(record.exc_info for record in caplog.records)


async def test_content_length_with_transfer_encoding_is_400_and_closes() -> None:
    """Both framing headers at once (RFC 9112 6.1) is a JSON 400 that closes the connection."""
    async with serving() as service:
        response = await service.client.post(
            "/events/generate",
            data=new_event_body(),
            headers=JSON | {"Transfer-Encoding": "chunked", "Content-Length": "5"},
        )
        body = await response.get_json()
        assert service.publish_requests == []
    assert response.status_code == 400
    assert response.headers["Connection"] == "close"
    assert_error_body(body, "invalid_request")
    assert body["problems"][0]["field"] == "headers"


# --- what the documents promise ---------------------------------------------------------------


async def test_unknown_fields_are_dropped_and_client_ids_replaced_as_documented() -> None:
    """A POST with an unknown field and its own eventId/timestamp gets 201 with neither, and
    the OpenAPI description of the body says exactly that."""
    body = new_event_body(eventId="11111111-1111-4111-8111-111111111111", extra=1)
    async with serving() as service:
        created = await (await post_event(service, body)).get_json()
        document = await (await service.client.get("/openapi.json")).get_json()
    assert "extra" not in created
    assert created["eventId"] != "11111111-1111-4111-8111-111111111111"
    described = document["components"]["schemas"]["NewEvent"]["description"]
    assert "dropped" in described
    assert "replaced" in described


async def test_415_is_about_the_content_type_and_400_about_the_body() -> None:
    """A body that is not JSON, sent as application/json, is 400; valid JSON sent as text/plain
    is 415: the two cases the API documents apart."""
    async with serving() as service:
        not_json = await post_event(service, b"not json")
        wrong_type = await service.client.post(
            "/events/generate", data=new_event_body(), headers={"Content-Type": "text/plain"}
        )
    assert not_json.status_code == 400
    assert wrong_type.status_code == 415


async def test_every_json_answer_is_compact_like_the_events() -> None:
    """Health, errors and the OpenAPI document use the events' compact separators."""
    async with serving() as service:
        answers = [
            await service.client.get("/health"),
            await service.client.get("/nowhere"),
            await post_event(service, b"{}"),
            await service.client.get("/openapi.json"),
        ]
        texts = [await answer.get_data(as_text=True) for answer in answers]
    for text in texts:
        assert text == json.dumps(json.loads(text), separators=(",", ":"))


async def test_options_is_204_with_allow_and_no_body() -> None:
    """OPTIONS on a route answers 204 with the route's methods in Allow and an empty body."""
    async with serving() as service:
        response = await service.client.options("/events/generate")
        body = await response.get_data()
    assert response.status_code == 204
    assert body == b""
    assert {"POST", "OPTIONS"} <= {m.strip() for m in response.headers["Allow"].split(",")}


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def scrape(service: Service) -> Scrape:
    response = await service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return Scrape.parse((await response.get_data()).decode())


# --- /health/live and /health/ready -----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "live", "ready"),
    [
        (ActorState.RUNNING, 200, 200),
        (ActorState.STARTING, 200, 503),
        (ActorState.DEGRADED, 200, 503),
        (ActorState.RESTARTING, 200, 503),
        (ActorState.STOPPED, 200, 503),
        (ActorState.FAILED, 503, 503),
    ],
)
async def test_liveness_fails_only_when_an_actor_is_given_up_on(
    state: ActorState, live: int, ready: int
) -> None:
    """Liveness is 503 only for a failed actor; readiness is 200 only when all run."""
    async with serving() as service:
        service.health.report("consumer", state)
        live_answer = await service.client.get("/health/live")
        ready_answer = await service.client.get("/health/ready")
        health = await service.client.get("/health")
    assert (live_answer.status_code, ready_answer.status_code) == (live, ready)
    assert health.status_code == ready, "readiness is /health's own answer"
    assert (await ready_answer.get_json())["status"] == ("ready" if ready == 200 else "not ready")
    assert (await live_answer.get_json())["status"] == ("live" if live == 200 else "failed")


# --- /metrics ----------------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_method_and_status() -> None:
    """Each answered request is counted once under its route pattern; unknown paths share one
    label, so a scanner cannot grow the number of series."""
    metrics = Metrics()
    async with serving(metrics=metrics) as service:
        before = await scrape(service)
        await post_event(service)
        await post_event(service, b"{not json")
        await service.client.get("/health")
        await service.client.get("/no/such/path")
        await service.client.get("/another/unknown")
        after = await scrape(service)
    requests = f"{PREFIX}http_requests_total"
    assert after.delta(before, requests, route="/events/generate", method="POST", status="201") == 1
    assert after.delta(before, requests, route="/events/generate", method="POST", status="400") == 1
    assert after.delta(before, requests, route="/health", method="GET", status="200") == 1
    assert after.delta(before, requests, route="unmatched", method="GET", status="404") == 2
    # The first scrape itself was counted before the second was taken.
    assert after.value(requests, route="/metrics", method="GET", status="200") == 1
    duration = f"{PREFIX}http_request_duration_seconds_count"
    assert after.delta(before, duration, route="/events/generate") == 2


async def test_acknowledged_publish_is_timed_from_hand_over_to_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """publish_latency_seconds measures the wait for the publisher's answer, in virtual time."""
    metrics = Metrics()
    async with serving(answer=never_answer, metrics=metrics) as service, trio.open_nursery() as n:
        n.start_soon(post_event, service)
        await trio.sleep(0.3)
        [request] = service.publish_requests
        request.reply.send_nowait(Placed(partition=0, offset=1))
    result = Scrape.parse(metrics.exposition().decode())
    assert result.value(f"{PREFIX}publish_latency_seconds_count") == 1
    assert result.value(f"{PREFIX}publish_latency_seconds_sum") == pytest.approx(0.3)
    assert result.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.25") == 0
    assert result.value(f"{PREFIX}publish_latency_seconds_bucket", le="0.5") == 1


async def test_publish_failures_are_counted_by_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """timeout (no answer by the deadline), refused (non-retriable), queue_full (inbox full)
    and unavailable (publisher starting) are each counted once per failed POST."""

    def refuse(request: PublishRequest) -> PublishOutcome:
        return PublishFailed(reason="too large", retriable=False)

    reasons = f"{PREFIX}publish_failures_total"
    timeout_metrics, refused_metrics, full_metrics = Metrics(), Metrics(), Metrics()
    async with serving(answer=never_answer, metrics=timeout_metrics) as service:
        assert (await post_event(service)).status_code == 503
        assert trio.current_time() == pytest.approx(PUBLISH_TIMEOUT)
        service.health.report("publisher", ActorState.STARTING)
        assert (await post_event(service)).status_code == 503
    async with serving(answer=refuse, metrics=refused_metrics) as service:
        assert (await post_event(service)).status_code == 500
    async with serving(answer=None, publish_buffer=0, metrics=full_metrics) as service:
        assert (await post_event(service)).status_code == 503
    timeouts = Scrape.parse(timeout_metrics.exposition().decode())
    assert timeouts.value(reasons, reason="timeout") == 1
    assert timeouts.value(reasons, reason="unavailable") == 1
    assert timeouts.value(f"{PREFIX}publish_latency_seconds_count") == 0
    refused = Scrape.parse(refused_metrics.exposition().decode())
    assert refused.value(reasons, reason="refused") == 1
    assert refused.value(reasons, reason="timeout") == 0
    full = Scrape.parse(full_metrics.exposition().decode())
    assert full.value(reasons, reason="queue_full") == 1


# --- trace context -----------------------------------------------------------------------------


async def test_traceparent_and_request_id_reach_the_publish_request_and_the_answer() -> None:
    """A valid traceparent and X-Request-Id go to the publisher; the id comes back."""
    async with serving() as service:
        response = await post_event(
            service, traceparent=TRACEPARENT, **{"X-Request-Id": "client-7"}
        )
        [request] = service.publish_requests
    assert response.status_code == 201
    assert response.headers["X-Request-Id"] == "client-7"
    assert request.trace.traceparent == TRACEPARENT
    assert request.trace.request_id == "client-7"


@pytest.mark.parametrize(
    ("traceparent", "request_id"),
    [
        ("00-zz-not-hex", "has space"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x" * 200),
        ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"', '{"forged":1}'),
    ],
)
async def test_malformed_trace_headers_are_ignored_never_an_error(
    traceparent: str, request_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed values still get 201; the traceparent is dropped, the id replaced, and
    neither value reaches a log record."""
    caplog.set_level(logging.DEBUG)
    async with serving() as service:
        response = await post_event(
            service, traceparent=traceparent, **{"X-Request-Id": request_id}
        )
        [request] = service.publish_requests
    assert response.status_code == 201
    assert request.trace.traceparent is None
    assert request.trace.request_id == response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    logged = [repr(record.__dict__) for record in caplog.records]
    assert logged, "the access log line was not captured"
    assert not [line for line in logged if traceparent in line or request_id in line]


async def test_every_answer_carries_a_request_id() -> None:
    """Errors and other routes answer with X-Request-Id too, new for each request."""
    async with serving() as service:
        missing = await service.client.get("/no/such/path")
        invalid = await service.client.post(
            "/events/generate", data=new_event_body(userId=""), headers=JSON
        )
        health = await service.client.get("/health", headers={"X-Request-Id": "probe-1"})
    ids = [answer.headers.get("X-Request-Id") for answer in (missing, invalid)]
    assert all(ids)
    assert ids[0] != ids[1]
    assert health.headers["X-Request-Id"] == "probe-1"
