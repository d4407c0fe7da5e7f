"""How the HTTP actor's app is served: hypercorn's trio protocol code behind our own accept loop.

hypercorn parses HTTP/1.1 and HTTP/2 and runs each connection (:class:`TCPServer`); this module
owns what sits around that, because hypercorn's ``serve()`` offers no hook for it:

- a cap on open connections (:class:`ConnectionSlots`): beyond it a new connection gets a quick
  ``503`` and is closed, instead of the process running out of file descriptors;
- accept errors such as ``EMFILE`` are logged at most once a second, not ten times;
- an ASGI wrapper (:class:`ServerGuard`) that lets hypercorn finish its own bookkeeping after
  each response, so keep-alive timeouts, ``Connection: close`` and HTTP/1.0 are honoured, and
  that answers WebSocket upgrades with a JSON ``404``.

Synopsis::

    options = ServerOptions(host="127.0.0.1", port=0, keep_alive_timeout=5,
                            max_connections=768, graceful_timeout=6)
    binds = await nursery.start(serve_http, app, options, stop.wait)   # ["http://127.0.0.1:..."]
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from actors.runtime.logs import log_fields

__all__ = ["BindError", "ConnectionSlots", "ServerGuard", "ServerOptions", "serve_http"]

log = logging.getLogger("actors.http.server")
access_log = logging.getLogger("actors.http.access")

#: Accept errors that mean "out of descriptors or memory for now"; retried (trio's own list).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: Pause before accepting again after one of :data:`ACCEPT_CAPACITY_ERRNOS`.
ACCEPT_RETRY_SECONDS = 0.1

#: The most a repeated warning (accept errors, refused connections) is logged.
WARNING_INTERVAL_SECONDS = 1.0

#: Refusals answered at the same time; a connection beyond them is closed without an answer.
MAX_REFUSALS_IN_PROGRESS = 32

#: How long one refusal may take to write its 503 and see the client go.
REFUSAL_SECONDS = 1.0

#: Descriptors the service needs besides its HTTP connections (Kafka sockets, wake-up pipes,
#: refusals in progress, log files), with room to spare.
RESERVED_DESCRIPTORS = 128

_REFUSAL_BODY = json.dumps(
    {"error": "too_many_connections", "message": "the service has too many open connections"},
    separators=(",", ":"),
).encode()

#: The whole answer to a connection over the cap: written before its request is read.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _REFUSAL_BODY
)


@attrs.frozen(kw_only=True)
class ServerOptions:
    """Where to listen and how long connections may live; times in seconds."""

    host: str
    port: int
    keep_alive_timeout: float
    max_connections: int
    graceful_timeout: float
    #: How long one write to a client may wait for it to read before the connection is closed.
    send_timeout: float = 30.0


class RateLimitedWarning:
    """A warning logged at most once per ``interval``, with how many were held back.

    Synopsis::

        warning = RateLimitedWarning(log, "accept failed", interval=1.0)
        warning.emit(error="EMFILE")      # logged
        warning.emit(error="EMFILE")      # counted; the next logged line says suppressed=1
    """

    def __init__(self, logger: logging.Logger, message: str, *, interval: float) -> None:
        self._logger = logger
        self._message = message
        self._interval = interval
        self._next = -float("inf")
        self._suppressed = 0

    def emit(self, **fields: Any) -> None:
        now = trio.current_time()
        if now < self._next:
            self._suppressed += 1
            return
        log_fields(
            self._logger, logging.WARNING, self._message, suppressed=self._suppressed, **fields
        )
        self._suppressed = 0
        self._next = now + self._interval


class ConnectionSlots:
    """At most ``limit`` connections open at once; a slot is held from accept to close."""

    def __init__(self, limit: int) -> None:
        self._limiter = trio.CapacityLimiter(limit)

    @property
    def open(self) -> int:
        return self._limiter.borrowed_tokens

    def take_nowait(self, holder: object) -> bool:
        """Take a slot for ``holder``; ``False`` when all are taken."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(holder)
        except trio.WouldBlock:
            return False
        return True

    def give_back(self, holder: object) -> None:
        self._limiter.release_on_behalf_of(holder)


