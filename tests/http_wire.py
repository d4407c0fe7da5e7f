"""Raw HTTP/1.1 over a real loopback socket in virtual-time tests (test_supervisor,
test_http_server): freeze the clock while bytes travel, read exactly one response."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import trio
import trio.testing

_CHUNKED = re.compile(rb"(?im)^transfer-encoding:\s*chunked\s*$")
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


@contextlib.contextmanager
def frozen(clock: trio.testing.MockClock) -> Iterator[None]:
    """Virtual time stands still while real bytes travel, so no server timer fires meanwhile."""
    clock.autojump_threshold = float("inf")
    try:
        yield
    finally:
        clock.autojump_threshold = 0


async def exchange(
    clock: trio.testing.MockClock, stream: trio.SocketStream, request: bytes
) -> bytes:
    """Send ``request`` and read one response, in frozen time.

    Reads by Content-Length (or to the last chunk): the server may keep the socket open.
    """
    with frozen(clock):
        await stream.send_all(request)
        response = b""
        while not complete(response):
            chunk = await stream.receive_some()
            assert chunk, f"closed mid-response: {response!r}"
            response += chunk
    return response


def complete(response: bytes) -> bool:
    """Whether ``response`` holds a whole response: head, then its Content-Length of body or
    a chunked body up to its last chunk."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return False
    if _CHUNKED.search(head):
        return body.endswith(b"0\r\n\r\n")
    length = _LENGTH.search(head)
    assert length is not None, f"no content-length: {head!r}"
    return len(body) >= int(length[1])


def body_of(response: bytes) -> bytes:
    """The payload of a complete ``response``, de-chunked where it was chunked."""
    head, _, body = response.partition(b"\r\n\r\n")
    if not _CHUNKED.search(head):
        return body
    data = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return data
        data += rest[:size]
        body = rest[size + 2 :]
