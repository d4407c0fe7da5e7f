"""The HTTP routes beyond the assignment's three, through quart's test client, against the real
store and idempotency ledger actors and a fake publisher."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import quart.typing
import trio
import trio.testing
from quart_trio import QuartTrio
from settings_support import default_http_options
from store_support import store_actor

from actors.domain.events import EventFilter, UserEvent, new_event
from actors.domain.messages import (
    LedgerCommand,
    Placed,
    PublishFailed,
    PublishOutcome,
    PublishRequest,
    Put,
    PutOutcome,
    ReadEvents,
    StoreCommand,
    Subscribe,
    Subscribed,
    SubscribeOutcome,
)
from actors.http.app import create_app
from actors.http.event_routes import ask_store
from actors.http.queries import decode_cursor, encode_cursor
from actors.http.stream import KEEP_ALIVE, sse_body
from actors.idempotency import run_idempotency_ledger
from actors.runtime.health import ActorState, Health
from actors.store import ProcessedEvents, StreamOptions

JSON = {"Content-Type": "application/json"}
ACTORS = ("http", "publisher", "consumer", "store", "idempotency")
BODY = json.dumps({"userId": "u1", "eventType": "LOGIN", "payload": {"n": 1}}).encode()


@attrs.define
class Service:
    app: QuartTrio
    client: quart.typing.TestClientProtocol
    store: trio.MemorySendChannel[StoreCommand]
    requests: list[PublishRequest]
    #: Set to let the fake publisher answer; it answers with ``outcomes`` in turn.
    release: trio.Event
    outcomes: list[PublishOutcome]


async def fake_publisher(
    inbox: trio.MemoryReceiveChannel[PublishRequest], service: Service
) -> None:
    async for request in inbox:
        service.requests.append(request)
        await service.release.wait()
        outcome = service.outcomes.pop(0) if service.outcomes else Placed(partition=0, offset=1)
        request.reply.send_nowait(outcome)


@contextlib.asynccontextmanager
async def serving(
    *, released: bool = True, streams: StreamOptions | None = None, **options: Any
) -> AsyncIterator[Service]:
    publish_send, publish_receive = trio.open_memory_channel[PublishRequest](8)
    store_send, store_receive = trio.open_memory_channel[StoreCommand](8)
    ledger_send, ledger_receive = trio.open_memory_channel[LedgerCommand](8)
    health = Health(ACTORS)
    for actor in ACTORS:
        health.report(actor, ActorState.RUNNING)
    app = create_app(
        publish=publish_send,
        store=store_send,
        health=health,
        options=default_http_options(publish_timeout=2.0, **options),
        ledger=ledger_send,
    )
    service = Service(app, app.test_client(), store_send, [], trio.Event(), [])
    if released:
        service.release.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(store_actor(store_receive, health, streams=streams or StreamOptions()))
        await nursery.start(
            functools.partial(
                run_idempotency_ledger, inbox=ledger_receive, health=health, max_keys=10, ttl=60
            )
        )
        nursery.start_soon(fake_publisher, publish_receive, service)
        yield service
        nursery.cancel_scope.cancel()


async def post(service: Service, body: bytes = BODY, key: str | None = "key-1") -> Any:
    headers = JSON if key is None else JSON | {"Idempotency-Key": key}
    return await service.client.post("/events/generate", data=body, headers=headers)


async def store_events(
    store: trio.MemorySendChannel[StoreCommand], events: list[UserEvent]
) -> None:
    for offset, event in enumerate(events):
        send, receive = trio.open_memory_channel[PutOutcome](1)
        await store.send(Put(event=event, source=Placed(partition=1, offset=offset), reply=send))
        await receive.receive()


def make_event(user_id: str = "u1", event_type: str = "LOGIN") -> UserEvent:
    return new_event(user_id=user_id, event_type=event_type, payload={})


# --- Idempotency-Key -------------------------------------------------------------------------


async def test_a_repeated_key_replays_the_201_and_publishes_nothing() -> None:
    """Three POSTs with one key and body: one publish, three identical 201 bodies, the
    repeats marked Idempotent-Replayed."""
    async with serving() as service:
        answers = [await post(service) for _ in range(3)]
        bodies = [await answer.get_data() for answer in answers]
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert len(service.requests) == 1
    assert bodies == [service.requests[0].event.encoded] * 3
    assert [answer.headers.get("Idempotent-Replayed") for answer in answers] == [
        None,
        "true",
        "true",
    ]


async def test_a_repeat_while_the_first_is_in_flight_is_409_with_retry_after() -> None:
    """While the first keyed POST waits for the broker, a repeat gets 409 + Retry-After."""
    async with serving(released=False) as service, trio.open_nursery() as nursery:
        first: list[Any] = []

        async def send_first() -> None:
            first.append(await post(service))

        nursery.start_soon(send_first)
        await trio.testing.wait_all_tasks_blocked()
        repeat = await post(service)
        service.release.set()
    assert repeat.status_code == 409
    assert repeat.headers["Retry-After"] == "2"
    assert (await repeat.get_json())["error"] == "request_in_progress"
    assert first[0].status_code == 201
    assert len(service.requests) == 1


async def test_the_same_key_with_another_body_is_422() -> None:
    """A different body under a key already used is refused and not published."""
    async with serving() as service:
        assert (await post(service)).status_code == 201
        other = await post(service, BODY.replace(b'"n": 1', b'"n": 2'))
    assert other.status_code == 422
    assert (await other.get_json())["error"] == "idempotency_key_reused"
    assert len(service.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [PublishFailed(reason="down", retriable=True), PublishFailed(reason="no", retriable=False)],
    ids=["503", "500"],
)
async def test_a_failed_first_attempt_is_not_remembered(failure: PublishFailed) -> None:
    """After a 503 or 500, the same key and body is a new attempt: published, 201, fresh."""
    async with serving() as service:
        service.outcomes.append(failure)
        first = await post(service)
        retry = await post(service)
    assert first.status_code in {500, 503}
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry.headers
    assert len(service.requests) == 2


async def test_different_keys_are_different_events() -> None:
    """Two keys with one body are two events."""
    async with serving() as service:
        first, second = await post(service, key="a"), await post(service, key="b")
    assert (await first.get_json())["eventId"] != (await second.get_json())["eventId"]
    assert len(service.requests) == 2


@pytest.mark.parametrize(
    "key",
    ["x" * 256, "has space", "é-not-ascii", "tab\tinside"],
    ids=["long", "space", "non-ascii", "tab"],
)
async def test_an_invalid_key_is_400_naming_the_header(key: str) -> None:
    """Keys that are not 1-255 visible ASCII characters get a 400 about Idempotency-Key."""
    async with serving() as service:
        answer = await service.client.post(
            "/events/generate",
            data=BODY,
            headers=JSON | {"Idempotency-Key": key.encode().decode("latin-1")},
        )
    assert answer.status_code == 400
    problems = (await answer.get_json())["problems"]
    assert [problem["field"] for problem in problems] == ["Idempotency-Key"]
    assert service.requests == []


async def test_an_invalid_key_and_an_invalid_body_are_reported_together() -> None:
    """Every problem at once: the header's and the body's."""
    async with serving() as service:
        answer = await post(service, b'{"userId": ""}', key="x" * 300)
    fields = [problem["field"] for problem in (await answer.get_json())["problems"]]
    assert answer.status_code == 400
    assert fields == ["Idempotency-Key", "userId", "eventType"]


async def test_a_post_without_a_key_is_unchanged() -> None:
    """Without the header every POST publishes a new event."""
    async with serving() as service:
        answers = [await post(service, key=None) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [201, 201]
    assert len(service.requests) == 2


# --- GET /events/{eventId} -------------------------------------------------------------------


async def test_event_by_id_is_200_with_partition_and_offset() -> None:
    """A stored event: 200 with the event and where it was read from."""
    events = [make_event(f"u{n}") for n in range(3)]
    async with serving() as service:
        await store_events(service.store, events)
        answer = await service.client.get(f"/events/{events[2].event_id}")
        body = await answer.get_json()
    assert answer.status_code == 200
    assert body == {"event": events[2].to_dict(), "partition": 1, "offset": 2}


async def test_event_by_id_is_404_json_when_unknown_and_400_when_not_a_uuid() -> None:
    """An unknown UUID is a JSON 404; a non-UUID (or non-canonical) id is a 400."""
    async with serving() as service:
        unknown = await service.client.get(f"/events/{uuid.uuid4()}")
        not_uuid = await service.client.get("/events/not-a-uuid")
        upper = await service.client.get(f"/events/{str(uuid.uuid4()).upper()}")
    assert unknown.status_code == 404
    assert (await unknown.get_json())["error"] == "not_found"
    assert (not_uuid.status_code, upper.status_code) == (400, 400)
    assert (await not_uuid.get_json())["problems"][0]["field"] == "eventId"


async def test_the_fixed_routes_under_events_keep_their_answers() -> None:
    """GET /events/generate stays 405, and /events/processed is still the listing."""
    async with serving() as service:
        generate = await service.client.get("/events/generate")
        processed = await service.client.get("/events/processed")
    assert generate.status_code == 405
    assert processed.status_code == 200
    assert await processed.get_json() == []


# --- pages and filters -----------------------------------------------------------------------


def next_link(answer: Any) -> str | None:
    link = answer.headers.get("Link")
    if link is None:
        return None
    target, relation = link.split(";")
    assert relation.strip() == 'rel="next"'
    url: str = target.strip().removeprefix("<").removesuffix(">")
    return url


async def follow(service: Service, url: str | None) -> tuple[list[list[str]], list[str]]:
    """Every page from ``url`` on (ids per page), and the links followed."""
    pages, links = [], []
    while url is not None:
        answer = await service.client.get(url)
        assert answer.status_code == 200, await answer.get_data()
        pages.append([event["eventId"] for event in await answer.get_json()])
        url = next_link(answer)
        if url is not None:
            links.append(url)
    return pages, links


async def test_pages_of_limit_events_follow_each_other_by_link() -> None:
    """limit=2 over five events: pages of 2, 2, 1, each linked to the next, none after."""
    events = [make_event(f"u{n}") for n in range(5)]
    async with serving() as service:
        await store_events(service.store, events)
        pages, links = await follow(service, "/events/processed?limit=2")
    assert pages == [[e.event_id for e in events[i : i + 2]] for i in (0, 2, 4)]
    assert len(links) == 2
    assert all(parse_qs(urlsplit(link).query)["limit"] == ["2"] for link in links)


async def test_a_cursor_keeps_working_while_events_arrive_and_old_ones_go() -> None:
    """A Link taken before more events arrived (evicting the page already read) resumes
    exactly after what was read."""
    events = [make_event(f"u{n}") for n in range(4)]
    later = [make_event(f"later-{n}") for n in range(3)]
    async with serving() as service:
        await store_events(service.store, events)
        first = await service.client.get("/events/processed?limit=2")
        await store_events(service.store, later)
        pages, _ = await follow(service, next_link(first))
    assert pages == [
        [events[2].event_id, events[3].event_id],
        [e.event_id for e in later[:2]],
        [later[2].event_id],
    ]


async def test_filters_select_by_user_and_type_and_travel_in_the_link() -> None:
    """userId and eventType filter every page; the Link carries them."""
    events = [
        make_event("alice"),
        make_event("bob"),
        make_event("alice", "LOGOUT"),
        make_event("alice"),
        make_event("alice"),
    ]
    async with serving() as service:
        await store_events(service.store, events)
        pages, links = await follow(
            service, "/events/processed?limit=1&userId=alice&eventType=LOGIN"
        )
        unpaged = await service.client.get("/events/processed?userId=bob")
    assert pages == [[events[0].event_id], [events[3].event_id], [events[4].event_id]]
    assert all(parse_qs(urlsplit(link).query)["userId"] == ["alice"] for link in links)
    assert [e["eventId"] for e in await unpaged.get_json()] == [events[1].event_id]


async def test_invalid_listing_parameters_are_400_listing_each_problem() -> None:
    """limit out of range, a cursor nobody made and an unknown eventType: three problems."""
    async with serving() as service:
        answer = await service.client.get(
            "/events/processed?limit=0&after=forged&eventType=CLICK&userId="
        )
        repeated = await service.client.get("/events/processed?limit=1&limit=2")
    body = await answer.get_json()
    assert answer.status_code == 400
    assert [problem["field"] for problem in body["problems"]] == [
        "limit",
        "after",
        "userId",
        "eventType",
    ]
    assert repeated.status_code == 400


async def test_a_listing_without_its_parameters_is_the_whole_array_as_before() -> None:
    """No listing parameter (an unrelated one is ignored, as before): every event, no Link."""
    events = [make_event(f"u{n}") for n in range(3)]
    async with serving() as service:
        await store_events(service.store, events)
        answer = await service.client.get("/events/processed?cache-buster=1")
        data = await answer.get_data()
    assert data == b"[" + b",".join(event.encoded for event in events) + b"]"
    assert "Link" not in answer.headers


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    """A cursor decodes to its position; tampered or foreign strings do not."""
    assert decode_cursor(encode_cursor(123456)) == 123456
    assert decode_cursor(encode_cursor(0)) == 0
    for forged in ["", "123", "AAAAAAAAAAA=", encode_cursor(5) + "A", "!!!!!!!!!!!"]:
        assert decode_cursor(forged) is None


def test_a_page_costs_the_same_at_100k_events_as_at_1k() -> None:
    """One limit=1000 page from a cursor takes about as long with 100,000 events held as with
    1,000 (best of several runs; a cost growing with the store would be ~100x)."""

    def page_seconds(count: int) -> float:
        template = make_event("u").encoded
        store = ProcessedEvents(max_events=10**6, max_bytes=10**12)
        for n in range(count):
            store.put_if_absent(str(n), template)
        best = float("inf")
        for _ in range(20):
            started = time.perf_counter()
            store.read(count // 2 - 500, None, 2**62, limit=1000)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = page_seconds(1_000), page_seconds(100_000)
    print(f"limit=1000 page: {small * 1e6:.0f} us at 1k events, {large * 1e6:.0f} us at 100k")
    assert large < small * 5


# --- the stream's body -----------------------------------------------------------------------


async def subscribe(store: trio.MemorySendChannel[StoreCommand], wanted: EventFilter) -> Subscribed:
    send, receive = trio.open_memory_channel[SubscribeOutcome](1)
    await store.send(Subscribe(wanted=wanted, reply=send))
    outcome = await receive.receive()
    assert isinstance(outcome, Subscribed)
    return outcome


def frames(chunks: list[bytes]) -> list[tuple[int, str]]:
    """``(id, eventId)`` of each SSE message in ``chunks``."""
    found = []
    for message in b"".join(chunks).split(b"\n\n"):
        lines = dict(
            line.split(b": ", 1)
            for line in message.split(b"\n")
            if line.startswith((b"id", b"data"))
        )
        if b"id" in lines:
            found.append((int(lines[b"id"]), json.loads(lines[b"data"])["eventId"]))
    return found


async def test_stream_resumes_after_last_event_id_then_goes_live_without_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """From Last-Event-ID 1: held events 2..3 from pages, then live ones, in order, once."""
    held = [make_event(f"u{n}") for n in range(4)]
    live = [make_event(f"live-{n}") for n in range(2)]
    async with serving() as service:
        await store_events(service.store, held)

        async def read_page(start: int, end: int, wanted: EventFilter) -> Any:
            return await ask_store(
                service.store,
                lambda reply: ReadEvents(
                    start=start, end=end, max_bytes=1, wanted=wanted, reply=reply
                ),
            )

        subscription = await subscribe(service.store, EventFilter())
        body = sse_body(
            subscription=subscription,
            start=2,
            wanted=EventFilter(),
            read_page=read_page,
            stopping=trio.Event(),
        )
        chunks = [await body.__anext__() for _ in range(3)]  # opening, event 2, event 3
        await store_events(service.store, live)
        chunks += [await body.__anext__() for _ in range(2)]
        await body.aclose()
    assert frames(chunks) == [
        (2, held[2].event_id),
        (3, held[3].event_id),
        (4, live[0].event_id),
        (5, live[1].event_id),
    ]


async def test_stream_sends_a_keep_alive_every_15_s_and_ends_at_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Idle, the body yields the keep-alive comment at exactly 15 s and 30 s; setting stop ends
    it at once."""
    async with serving() as service:
        stopping = trio.Event()
        body = sse_body(
            subscription=await subscribe(service.store, EventFilter()),
            start=None,
            wanted=EventFilter(),
            read_page=None,  # type: ignore[arg-type]  # never called without a start
            stopping=stopping,
        )
        await body.__anext__()
        started = trio.current_time()
        assert await body.__anext__() == KEEP_ALIVE
        assert trio.current_time() - started == 15
        assert await body.__anext__() == KEEP_ALIVE
        assert trio.current_time() - started == 30

        async def stop_soon() -> None:
            await trio.sleep(1)
            stopping.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_soon)
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()
        assert trio.current_time() - started == 31