class _SlotStream(trio.abc.HalfCloseableStream):
    """A socket stream that gives its slot back when it is closed, once, and gives up on a
    client that stops reading.

    It has no ``do_handshake``: hypercorn's TCPServer tells plain TCP from TLS by the
    AttributeError, and reads ``.socket`` for the peer's address.

    # NOTE: hypercorn shields every write from cancellation, so a client that never reads
    # would hold its connection, and whatever its response holds (a stream, one of the few
    # full listings), for good. A write that has not finished within ``send_timeout`` shuts
    # the socket down and fails as if the client had gone: hypercorn's reading then ends too,
    # the app is told of the disconnect, and the connection is closed.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        slots: ConnectionSlots,
        send_timeout: float,
        stalled: RateLimitedWarning | None = None,
    ) -> None:
        self._stream = stream
        self._slots = slots
        self._send_timeout = send_timeout
        self._stalled = stalled
        self._holding = True
        self.socket = stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_timeout):
            await self._stream.send_all(data)
            return
        if self._stalled is not None:
            self._stalled.emit(seconds=self._send_timeout)
        # Both directions, or hypercorn would go on waiting for the client's next request.
        with contextlib.suppress(OSError):
            self.socket.shutdown(trio.socket.SHUT_RDWR)
        raise trio.BrokenResourceError(f"the client read nothing for {self._send_timeout} s")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._holding:
                self._holding = False
                self._slots.give_back(self)


class _BoundedListener(trio.abc.Listener[_SlotStream]):
    """Accepts connections while a slot is free; answers the others ``503`` and closes them.

    Accepting stays cheap and never blocks on one client: refusals run in their own tasks, at
    most :data:`MAX_REFUSALS_IN_PROGRESS` at a time.
    """

    def __init__(
        self,
        listener: trio.SocketListener,
        slots: ConnectionSlots,
        refusals: trio.Nursery,
        send_timeout: float = 30.0,
    ) -> None:
        self._listener = listener
        self._slots = slots
        self._refusals = refusals
        self._send_timeout = send_timeout
        self._refusing = 0
        self._stalled = RateLimitedWarning(
            log,
            "http connection closed: the client stopped reading",
            interval=WARNING_INTERVAL_SECONDS,
        )
        self._accept_failed = RateLimitedWarning(
            log, "http accept failed; retrying", interval=WARNING_INTERVAL_SECONDS
        )
        self._refused = RateLimitedWarning(
            log, "http connection refused: too many open", interval=WARNING_INTERVAL_SECONDS
        )

    async def accept(self) -> _SlotStream:
        while True:
            stream = await self._accept_socket()
            counted = _SlotStream(stream, self._slots, self._send_timeout, self._stalled)
            if self._slots.take_nowait(counted):
                return counted
            self._refused.emit(openConnections=self._slots.open)
            if self._refusing < MAX_REFUSALS_IN_PROGRESS:
                self._refusing += 1
                self._refusals.start_soon(self._refuse, stream)
            else:
                await stream.aclose()

    async def _accept_socket(self) -> trio.SocketStream:
        """The next connection; waits out a shortage of descriptors instead of failing."""
        while True:
            try:
                return await self._listener.accept()
            except OSError as error:
                if error.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._accept_failed.emit(error=errno.errorcode[error.errno])
                await trio.sleep(ACCEPT_RETRY_SECONDS)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Write :data:`REFUSAL`, then read until the client closes, so that closing with
        its request unread does not reset the connection and lose the answer.

        Cancellation: the socket is closed whatever happens.
        """
        try:
            with trio.move_on_after(REFUSAL_SECONDS):
                await stream.send_all(REFUSAL)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
        except trio.BrokenResourceError:
            pass  # the client went first
        finally:
            self._refusing -= 1
            await stream.aclose()

    async def aclose(self) -> None:
        await self._listener.aclose()


class _TCPServer(TCPServer):
    """hypercorn's connection handler, closing as soon as the client has gone.

    # XXX: hypercorn 0.18's TCPServer.run leaves its TaskGroup only when every task in it has
    # finished, including the keep-alive timer (``_idle_timeout``) armed after the last
    # response; so a connection the client closed keeps its descriptor (and its slot) until
    # that timer fires. Stopping the timer once reading has ended lets it close at once; an
    # unfinished request still completes, its task is not the timer.
    """

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


class ServerGuard:
    """ASGI wrapper between hypercorn and the app.

    - Holds back ``http.disconnect`` from the app while the last body message of the response
      is still being sent (see :meth:`_http`).
    - Answers every WebSocket upgrade with a JSON ``404``: the service has no WebSocket
      endpoint, and quart's error handlers cannot run outside a request context.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await _deny_websocket(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    async def _http(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the app; its last ``send`` completes without being cancelled by the app.

        # XXX: hypercorn 0.18 (HTTPStream._send_closed -> H11Protocol._maybe_recycle /
        # H2Protocol.stream_send(StreamClosed)) does its per-connection bookkeeping inside the
        # app's final ``send``: it puts ``http.disconnect`` on the app's queue, then arms the
        # keep-alive timer (``Updated(idle=True)`` -> ``idle_task.restart``) or closes the
        # connection (``Closed()`` -> ``send_eof``/``aclose``). quart-trio's
        # ``TrioASGIHTTPConnection.handle_messages`` cancels the request's nursery as soon as
        # it receives that disconnect, so the next checkpoint in the bookkeeping raises
        # Cancelled: the timer is never armed and the socket never closed. We deliver the
        # disconnect to the app only once that send has returned.
        """
        last_send_started = False
        last_send_done = trio.Event()

        async def guarded_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" and last_send_started:
                await last_send_done.wait()
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal last_send_started
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            last_send_started = True
            try:
                await send(message)
            finally:
                last_send_done.set()

        await self._app(scope, guarded_receive, guarded_send)


