"""The HTTP actor: a quart-trio app, served by hypercorn's protocol code behind our own accept
loop (:mod:`actors.http.server`).

It holds no events itself. ``POST /events/generate`` builds the event and asks the publisher
(and, with an ``Idempotency-Key``, the idempotency ledger first), ``GET /events/processed``
asks the store, ``GET /health`` (and ``/health/live``, ``/health/ready``) reads the shared
health record, ``GET /metrics`` the service's metrics. The routes that read single
events, pages and the live stream are in :mod:`actors.http.event_routes`. Every
answer the app gives, errors included, is JSON; no stack trace ever reaches a client (what h11
rejects before the app sees a request gets hypercorn's empty-bodied 400/431/501, see README).

A caller that must answer fast does not queue behind a full mailbox: a full publisher inbox or
an unconfirmed publish becomes ``503`` with ``Retry-After`` at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import attrs
import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestTimeout

from actors.domain.events import (
    EventFilter,
    InvalidRequest,
    Limits,
    Problem,
    UserEvent,
    event_from_request,
    restamp,
)
from actors.domain.messages import (
    Claimed,
    EventsPage,
    InFlight,
    KeyReused,
    LedgerCommand,
    Placed,
    PublisherCommand,
    PublishFailed,
    PublishOutcome,
    PublishRequest,
    ReadEvents,
    Replay,
    StoreCommand,
)
from actors.domain.trace import REQUEST_ID_HEADER, TRACEPARENT_HEADER, TraceContext
from actors.http.answers import COMPACT, error_response, invalid_request, json_response
from actors.http.batch import BatchOptions, BatchPublisher, TooLarge
from actors.http.event_routes import (
    STORE_QUERY_SECONDS,
    StoreUnavailable,
    add_event_routes,
    paged_listing,
)
from actors.http.idempotent import claim_key, fingerprint, settle_key
from actors.http.openapi import openapi_document
from actors.http.queries import idempotency_key, is_plain_listing, listing_query
from actors.http.server import ServerOptions, serve_http
from actors.http.stream import KEEP_ALIVE_SECONDS
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields
from actors.runtime.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "COMPACT",
    "STORE_QUERY_SECONDS",
    "HttpOptions",
    "ServerOptions",
    "create_app",
    "error_response",
    "json_response",
    "run_http",
]

log = logging.getLogger(__name__)
access_log = logging.getLogger("actors.http.access")

#: Most JSON bytes a listing asks the store for at once, and so about the size of each chunk
#: of the response: small enough that a page is built in microseconds, large enough that
#: 100,000 events take a few hundred round trips.
LISTING_CHUNK_BYTES = 128 * 1024

_JSON_TYPES = ("application/json",)


@attrs.frozen(kw_only=True)
class HttpOptions:
    """What the routes enforce; the supervisor derives it from the settings, times in seconds.

    ``body_read_timeout`` bounds how long reading a request body may take before it is 408.
    """

    limits: Limits
    publish_timeout: float
    max_body_bytes: int
    max_listings: int
    body_read_timeout: float
    batch: BatchOptions
    #: Seconds after which an event stream is closed (the client resumes it).
    stream_lifetime: float
    #: Seconds between keep-alive comments on an idle event stream (15 s, not a setting).
    stream_keep_alive: float = KEEP_ALIVE_SECONDS


def create_app(
    *,
    publish: trio.MemorySendChannel[PublisherCommand],
    store: trio.MemorySendChannel[StoreCommand],
    health: Health,
    options: HttpOptions,
    ledger: trio.MemorySendChannel[LedgerCommand] | None = None,
    stopping: trio.Event | None = None,
    metrics: Metrics | None = None,
) -> QuartTrio:
    """The ASGI app; it reaches the other actors only through the channel ends given here.

    ``ledger`` is the idempotency ledger's inbox (without one, a request carrying an
    ``Idempotency-Key`` gets 503); ``stopping`` is set when the service shuts down, which ends
    every event stream at once. Every request is counted and timed in ``metrics``, and so is
    each publish outcome.
    """
    app = QuartTrio(__name__)
    metrics = metrics or Metrics()

    @app.before_request
    async def begin_request() -> None:
        """Registered first, so every request has its start time and trace context."""
        g.started = trio.current_time()
        g.trace = TraceContext.from_http(
            request.headers.get(TRACEPARENT_HEADER), request.headers.get(REQUEST_ID_HEADER)
        )

    # NOTE: the size limit is enforced while reading (_read_body), not by quart's
    # MAX_CONTENT_LENGTH, which answers 413 before the body has arrived (see _read_body).
    app.config["MAX_CONTENT_LENGTH"] = None
    retry_after = {"Retry-After": str(max(1, math.ceil(options.publish_timeout)))}
    listings = _Listings(options.max_listings)
    batches = BatchPublisher(
        publish=publish,
        limits=options.limits,
        options=options.batch,
        publish_timeout=options.publish_timeout,
        ledger=ledger,
    )
    add_event_routes(
        app,
        store=store,
        limits=options.limits,
        stopping=trio.Event() if stopping is None else stopping,
        keep_alive=options.stream_keep_alive,
        stream_lifetime=options.stream_lifetime,
    )

    async def publish_answer(event: UserEvent) -> tuple[Response, Replay | None]:
        """Publish ``event``: the answer, and what an idempotent repeat must replay (``None``
        unless it is a 201)."""
        if health.state("publisher").value is ActorState.STARTING:
            # Not yet connected (or never, with no broker): say so now rather than at the
            # deadline. Requests queued meanwhile would only expire in the inbox.
            reason = health.detail("publisher") or "the publisher is starting"
            metrics.publish_failed("unavailable")
            return error_response(503, "publish_unavailable", reason, headers=retry_after), None
        handed_over = trio.current_time()
        outcome = await _publish(publish, event, options.publish_timeout, g.trace)
        _record_publish(metrics, outcome, trio.current_time() - handed_over)
        match outcome:
            case Placed():
                created = Replay(event_id=event.event_id, timestamp=event.timestamp)
                return json_response(event.to_json(), 201), created
            case PublishFailed(retriable=True, reason=reason):
                response = error_response(503, "publish_unavailable", reason, headers=retry_after)
                return response, None
            case PublishFailed(reason=reason):
                return error_response(500, "publish_failed", reason), None
        raise AssertionError(f"unexpected publish outcome {outcome!r}")

    async def publish_once(key: str, body: bytes, event: UserEvent) -> Response:
        """Publish unless ``key`` was answered with a 201 for this body (replay that)."""
        if ledger is None:
            return error_response(
                503, "idempotency_unavailable", "idempotency keys are not available"
            )
        claim = await claim_key(ledger, key, fingerprint(body))
        match claim:
            case Claimed():
                # NOTE: shielded (and bounded by the publish deadline) so that the outcome is
                # recorded even if the client leaves: a publish that reached the broker must
                # be remembered, or the client's retry would publish the event twice.
                with trio.CancelScope(shield=True):
                    response, created = await publish_answer(event)
                    await settle_key(ledger, key, created)
                return response
            case Replay(event_id=event_id, timestamp=timestamp):
                replayed = restamp(event, event_id=event_id, timestamp=timestamp)
                return json_response(replayed.to_json(), 201, {"Idempotent-Replayed": "true"})
            case InFlight():
                return error_response(
                    409,
                    "request_in_progress",
                    "a request with this Idempotency-Key is still being handled",
                    headers=retry_after,
                )
            case KeyReused():
                return error_response(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request body",
                )
        return error_response(
            503,
            "idempotency_unavailable",
            "too many idempotent requests in flight",
            headers={"Retry-After": "1"},
        )

    @app.post("/events/generate")
    async def generate_event() -> Response:
        body = await _read_body(options.max_body_bytes, options.body_read_timeout)
        if body is None:
            return error_response(
                413,
                "request_entity_too_large",
                f"the body must be at most {options.max_body_bytes} bytes",
            )
        if request.mimetype not in _JSON_TYPES and not request.mimetype.endswith("+json"):
            return error_response(
                415, "unsupported_media_type", "Content-Type must be application/json"
            )
        header_problems: list[Problem] = []
        key = idempotency_key(request.headers.getlist("Idempotency-Key"), header_problems)
        try:
            event = event_from_request(body, options.limits)
        except InvalidRequest as invalid:
            problems = [attrs.asdict(problem) for problem in [*header_problems, *invalid.problems]]
            return error_response(
                400, "invalid_request", "the event is not valid", problems=problems
            )
        if header_problems:
            return invalid_request(InvalidRequest(header_problems), "the request is not valid")
        if key is not None:
            return await publish_once(key, body, event)
        response, _ = await publish_answer(event)
        return response

    @app.post("/events/batch")
    async def publish_batch() -> Response:
        body = await _read_body(options.batch.max_bytes, options.body_read_timeout)
        if body is None:
            return error_response(
                413,
                "request_entity_too_large",
                f"the body must be at most {options.batch.max_bytes} bytes",
            )
        if request.mimetype not in _JSON_TYPES and not request.mimetype.endswith("+json"):
            return error_response(
                415, "unsupported_media_type", "Content-Type must be application/json"
            )
        try:
            items = batches.parse(body)
        except InvalidRequest as invalid:
            problems = [attrs.asdict(problem) for problem in invalid.problems]
            return error_response(
                400, "invalid_request", "the batch is not valid", problems=problems
            )
        except TooLarge as too_large:
            return error_response(413, "request_entity_too_large", str(too_large))
        unavailable = None
        if health.state("publisher").value is ActorState.STARTING:
            unavailable = health.detail("publisher") or "the publisher is starting"
        trace = g.get("trace") or TraceContext.from_http(None, None)
        answer = await batches.publish(items, unavailable, trace)
        headers = dict(retry_after) if answer.retry_later else {}
        if answer.replayed:
            headers["Idempotent-Replayed"] = "true"
        return json_response(answer.body, answer.status, headers=headers or None)

    @app.get("/events/processed")
    async def processed_events() -> Response:
        wanted = EventFilter()
        start = None
        if not is_plain_listing(arguments := request.args.to_dict(flat=False)):
            try:
                query = listing_query(arguments, options.limits)
            except InvalidRequest as invalid:
                return invalid_request(invalid, "the listing parameters are not valid")
            if query.limit is not None:
                return await paged_listing(store, query, query.limit)
            wanted, start = query.wanted, query.start
        if listings.full:
            return error_response(
                503,
                "too_many_listings",
                f"at most {options.max_listings} full listings are sent at once; retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            first = await _read_page(store, start, wanted=wanted)
        except StoreUnavailable:
            return error_response(
                503,
                "store_unavailable",
                "the store did not answer in time",
                headers={"Retry-After": "1"},
            )
        body = _listing_chunks(store, first, wanted)
        return Response(listings.open(body), mimetype="application/json")

    @app.get("/health")
    async def health_check() -> Response:
        return json_response(health.snapshot(), 200 if health.healthy else 503)

    @app.get("/health/live")
    async def liveness() -> Response:
        """200 while the process serves and no actor is being given up on (restart me if not)."""
        return json_response({"status": "live" if health.live else "failed"}, _status(health.live))

    @app.get("/health/ready")
    async def readiness() -> Response:
        """200 only when every actor runs and the consumer holds its assignment (as /health)."""
        return json_response(
            {"status": "ready" if health.healthy else "not ready"}, _status(health.healthy)
        )

    @app.get("/metrics")
    async def metrics_exposition() -> Response:
        return Response(metrics.exposition(), status=200, content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(
            openapi_document(
                options.limits,
                max_body_bytes=options.max_body_bytes,
                max_batch_events=options.batch.max_events,
                max_batch_bytes=options.batch.max_bytes,
            ),
            200,
        )

    @app.after_request
    async def log_request(response: Response) -> Response:
        if request.method == "OPTIONS" and response.status_code == 200:
            # quart's automatic answer is an empty text/html 200; the Allow header is the
            # whole answer, so say so with 204.
            response = Response(b"", status=204, headers={"Allow": response.headers["Allow"]})
        trace: TraceContext = g.get("trace") or TraceContext.from_http(None, None)
        response.headers["X-Request-Id"] = str(trace.request_id)
        rule = request.url_rule
        metrics.http_request(
            route=rule.rule if rule is not None else "unmatched",
            method=request.method,
            status=response.status_code,
            seconds=trio.current_time() - g.get("started", trio.current_time()),
        )
        # NOTE: one JSON line per answered request costs a good part of a POST's CPU, so
        # routine successes are logged at DEBUG; refusals and errors stay visible at INFO.
        log_fields(
            access_log,
            logging.DEBUG if response.status_code < 400 else logging.INFO,
            "http request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            requestId=trace.request_id,
        )
        return response

    @app.before_request
    async def refuse_ambiguous_framing() -> Response | None:
        """RFC 9112 section 6.1: a request with both Transfer-Encoding and Content-Length may
        be framed differently by a proxy in front of us (request smuggling); answer 400 and
        close the connection instead of reading a next request from it."""
        if "Transfer-Encoding" not in request.headers or "Content-Length" not in request.headers:
            return None
        with contextlib.suppress(RequestTimeout):
            await _read_body(options.max_body_bytes, options.body_read_timeout)
        problem = "must not carry both Content-Length and Transfer-Encoding"
        return error_response(
            400,
            "invalid_request",
            "the request is not valid",
            headers={"Connection": "close"},
            problems=[{"field": "headers", "message": problem}],
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if not isinstance(error, RequestTimeout):  # a body that timed out is not read again
            try:
                await _read_body(options.max_body_bytes, options.body_read_timeout)
            except RequestTimeout as timeout:
                error = timeout
        name = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, name, error.description or name)
        if isinstance(error, RequestTimeout):
            response.headers["Connection"] = "close"  # the rest of the body may still come
        if error.code == 405 and (allowed := error.get_response().headers.get("Allow")):
            response.headers["Allow"] = allowed
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("unhandled error in request handler")
        return error_response(500, "internal_error", "the service failed to handle the request")

    return app


#: How much of a body beyond the limit is read (and dropped) before answering 413.
OVERSIZED_BODY_DRAIN_BYTES = 1024 * 1024


async def _read_body(limit: int, timeout: float) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes.

    Every answer is sent only after the body was read, even when it is not used or too large
    (up to :data:`OVERSIZED_BODY_DRAIN_BYTES` beyond the limit).

    # NOTE: hypercorn 0.18 closes a connection answered before its request body was read to
    # the end (H11Protocol._maybe_recycle cannot start the next cycle), so an early answer
    # costs the client its keep-alive connection; quart's own MAX_CONTENT_LENGTH answers early
    # in exactly that way.

    Raises:
        RequestTimeout: the body did not arrive within ``timeout`` seconds.
    """
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout) as reading:
        async for chunk in request.body:
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit + OVERSIZED_BODY_DRAIN_BYTES:
                break
    if reading.cancelled_caught:
        raise RequestTimeout()
    return b"".join(chunks) if size <= limit else None


