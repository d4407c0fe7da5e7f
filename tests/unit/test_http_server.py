"""The server wiring (actors.http.server): connection lifetimes, the connection cap, accept
errors and the ASGI guard, on virtual time.

The connection tests run the real hypercorn protocol code on a loopback socket. Virtual time is
frozen (``autojump_threshold = inf``) while bytes travel, as in test_supervisor, and let jump
only while the client waits for the server to close, so the times asserted are exact.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing
from http_wire import exchange, frozen
from quart import Response
from quart_trio import QuartTrio

from actors.http.server import (
    REFUSAL,
    ConnectionSlots,
    ServerGuard,
    ServerOptions,
    _BoundedListener,
    serve_http,
)

KEEP_ALIVE = 5.0
GRACEFUL = 3.0


def ping_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    @app.get("/endless")
    async def endless() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65536

        return Response(chunks(), mimetype="application/octet-stream")

    return app


@attrs.define
class Client:
    """Opens loopback connections to one server and closes them all at the end."""

    clock: trio.testing.MockClock
    port: int
    streams: list[trio.SocketStream] = attrs.field(factory=list)

    async def connect(self) -> trio.SocketStream:
        with frozen(self.clock):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.streams.append(stream)
        return stream

    async def close_all(self) -> None:
        with frozen(self.clock):
            for stream in self.streams:
                await stream.aclose()


def options(**overrides: Any) -> ServerOptions:
    defaults: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "keep_alive_timeout": KEEP_ALIVE,
        "max_connections": 100,
        "graceful_timeout": GRACEFUL,
    }
    return ServerOptions(**(defaults | overrides))


@contextlib.asynccontextmanager
async def served(
    clock: trio.testing.MockClock, stop: trio.Event | None = None, **overrides: Any
) -> AsyncIterator[Client]:
    """serve_http on a free loopback port until ``stop`` (or the end of the block)."""
    stop = trio.Event() if stop is None else stop
    async with trio.open_nursery() as nursery:
        with frozen(clock):
            [bind] = await nursery.start(serve_http, ping_app(), options(**overrides), stop.wait)
        client = Client(clock, int(bind.rsplit(":", 1)[1]))
        try:
            yield client
        finally:
            stop.set()
            await client.close_all()


async def seconds_until_closed(stream: trio.SocketStream) -> float:
    """Virtual seconds until the server closes ``stream`` (anything it still sends is dropped)."""
    start = trio.current_time()
    with trio.fail_after(3600):
        while await stream.receive_some():
            pass
    return trio.current_time() - start


GET_PING = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"
SEND_TIMEOUT = 7.0


# --- how long connections live -----------------------------------------------------------------


async def test_idle_keep_alive_connection_closes_after_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A keep-alive connection that served a request is closed exactly KEEP_ALIVE later."""
    async with served(autojump_clock) as client:
        stream = await client.connect()
        response = await exchange(autojump_clock, stream, GET_PING)
        assert response.startswith(b"HTTP/1.1 200")
        assert await seconds_until_closed(stream) == KEEP_ALIVE


async def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A response that never ends, to a client that reads nothing: once the socket buffers
    are full the server's write waits, and SEND_TIMEOUT later the server closes the
    connection (what the buffers held still arrives, then the end), with one warning. Without
    the timeout the endless body would keep the connection open for good."""
    caplog.set_level(logging.WARNING, logger="actors.http.server")
    async with served(autojump_clock, send_timeout=SEND_TIMEOUT) as client:
        stream = await client.connect()
        with frozen(autojump_clock):
            await stream.send_all(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(SEND_TIMEOUT + 1)
        received = 0
        with frozen(autojump_clock):
            while chunk := await stream.receive_some():
                received += len(chunk)
                assert received < 16 * 2**20, "the connection is still being written to"
    assert received > 65536
    assert [record.getMessage() for record in caplog.records] == [
        "http connection closed: the client stopped reading"
    ]


async def test_second_request_restarts_the_keep_alive_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each answered request arms the timer again; the connection serves until idle."""
    async with served(autojump_clock) as client:
        stream = await client.connect()
        await exchange(autojump_clock, stream, GET_PING)
        await trio.sleep(KEEP_ALIVE - 1)
        second = await exchange(autojump_clock, stream, GET_PING)
        assert second.startswith(b"HTTP/1.1 200")
        assert await seconds_until_closed(stream) == KEEP_ALIVE


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"GET /ping HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_and_http_10_close_right_after_the_response(
    autojump_clock: trio.testing.MockClock, request_bytes: bytes
) -> None:
    """``Connection: close`` and HTTP/1.0 get their answer, then the server closes at once."""
    async with served(autojump_clock) as client:
        stream = await client.connect()
        response = await exchange(autojump_clock, stream, request_bytes)
        assert b" 200 " in response.split(b"\r\n")[0]
        assert await seconds_until_closed(stream) == 0


