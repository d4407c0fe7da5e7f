"""Trace context that follows one request from the HTTP call to the consumer's log line.

Two values travel with an event, as HTTP headers on the way in and as Kafka headers on the
topic: a W3C ``traceparent`` (https://www.w3.org/TR/trace-context/), passed on unchanged when
the client sent a valid one (the service reports no spans of its own, so it does not start
one), and an ``X-Request-Id``, the client's when it is acceptable, else a new one. Values
that break the format are ignored, never an error and never logged: a malformed
``traceparent`` is dropped, a malformed request id replaced.

Synopsis::

    trace = TraceContext.from_http(headers.get("traceparent"), headers.get("x-request-id"))
    trace.kafka_headers()          # (("traceparent", b"00-..."), ("x-request-id", b"..."))
    TraceContext.from_kafka(record.headers)   # the same values, read back by the consumer
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from actors.domain.ids import new_uuid_hex

__all__ = [
    "REQUEST_ID_HEADER",
    "TRACEPARENT_HEADER",
    "TraceContext",
    "valid_request_id",
    "valid_traceparent",
]

#: Header names, on HTTP (case-insensitive there) and on Kafka (as written here).
TRACEPARENT_HEADER = "traceparent"
REQUEST_ID_HEADER = "x-request-id"

# version-traceid-parentid-flags, lower-case hex; a version above 00 may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")

#: A request id: 1 to 128 characters that need no quoting in a header, URL or log.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:@+=/-]{1,128}")

_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a W3C ``traceparent`` the spec says to accept, else ``None``.

    Version ``ff`` is invalid, all-zero trace and parent ids are invalid, version ``00`` has
    exactly four fields, and a later version may carry more after a dash.
    """
    if value is None or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    if version == "00" and rest is not None:
        return None
    return value


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it is an acceptable request id, else ``None``."""
    if value is None or _REQUEST_ID.fullmatch(value) is None:
        return None
    return value


def new_request_id() -> str:
    return new_uuid_hex()


@attrs.frozen(kw_only=True)
class TraceContext:
    """A request's ``traceparent`` (if it came with a valid one) and its request id."""

    traceparent: str | None = None
    request_id: str | None = None

    @classmethod
    def from_http(cls, traceparent: str | None, request_id: str | None) -> TraceContext:
        """The context of an incoming request; a request id is always set (new if need be)."""
        return cls(
            traceparent=valid_traceparent(traceparent),
            request_id=valid_request_id(request_id) or new_request_id(),
        )

    @classmethod
    def from_kafka(cls, headers: Iterable[tuple[str, bytes]]) -> TraceContext:
        """The context a record carries; headers that are missing or malformed are ``None``."""
        found: dict[str, str] = {}
        for name, value in headers:
            if name in (TRACEPARENT_HEADER, REQUEST_ID_HEADER) and name not in found:
                found[name] = value.decode("ascii", errors="replace")
        return cls(
            traceparent=valid_traceparent(found.get(TRACEPARENT_HEADER)),
            request_id=valid_request_id(found.get(REQUEST_ID_HEADER)),
        )

    def kafka_headers(self) -> tuple[tuple[str, bytes], ...]:
        headers: list[tuple[str, bytes]] = []
        if self.traceparent is not None:
            headers.append((TRACEPARENT_HEADER, self.traceparent.encode()))
        if self.request_id is not None:
            headers.append((REQUEST_ID_HEADER, self.request_id.encode()))
        return tuple(headers)
