"""How long HTTP connections live in the real service process, counted in its descriptors.

Clients here are raw sockets: they hold connections open and idle on purpose, and the only
thing that can release the service's descriptors is the service closing its side.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from support.services import ServiceProcess, Services, Spawn, spawn_module
from support.waiting import wait_until

#: Exercises no broker behaviour of its own: runs in the Tansu leg only (see .ci/run).
pytestmark = pytest.mark.broker_neutral

#: Connections held idle at once in the descriptor test.
IDLE_CONNECTIONS = 5000

#: Connections opened together; below hypercorn's listen backlog (100), so that no SYN is
#: dropped (a dropped SYN costs the client a 1 s retransmit).
BATCH = 80

GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


def address(app: ServiceProcess) -> tuple[str, int]:
    host, port = app.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def descriptors(pid: int) -> int:
    """Open file descriptors of ``pid`` (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_descriptor_limit(needed: int) -> None:
    """Let this process (and the services it spawns, which inherit it) open ``needed`` files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this test needs {needed} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def read_head(sock: socket.socket, timeout: float = 10) -> bytes:
    """Bytes up to the end of one response's body (by Content-Length), blocking."""
    sock.settimeout(timeout)
    data = b""
    while True:
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"content-length:")
            )
            if len(body) >= length:
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response else 0


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (what it still sends is read)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def serve_one_request_each(
    host: str, port: int, count: int, held: list[socket.socket], pid: int
) -> int:
    """Open ``count`` connections, each answered one GET /health with 200 and then left open
    and idle in ``held``, in batches of :data:`BATCH`; returns the peak descriptor count."""
    peak = 0
    selector = selectors.DefaultSelector()
    for start in range(0, count, BATCH):
        batch = []
        for _ in range(min(BATCH, count - start)):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(GET_HEALTH)
            held.append(sock)
            batch.append(sock)
        for sock in batch:
            assert status_of(read_head(sock)) == 200
        peak = max(peak, descriptors(pid))
    selector.close()
    return peak


def test_idle_connections_are_closed_and_their_descriptors_released(
    process_control: Spawn,
) -> None:
    """5,000 clients that each got one answer and then sit idle: the service closes every
    connection HTTP_KEEP_ALIVE_SECONDS after its answer and its descriptors return to where
    they were, while the clients still hold their ends."""
    raise_descriptor_limit(IDLE_CONNECTIONS * 2 + 1000)
    app = process_control(env={"HTTP_KEEP_ALIVE_SECONDS": "1", "HTTP_MAX_CONNECTIONS": "8000"})
    app.drop_connections()
    host, port = address(app)
    before = descriptors(app.pid)
    with sockets() as held:
        started = time.monotonic()
        peak = serve_one_request_each(host, port, IDLE_CONNECTIONS, held, app.pid)
        served = time.monotonic() - started
        during = descriptors(app.pid)
        after = wait_until(
            lambda: (count := descriptors(app.pid)) <= before + 2 and count,
            10,
            what="the service's descriptors to return to their count before the connections",
        )
        released = time.monotonic() - started - served
        still_open = [sock for sock in held if not closed_by_server(sock, 0.01)]
    print(
        f"{IDLE_CONNECTIONS} idle connections: descriptors before {before}, peak {peak}, "
        f"right after the last answer {during}, after {after}; served in {served:.2f} s, "
        f"released {released:.2f} s after the last answer"
    )
    assert still_open == []
    health = app.health()
    assert health.status_code == 200, health.text


def test_connections_over_the_cap_get_503_quickly(process_control: Spawn) -> None:
    """With HTTP_MAX_CONNECTIONS held open, each further connection gets a JSON 503 within a
    fraction of a second and is closed; once the held ones go, /health answers 200."""
    app = process_control(env={"HTTP_MAX_CONNECTIONS": "20", "HTTP_KEEP_ALIVE_SECONDS": "60"})
    app.drop_connections()
    host, port = address(app)
    with sockets() as held:
        for _ in range(20):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(GET_HEALTH)
            held.append(sock)
            assert status_of(read_head(sock)) == 200
        answers, times = [], []
        for _ in range(30):
            started = time.monotonic()
            with socket.create_connection((host, port), timeout=10) as extra:
                extra.sendall(GET_HEALTH)
                answers.append(read_head(extra, timeout=5))
                assert closed_by_server(extra, 2)
            times.append(time.monotonic() - started)
    print(f"refusals over the cap: slowest {max(times) * 1000:.1f} ms")
    assert {status_of(answer) for answer in answers} == {503}
    body = json.loads(answers[0].partition(b"\r\n\r\n")[2])
    assert body["error"] == "too_many_connections"
    assert max(times) < 0.5
    app.wait_healthy(timeout=10)
    refused = [line for line in app.log_lines() if "connection refused" in line["msg"]]
    assert 1 <= len(refused) <= 3  # 30 refusals in well under 3 s: at most one line a second