def _status(ok: bool) -> int:
    return 200 if ok else 503


def _record_publish(metrics: Metrics, outcome: PublishOutcome, seconds: float) -> None:
    """Count a publish outcome; time it from the hand-over when the broker acknowledged it."""
    if isinstance(outcome, Placed):
        metrics.publish_acknowledged(seconds)
    else:
        metrics.publish_failed(outcome.kind)


async def _publish(
    publish: trio.MemorySendChannel[PublisherCommand],
    event: UserEvent,
    timeout: float,
    trace: TraceContext,
) -> PublishOutcome:
    """Hand the event to the publisher and wait for the broker's answer, at most ``timeout``."""
    send, receive = trio.open_memory_channel[PublishOutcome](1)
    deadline = trio.current_time() + timeout
    try:
        publish.send_nowait(PublishRequest(event=event, deadline=deadline, reply=send, trace=trace))
    except trio.WouldBlock:
        return PublishFailed(
            reason="too many events waiting to be published", retriable=True, kind="queue_full"
        )
    with receive, trio.move_on_at(deadline):
        try:
            return await receive.receive()
        except trio.EndOfChannel:  # the publisher dropped the request without an answer
            return PublishFailed(reason="the publisher stopped", retriable=True, kind="unavailable")
    return PublishFailed(reason="the broker did not confirm the event in time", retriable=True)


