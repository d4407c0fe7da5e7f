"""Trace context: which traceparent and X-Request-Id values are carried, and which ignored."""

from __future__ import annotations

import re

import pytest

from actors.domain.trace import TraceContext, valid_request_id, valid_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        VALID,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        # A later version may append fields, which a version-00 reader keeps as they are.
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ],
)
def test_valid_traceparents_are_kept_unchanged(value: str) -> None:
    """W3C traceparents the spec accepts pass through as they came."""
    assert valid_traceparent(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # hex must be lower-case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        VALID + "-extra",  # version 00 has exactly four fields
        VALID[:-1],
        " " + VALID,
        VALID + "\n",
        VALID.replace("-", "_"),
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "x" * 600,
    ],
)
def test_malformed_traceparents_are_dropped(value: str | None) -> None:
    """Anything else is ignored, never repaired."""
    assert valid_traceparent(value) is None


@pytest.mark.parametrize(
    "value", ["a", "req-42", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "x" * 128]
)
def test_acceptable_request_ids_are_kept(value: str) -> None:
    """Ids of 1 to 128 plain characters are carried as they came."""
    assert valid_request_id(value) == value
    assert TraceContext.from_http(None, value).request_id == value


@pytest.mark.parametrize(
    "value", [None, "", "x" * 129, "two words", 'quote"', "new\nline", "\u00e9t\u00e9", "a;b"]
)
def test_unacceptable_request_ids_are_replaced_by_a_new_one(value: str | None) -> None:
    """A missing or malformed X-Request-Id gets a fresh id (32 hex digits), different each time."""
    first = TraceContext.from_http(None, value).request_id
    second = TraceContext.from_http(None, value).request_id
    assert first is not None
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_kafka_headers_round_trip() -> None:
    """What the publisher writes as headers, the consumer reads back as the same context."""
    trace = TraceContext.from_http(VALID, "req-1")
    headers = trace.kafka_headers()
    assert headers == (("traceparent", VALID.encode()), ("x-request-id", b"req-1"))
    assert TraceContext.from_kafka(headers) == trace


def test_no_traceparent_means_no_header() -> None:
    """Without a valid traceparent only the request id travels: none is invented."""
    headers = TraceContext.from_http("not-a-traceparent", "req-1").kafka_headers()
    assert headers == (("x-request-id", b"req-1"),)


def test_malformed_kafka_headers_are_ignored() -> None:
    """Headers written by someone else are validated again: bad ones read as absent, the
    first of a repeated header counts, other headers are left alone."""
    headers = [
        ("traceparent", b"\xff\xfe not ascii"),
        ("x-request-id", b"line\nbreak"),
        ("x-request-id", b"second"),
        ("other", b"x"),
    ]
    assert TraceContext.from_kafka(headers) == TraceContext(traceparent=None, request_id=None)
    assert TraceContext.from_kafka([("x-request-id", b"ok-1")]).request_id == "ok-1"