async def test_stream_ends_at_its_lifetime(autojump_clock: trio.testing.MockClock) -> None:
    """With a lifetime of 20 s, the body ends at 20 s (after one keep-alive at 15 s)."""
    async with serving() as service:
        body = sse_body(
            subscription=await subscribe(service.store, EventFilter()),
            start=None,
            wanted=EventFilter(),
            read_page=None,  # type: ignore[arg-type]  # never called without a start
            stopping=trio.Event(),
            lifetime=20,
        )
        started = trio.current_time()
        chunks = [chunk async for chunk in body]
    assert chunks[1:] == [KEEP_ALIVE, KEEP_ALIVE]
    assert trio.current_time() - started == 20


async def test_stream_route_answers_400_for_bad_filters_and_last_event_id() -> None:
    """A bad eventType and a Last-Event-ID that is not a number: one 400 listing both."""
    async with serving() as service:
        answer = await service.client.get(
            "/events/stream?eventType=CLICK", headers={"Last-Event-ID": "abc"}
        )
    assert answer.status_code == 400
    fields = [problem["field"] for problem in (await answer.get_json())["problems"]]
    assert fields == ["eventType", "Last-Event-ID"]


# --- the live page ---------------------------------------------------------------------------


async def test_the_live_page_and_its_files_are_served() -> None:
    """GET / is the HTML page; its script and stylesheet are served beside it."""
    async with serving() as service:
        page = await service.client.get("/")
        script = await service.client.get("/static/app.js")
        style = await service.client.get("/static/style.css")
        html = (await page.get_data()).decode()
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert '<script src="/static/app.js">' in html
    assert "/events/stream" in (await script.get_data()).decode()
    assert (script.status_code, style.status_code) == (200, 200)


async def test_a_stream_dropped_before_its_body_started_frees_its_place() -> None:
    """With MAX_STREAM_SUBSCRIBERS=1: a stream answer dropped unread (its client left before
    the first byte) does not keep the only place; the next stream gets it."""
    async with serving(streams=StreamOptions(max_subscribers=1, buffer_events=4)) as service:
        async with service.app.test_request_context("/events/stream"):
            view = service.app.view_functions["event_stream"]
            dropped = await view()
            assert dropped.status_code == 200
            del dropped
            gc.collect()
            again = await view()
        assert again.status_code == 200
        del again
        gc.collect()