async def test_idle_http2_connection_closes_after_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An HTTP/2 connection (prior knowledge) is closed KEEP_ALIVE after its last stream."""
    async with served(autojump_clock) as client:
        stream = await client.connect()
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        stream_id = client.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", "/ping"), (":scheme", "http"), (":authority", "t")]
        client.send_headers(stream_id, headers, end_stream=True)
        status = None
        with frozen(autojump_clock):
            await stream.send_all(client.data_to_send())
            ended = False
            while not ended:
                data = await stream.receive_some()
                assert data, "closed before the response ended"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                await stream.send_all(client.data_to_send())
        assert status == b"200"
        assert await seconds_until_closed(stream) == KEEP_ALIVE


async def test_shutdown_does_not_wait_for_idle_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With an idle keep-alive connection open, serve_http closes it and returns as soon as it
    is told to stop, long before its keep-alive or graceful timeout."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with frozen(autojump_clock):
            [bind] = await nursery.start(
                serve_http,
                ping_app(),
                options(keep_alive_timeout=60, graceful_timeout=30),
                stop.wait,
            )
        client = Client(autojump_clock, int(bind.rsplit(":", 1)[1]))
        stream = await client.connect()
        await exchange(autojump_clock, stream, GET_PING)
        start = trio.current_time()
        stop.set()
    stopped = trio.current_time() - start
    assert await seconds_until_closed(stream) == 0
    await client.close_all()
    assert stopped == 0


# --- the connection cap ------------------------------------------------------------------------


async def test_connections_over_the_cap_get_503_and_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two connections open and a cap of two, a third gets the JSON 503 and is closed;
    once a client closes one, its slot is free at once and new connections are served."""
    async with served(autojump_clock, max_connections=2) as client:
        held = [await client.connect() for _ in range(2)]
        for stream in held:
            assert (await exchange(autojump_clock, stream, GET_PING)).startswith(b"HTTP/1.1 200")
        extra = await client.connect()
        refusal = await exchange(autojump_clock, extra, GET_PING)
        assert refusal == REFUSAL
        head, _, body = refusal.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body)["error"] == "too_many_connections"
        assert await seconds_until_closed(extra) == 0
        await extra.aclose()
        await held[0].aclose()
        closed = trio.current_time()
        statuses = []
        for _ in range(100):  # the server notices the close after a moment of real time
            stream = await client.connect()
            statuses.append((await exchange(autojump_clock, stream, GET_PING)).split(b" ")[1])
            await stream.aclose()
            if statuses[-1] == b"200":
                break
            await trio.sleep(0.01)
        assert statuses[-1] == b"200", statuses
        assert trio.current_time() - closed < KEEP_ALIVE  # the slot did not wait for a timer


class FailingListener:
    """A listener whose every accept fails with EMFILE, as when descriptors run out."""

    def __init__(self) -> None:
        self.attempts = 0

    async def accept(self) -> Any:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        raise OSError(errno.EMFILE, "Too many open files")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_errors_are_logged_at_most_once_a_second(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE from accept is retried every 0.1 s and logged at most once a second, with how
    many repeats were held back."""
    failing = FailingListener()
    times: list[float] = []

    class Clocked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            times.append(trio.current_time())

    handler = Clocked()
    logging.getLogger("actors.http.server").addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            listener = _BoundedListener(failing, ConnectionSlots(10), nursery)  # type: ignore[arg-type]
            with caplog.at_level(logging.WARNING), trio.move_on_after(5):
                await listener.accept()
    finally:
        logging.getLogger("actors.http.server").removeHandler(handler)
    records = [r for r in caplog.records if r.name == "actors.http.server"]
    assert [r.getMessage() for r in records] == ["http accept failed; retrying"] * 5
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(times))
    assert failing.attempts == pytest.approx(50, abs=1)  # every 0.1 s
    assert not any(r.exc_info for r in records)


# --- the ASGI guard ----------------------------------------------------------------------------


def http_scope(path: str = "/ping") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
        "extensions": {},
    }


class FakeServer:
    """The part of hypercorn the guard is about: during the app's last ``send`` it queues
    ``http.disconnect`` for the app, then does more work at a checkpoint (arming the
    keep-alive timer, or closing the socket)."""

    def __init__(self) -> None:
        self.to_app, self.app_inbox = trio.open_memory_channel[dict[str, Any]](10)
        self.sent: list[dict[str, Any]] = []
        self.bookkeeping_done = False

    async def receive(self) -> dict[str, Any]:
        return await self.app_inbox.receive()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await self.to_app.send({"type": "http.disconnect"})
            for _ in range(3):  # can_read.set(), send(Updated(idle=True)), idle_task's lock
                await trio.lowlevel.checkpoint()
            self.bookkeeping_done = True


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "bare"])
async def test_guard_lets_the_server_finish_its_last_send(guarded: bool) -> None:
    """quart-trio cancels its request task when it receives http.disconnect; through the guard
    the server's work inside the last send completes anyway (bare, it is cancelled: the bug)."""
    server = FakeServer()
    server.to_app.send_nowait({"type": "http.request", "body": b"", "more_body": False})
    app = ping_app()
    asgi = ServerGuard(app) if guarded else app
    with trio.fail_after(5):
        await asgi(http_scope(), server.receive, server.send)
    assert [m["type"] for m in server.sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ][: len(server.sent)]
    assert server.bookkeeping_done is guarded


async def test_websocket_upgrade_is_denied_with_json_404(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WebSocket scope never reaches quart: a JSON 404 through the denial response."""
    received = iter([{"type": "websocket.connect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return next(received)

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    scope = http_scope("/anything") | {
        "type": "websocket",
        "extensions": {"websocket.http.response": {}},
    }
    with caplog.at_level(logging.INFO):
        await ServerGuard(ping_app())(scope, receive, send)
    start, body = sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 404
    assert (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"])["error"] == "not_found"
    assert not any(r.exc_info for r in caplog.records)


async def test_websocket_without_denial_extension_is_closed() -> None:
    """Where the server cannot send a denial response, the upgrade is closed instead."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    await ServerGuard(ping_app())(http_scope() | {"type": "websocket"}, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"]