def test_accept_errors_at_the_descriptor_limit_are_logged_at_most_once_a_second(
    service: Services,
) -> None:
    """A service whose ulimit -n is below HTTP_MAX_CONNECTIONS runs out of descriptors while
    accepting: it warns at start-up, logs EMFILE at most once a second without tracebacks,
    and answers again once connections close."""
    app = spawn_module(
        service,
        "tests.support.few_descriptors_service",
        env={"DESCRIPTOR_LIMIT": "256", "HTTP_MAX_CONNECTIONS": "1000"},
    )
    app.drop_connections()
    host, port = address(app)
    with sockets() as held:
        for _ in range(300):
            with contextlib.suppress(OSError):
                sock = socket.create_connection((host, port), timeout=1)
                held.append(sock)
        started = time.monotonic()
        time.sleep(3)  # not an assertion: the service meets EMFILE on every accept meanwhile
        lines = app.log_text().splitlines()
        elapsed = time.monotonic() - started
    emfile = [line for line in lines if "EMFILE" in line]
    print(f"{len(held)} connections opened; {len(emfile)} EMFILE lines over {elapsed:.1f} s")
    assert 1 <= len(emfile) <= elapsed + 2
    assert not [line for line in lines if line.startswith("Traceback")]
    assert any("too close to the descriptor limit" in line for line in lines)
    app.wait_healthy(timeout=15)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_connection_close_and_http_10_are_closed_after_the_answer(
    process_control: Spawn, request_bytes: bytes
) -> None:
    """The service closes the connection right after answering Connection: close or HTTP/1.0."""
    app = process_control(env={"HTTP_KEEP_ALIVE_SECONDS": "60"})
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(request_bytes)
        assert status_of(read_head(sock)) == 200
        started = time.monotonic()
        assert closed_by_server(sock, 5)
        took = time.monotonic() - started
    assert took < 1


def test_idle_http2_connection_is_closed_after_keep_alive(process_control: Spawn) -> None:
    """An HTTP/2 connection (prior knowledge) with no open stream is closed after
    HTTP_KEEP_ALIVE_SECONDS."""
    app = process_control(env={"HTTP_KEEP_ALIVE_SECONDS": "1"})
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    headers = [(":method", "GET"), (":path", "/health"), (":scheme", "http"), (":authority", "t")]
    client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
    with socket.create_connection(address(app), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        status, ended = None, False
        while not ended:
            data = sock.recv(65536)
            assert data, "closed before the response ended"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(client.data_to_send())
        started = time.monotonic()
        assert closed_by_server(sock, 5)
        took = time.monotonic() - started
    assert status == b"200"
    assert 0.5 < took < 3


#: HTTP_SEND_SECONDS of the test below.
SEND_SECONDS = 2


def test_a_client_that_stops_reading_a_listing_is_cut_off_and_frees_its_place(
    process_control: Spawn,
) -> None:
    """With one full listing allowed at a time, a client that asks for a listing larger than
    the socket buffers and then reads nothing holds that place only until one write has
    waited HTTP_SEND_SECONDS: its connection is closed and the next listing is served."""
    app = process_control(env={"HTTP_SEND_SECONDS": str(SEND_SECONDS), "HTTP_MAX_LISTINGS": "1"})
    blob = "x" * 30_000
    for batch in range(16):  # about 16 MB of stored JSON
        items = [{"userId": f"u{batch}", "eventType": "LOGIN", "payload": {"blob": blob}}] * 33
        assert app.http.post("/events/batch", json={"events": items}).status_code == 201
    wait_until(
        lambda: app.health().json()["gauges"]["store_events"] == 16 * 33,
        30,
        what="every event stored",
    )
    with sockets() as held:
        stuck = socket.socket()
        held.append(stuck)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(address(app))
        stuck.sendall(b"GET /events/processed HTTP/1.1\r\nHost: test\r\n\r\n")
        stuck.settimeout(10)
        assert stuck.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"  # its listing has begun
        wait_until(
            lambda: app.http.get("/events/processed").status_code == 503,
            10,
            what="the one listing place taken by the client that does not read",
        )
        taken = time.monotonic()
        served = wait_until(
            lambda: app.http.get("/events/processed").status_code == 200,
            SEND_SECONDS + 10,
            what="a listing served again",
        )
        freed_after = time.monotonic() - taken
        print(f"the listing place was free again {freed_after:.2f} s after it was seen taken")
        assert served
        assert freed_after <= SEND_SECONDS + 5
        assert closed_by_server(stuck, timeout=5)