async def _read_page(
    store: trio.MemorySendChannel[StoreCommand],
    start: int | None = None,
    end: int | None = None,
    *,
    wanted: EventFilter,
) -> EventsPage:
    """One page of the store, from ``start`` (default: the oldest) up to ``end`` (the newest),
    of the events ``wanted`` lets through.

    Raises:
        StoreUnavailable: no answer within :data:`STORE_QUERY_SECONDS`.
    """
    send, receive = trio.open_memory_channel[EventsPage](1)
    request = ReadEvents(
        start=start, end=end, max_bytes=LISTING_CHUNK_BYTES, wanted=wanted, reply=send
    )
    with trio.move_on_after(STORE_QUERY_SECONDS):
        await store.send(request)
        with receive:
            return await receive.receive()
    raise StoreUnavailable()


async def _listing_chunks(
    store: trio.MemorySendChannel[StoreCommand], page: EventsPage, wanted: EventFilter
) -> AsyncGenerator[bytes, None]:
    """The JSON array of the events stored when the listing began, one store page per chunk.

    Only one page is held at a time, and the store is asked again between chunks, so neither
    memory nor other requests wait for a large listing. Events evicted while the listing is
    being sent are left out.

    Raises:
        StoreUnavailable: the store stopped answering mid-listing; the response is cut off
            (the connection closes), so that a client never takes a partial array for a whole.
    """
    parts = [b"["]
    emitted = False
    while True:
        if page.events:
            parts += [b",", b",".join(page.events)] if emitted else [b",".join(page.events)]
            emitted = True
        if page.last:
            parts.append(b"]")
            yield b"".join(parts)
            return
        if parts:  # a filtered page may hold nothing
            yield b"".join(parts)
        parts = []
        page = await _read_page(store, page.next, page.end, wanted=wanted)


class _Listings:
    """The full listings being sent, so that at most ``limit`` are sent at once.

    A listing counts from the moment its body is created until it is finished, closed, or
    dropped unstarted (a client that left before the first chunk): a weak set sees all three
    without cleanup code on each path.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bodies: weakref.WeakSet[AsyncGenerator[bytes, None]] = weakref.WeakSet()

    @property
    def full(self) -> bool:
        unfinished = [body for body in self._bodies if body.ag_frame is not None]  # type: ignore[attr-defined]
        return len(unfinished) >= self._limit

    def open(self, body: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        self._bodies.add(body)
        return body


async def run_http(
    *,
    app: QuartTrio,
    options: ServerOptions,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then let in-flight requests finish
    and idle connections close within ``options.graceful_timeout`` seconds.

    Reports its real binds (``["http://127.0.0.1:3000"]``) through ``task_status``.
    """
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_http, app, options, shutdown_trigger)
        log_fields(log, logging.INFO, "http listening", binds=binds)
        task_status.started(binds)