_NO_WEBSOCKET = json.dumps(
    {"error": "not_found", "message": "the service has no WebSocket endpoint"},
    separators=(",", ":"),
).encode()


async def _deny_websocket(scope: Any, receive: Any, send: Any) -> None:
    """Refuse the upgrade with a JSON 404 (ASGI's WebSocket denial response), or, where the
    server lacks that extension, with a plain close (hypercorn then answers 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    log_fields(
        access_log, logging.INFO, "http request", method="GET", path=scope["path"], status=404
    )
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_NO_WEBSOCKET)).encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": _NO_WEBSOCKET})


def hypercorn_config(options: ServerOptions) -> HypercornConfig:
    config = HypercornConfig()
    config.keep_alive_timeout = options.keep_alive_timeout
    config.graceful_timeout = options.graceful_timeout
    config.accesslog = None  # one structured line per request is logged by the app itself
    config.errorlog = log
    return config


async def serve_http(
    app: Callable[..., Awaitable[None]],
    options: ServerOptions,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` until ``shutdown_trigger`` returns, then shut down gracefully.

    What hypercorn's ``worker_serve`` does, with our listener: lifespan start-up, accept until
    the trigger, then stop accepting, let in-flight requests answer and idle connections close
    (hypercorn closes them itself once told it is terminating), all within
    ``options.graceful_timeout``; then lifespan shutdown.

    Reports its real binds (``["http://127.0.0.1:3000"]``) through ``task_status``.

    Cancellation: cancelling it drops every connection at once; the trigger is the graceful way.
    """
    config = hypercorn_config(options)
    _warn_if_descriptors_short(options.max_connections)
    asgi = wrap_app(ServerGuard(app), config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, state)
    context = WorkerContext(None)
    slots = ConnectionSlots(options.max_connections)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = _bind(options)
        async with trio.open_nursery() as connections:
            listeners = []
            for sock in sockets:
                sock.listen(config.backlog)
                plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(_BoundedListener(plain, slots, connections, options.send_timeout))
            binds = [
                f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in sockets
            ]
            handler = partial(_TCPServer, asgi, config, context, ConnectionState(state.copy()))
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(trio.serve_listeners, handler, listeners, handler_nursery=connections)
                )
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            log_fields(log, logging.INFO, "http draining", openConnections=slots.open)
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + options.graceful_timeout
        log_fields(
            log,
            logging.INFO,
            "http stopped",
            closedInTime=not connections.cancel_scope.cancelled_caught,
        )
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class BindError(Exception):
    """The HTTP address cannot be listened on; the message names the setting to change."""


def _bind(options: ServerOptions) -> list[socket.socket]:
    """The listening socket of ``options.host:options.port``, set up as hypercorn's own
    ``Config.create_sockets`` does (which would leak the socket when ``bind`` fails).

    Raises:
        BindError: e.g. ``HTTP_PORT=3000: address already in use``, or ``HTTP_HOST=10.9.9.9:
            cannot assign requested address`` for an address this machine does not have.
    """
    host = options.host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, options.port))
    except OSError as error:
        sock.close()
        problem = (error.strerror or str(error)).lower()
        if error.errno in (errno.EADDRINUSE, errno.EACCES):  # taken, or privileged
            raise BindError(f"HTTP_PORT={options.port}: {problem}") from None
        raise BindError(f"HTTP_HOST={options.host}: {problem}") from None
    sock.setblocking(False)
    return [sock]


def _warn_if_descriptors_short(max_connections: int) -> None:
    """Say at start-up when ``ulimit -n`` cannot hold the connection cap plus the service's
    own descriptors: the cap would then not stop ``EMFILE``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + RESERVED_DESCRIPTORS > soft:
        log_fields(
            log,
            logging.WARNING,
            "HTTP_MAX_CONNECTIONS too close to the descriptor limit",
            maxConnections=max_connections,
            descriptorLimit=soft,
            reserved=RESERVED_DESCRIPTORS,
        )
