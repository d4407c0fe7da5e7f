"""GET /events/stream on the real service: a real HTTP client reads Server-Sent Events while
events are POSTed, resumes after a disconnect, and a subscriber that reads nothing costs the
service nothing measurable."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
from support.services import ServiceHandle, Services, Spawn

#: How soon a stored event must reach a reading subscriber (the issue's bound).
ARRIVAL_SECONDS = 1.0


@attrs.frozen
class Message:
    id: int
    event: dict[str, Any]
    received_at: float


def sse_messages(lines: Iterator[str]) -> Iterator[Message]:
    """The messages of an SSE body, comments and the retry field left out."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Message(int(fields["id"]), json.loads(fields["data"]), time.monotonic())
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


class StreamReader:
    """Reads ``GET /events/stream`` in a thread, keeping every message and its arrival time."""

    def __init__(
        self,
        base_url: str,
        *,
        params: dict[str, str] | None = None,
        last_event_id: int | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._connected = threading.Event()
        self._stop = threading.Event()
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self._thread = threading.Thread(
            target=self._read, args=(base_url, params or {}, headers), daemon=True
        )

    def __enter__(self) -> StreamReader:
        self._thread.start()
        assert self._connected.wait(10), "the stream did not answer"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read(self, base_url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=30)) as client,
                client.stream("GET", "/events/stream", params=params, headers=headers) as answer,
            ):
                self.status = answer.status_code
                self._connected.set()
                for message in sse_messages(answer.iter_lines()):
                    self.messages.append(message)
                    if self._stop.is_set():
                        return
        except httpx.HTTPError:
            pass
        finally:
            self._connected.set()
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 10) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.messages) >= count, f"{len(self.messages)} of {count} messages"
        return self.messages[:count]


def post(app: ServiceHandle, user: str, n: int) -> tuple[dict[str, Any], float]:
    created = app.post_event(user_id=user, payload={"n": n})
    return created, time.monotonic()


def test_a_reader_gets_each_posted_event_once_in_store_order_within_a_second(
    service: Services,
) -> None:
    """20 events POSTed while a real client reads the stream: each arrives once, ids count up
    in store order, each within 1 s of its 201."""
    app = service()
    user = f"stream-{uuid.uuid4().hex[:8]}"
    with StreamReader(app.base_url, params={"userId": user}) as reader:
        posted = [post(app, user, n) for n in range(20)]
        messages = reader.wait_for(20)
    assert reader.status == 200
    assert [m.event for m in messages] == [created for created, _ in posted]
    ids = [m.id for m in messages]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20
    delays = [m.received_at - sent for m, (_, sent) in zip(messages, posted, strict=True)]
    print(f"stream delay after 201: max {max(delays) * 1000:.0f} ms")
    assert max(delays) < ARRIVAL_SECONDS
    listed = [e["eventId"] for e in app.processed() if e["userId"] == user]
    assert listed == [m.event["eventId"] for m in messages]  # the store's order


def test_a_reader_resumes_after_a_disconnect_without_a_gap(service: Services) -> None:
    """Read 5, disconnect, 5 more are POSTed, reconnect with Last-Event-ID: exactly the 5
    missed ones arrive, then live ones."""
    app = service()
    user = f"resume-{uuid.uuid4().hex[:8]}"
    with StreamReader(app.base_url, params={"userId": user}) as first:
        before = [post(app, user, n)[0] for n in range(5)]
        seen = first.wait_for(5)
    missed = [post(app, user, n)[0] for n in range(5, 10)]
    app.wait_processed({event["eventId"] for event in missed})
    with StreamReader(app.base_url, params={"userId": user}, last_event_id=seen[-1].id) as again:
        resumed = again.wait_for(5)
        live = post(app, user, 10)[0]
        after = again.wait_for(6)
    assert [m.event for m in seen] == before
    assert [m.event for m in resumed] == missed
    assert after[-1].event == live
    assert len(again.messages) == 6


@pytest.mark.broker_neutral  # the store's and the stream's own costs
def test_streams_beyond_max_stream_subscribers_get_503(process_control: Spawn) -> None:
    """With MAX_STREAM_SUBSCRIBERS=2 a third stream is refused with 503 and Retry-After."""
    app = process_control({"MAX_STREAM_SUBSCRIBERS": "2"})
    with StreamReader(app.base_url), StreamReader(app.base_url):
        refused = app.http.get("/events/stream")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "too_many_streams"


def test_shutdown_closes_open_streams_promptly(process_control: Spawn) -> None:
    """SIGTERM with two streams open: both end within a second and the service exits 0."""
    app = process_control()
    with StreamReader(app.base_url) as one, StreamReader(app.base_url) as two:
        started = time.monotonic()
        app.process.send_signal(signal.SIGTERM)
        assert one.ended.wait(5)
        assert two.ended.wait(5)
        ended_after = time.monotonic() - started
        assert app.process.wait(15) == 0
    print(f"streams ended {ended_after * 1000:.0f} ms after SIGTERM")
    assert ended_after < 1.0


def stuck_subscriber(base_url: str) -> socket.socket:
    """A stream request whose client never reads a byte of the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((host, int(port)))
    sock.sendall(f"GET /events/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


#: Events of about 30 KB: a few hundred fill the socket buffers (4 MB at most here) of a
#: subscriber that reads nothing, so its bounded buffer overflows during the measurement.
PAD = "p" * 30_000


def throughput(app: ServiceHandle, count: int) -> float:
    """Events per second, from the first POST until the last is listed by the store."""
    user = f"load-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    ids = {
        app.post_event(user_id=user, payload={"n": n, "pad": PAD})["eventId"] for n in range(count)
    }
    app.wait_processed(ids, timeout=60)
    return count / (time.monotonic() - started)


@pytest.mark.broker_neutral  # the store's and the stream's own costs
def test_a_subscriber_that_reads_nothing_does_not_slow_posting_or_consuming(
    process_control: Spawn,
) -> None:
    """POST-to-stored throughput of 30 KB events with 4 stuck subscribers attached (buffer 50:
    they overflow and are dropped) is within 30% of the throughput without them.

    Runs come in pairs, one of each kind back to back, and the median of the pairs' ratios is
    compared: the two runs of a pair share the machine's moment. Which kind goes first
    alternates, since each run leaves the topic larger and the broker a little slower."""
    app = process_control({"STREAM_BUFFER_EVENTS": "50"})
    throughput(app, 50)  # warm-up: producer id, connections
    without, with_stuck = [], []

    def run_with_stuck_subscribers() -> None:
        sockets = [stuck_subscriber(app.base_url) for _ in range(4)]
        try:
            with_stuck.append(throughput(app, 200))
        finally:
            for sock in sockets:
                sock.close()

    for pair in range(4):
        if pair % 2 == 0:
            without.append(throughput(app, 200))
            run_with_stuck_subscribers()
        else:
            run_with_stuck_subscribers()
            without.append(throughput(app, 200))
    ratios = [stuck / free for stuck, free in zip(with_stuck, without, strict=True)]
    ratio = statistics.median(ratios)
    overflows = app.health().json()["counters"].get("stream_overflows", 0)
    print(
        f"events/s without {[round(t) for t in without]}, with 4 stuck subscribers "
        f"{[round(t) for t in with_stuck]}; median ratio of pairs {ratio:.2f}; "
        f"overflows {overflows}"
    )
    assert overflows >= 4, "the stuck subscribers were never dropped"
    assert ratio > 0.7
