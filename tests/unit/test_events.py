"""The UserEvent's two doors: the HTTP body and the Kafka message value."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from settings_support import default_limits

from actors.domain.events import (
    EVENT_TYPES,
    InvalidRequest,
    Limits,
    MalformedEvent,
    Problem,
    UserEvent,
    _parse_json,
    _stored_event,
    decode_event,
    event_from_request,
    utc_timestamp,
)

LIMITS = default_limits()
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def problems_of(raw: bytes, limits: Limits = LIMITS) -> list[Problem]:
    with pytest.raises(InvalidRequest) as caught:
        event_from_request(raw, limits)
    return caught.value.problems


def fields_of(raw: bytes, limits: Limits = LIMITS) -> list[str]:
    return [problem.field for problem in problems_of(raw, limits)]


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def stored(**overrides: Any) -> dict[str, Any]:
    document = {
        "eventId": str(uuid.uuid4()),
        "userId": "u1",
        "eventType": "LOGIN",
        "timestamp": "2026-11-21T10:33:25.123Z",
        "payload": {"page": "/home"},
    }
    document.update(overrides)
    return document


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


# --- event_from_request: accepted bodies ----------------------------------------------------


def test_valid_body_becomes_event() -> None:
    """A body with userId, eventType and payload becomes an event carrying them."""
    event = event_from_request(body(userId="u1", eventType="LOGIN", payload={"a": [1]}), LIMITS)
    assert (event.user_id, event.event_type, event.payload) == ("u1", "LOGIN", {"a": [1]})


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_known_event_type_is_accepted(event_type: str) -> None:
    """Each known eventType is accepted by the default limits."""
    assert event_from_request(body(userId="u", eventType=event_type), LIMITS).event_type == (
        event_type
    )


def test_absent_payload_becomes_empty_object() -> None:
    """A body without payload gets an empty payload object."""
    assert event_from_request(body(userId="u", eventType="LOGIN"), LIMITS).payload == {}


def test_null_payload_becomes_empty_object() -> None:
    """An explicit null payload means no payload."""
    event = event_from_request(body(userId="u", eventType="LOGIN", payload=None), LIMITS)
    assert event.payload == {}


def test_client_event_id_and_timestamp_are_ignored() -> None:
    """A client-supplied eventId and timestamp are replaced by the service's own."""
    client_id = str(uuid.uuid4())
    event = event_from_request(
        body(userId="u", eventType="LOGIN", eventId=client_id, timestamp="2000-01-01T00:00:00Z"),
        LIMITS,
    )
    assert event.event_id != client_id
    assert not event.timestamp.startswith("2000-")


def test_event_id_is_a_uuid4() -> None:
    """The service's eventId is a canonical UUID4 string, fresh for each event."""
    first = event_from_request(body(userId="u", eventType="LOGIN"), LIMITS)
    second = event_from_request(body(userId="u", eventType="LOGIN"), LIMITS)
    parsed = uuid.UUID(first.event_id)
    assert (parsed.version, str(parsed)) == (4, first.event_id)
    assert first.event_id != second.event_id


def test_timestamp_is_utc_with_milliseconds_and_z() -> None:
    """The timestamp reads YYYY-MM-DDTHH:MM:SS.mmmZ and is the current UTC time."""
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    event = event_from_request(body(userId="u", eventType="LOGIN"), LIMITS)
    after = datetime.datetime.now(datetime.UTC)
    assert TIMESTAMP.fullmatch(event.timestamp)
    moment = datetime.datetime.fromisoformat(event.timestamp)
    assert moment.utcoffset() == datetime.timedelta(0)
    assert before <= moment <= after


def test_utc_timestamp_converts_other_zones_to_utc() -> None:
    """utc_timestamp renders an aware time from another zone in UTC, milliseconds truncated."""
    zone = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2026, 11, 21, 12, 33, 25, 123999, tzinfo=zone)
    assert utc_timestamp(moment) == "2026-11-21T10:33:25.123Z"


# --- event_from_request: userId ---------------------------------------------------------------


def test_missing_user_id_is_required() -> None:
    """A body without userId names userId as required."""
    assert problems_of(body(eventType="LOGIN")) == [Problem("userId", "is required")]


@pytest.mark.parametrize("user_id", [1, 1.5, True, None, ["u"], {"id": "u"}])
def test_non_string_user_id_is_rejected(user_id: Any) -> None:
    """A userId that is not a JSON string is rejected."""
    assert problems_of(body(userId=user_id, eventType="LOGIN")) == [
        Problem("userId", "must be a string")
    ]


@pytest.mark.parametrize("user_id", ["", "   ", "\t\n"])
def test_empty_user_id_is_rejected(user_id: str) -> None:
    """An empty or blank userId is rejected."""
    assert problems_of(body(userId=user_id, eventType="LOGIN")) == [
        Problem("userId", "must not be empty")
    ]


def test_user_id_at_the_limit_is_accepted() -> None:
    """A userId exactly max_user_id_length characters long is accepted."""
    user_id = "é" * LIMITS.max_user_id_length
    assert event_from_request(body(userId=user_id, eventType="LOGIN"), LIMITS).user_id == user_id


def test_too_long_user_id_is_rejected() -> None:
    """A userId one character above max_user_id_length is rejected."""
    limits = default_limits(max_user_id_length=8)
    assert problems_of(body(userId="u" * 9, eventType="LOGIN"), limits) == [
        Problem("userId", "must be at most 8 characters")
    ]


# --- event_from_request: eventType ------------------------------------------------------------


def test_missing_event_type_is_required() -> None:
    """A body without eventType names eventType as required."""
    assert problems_of(body(userId="u")) == [Problem("eventType", "is required")]


@pytest.mark.parametrize("event_type", ["SIGNUP", "login", "", 1, None, ["LOGIN"]])
def test_unknown_event_type_is_rejected(event_type: Any) -> None:
    """An eventType outside the known ones, or not a string, lists the allowed values."""
    assert problems_of(body(userId="u", eventType=event_type)) == [
        Problem("eventType", "must be one of LOGIN, LOGOUT, PRODUCT_VIEW")
    ]


def test_event_types_narrowed_by_limits() -> None:
    """A known eventType left out of Limits.event_types is rejected."""
    limits = default_limits(event_types=frozenset({"LOGIN"}))
    assert event_from_request(body(userId="u", eventType="LOGIN"), limits).event_type == "LOGIN"
    assert problems_of(body(userId="u", eventType="LOGOUT"), limits) == [
        Problem("eventType", "must be one of LOGIN")
    ]


# --- event_from_request: payload --------------------------------------------------------------


@pytest.mark.parametrize("payload", [[], [1, 2], "text", 0, 1.5, True, False])
def test_payload_not_an_object_is_rejected(payload: Any) -> None:
    """A payload that is not a JSON object (falsy values included) is rejected."""
    assert problems_of(body(userId="u", eventType="LOGIN", payload=payload)) == [
        Problem("payload", "must be a JSON object")
    ]


def test_payload_at_depth_limit_is_accepted() -> None:
    """A payload exactly max_payload_depth levels deep is accepted."""
    payload = nested(LIMITS.max_payload_depth)
    event = event_from_request(body(userId="u", eventType="LOGIN", payload=payload), LIMITS)
    assert event.payload == payload


def test_payload_too_deep_is_rejected() -> None:
    """A payload one level deeper than max_payload_depth is rejected; arrays count as levels."""
    limits = default_limits(max_payload_depth=3)
    at_limit = {"a": [[1]]}
    assert event_from_request(body(userId="u", eventType="LOGIN", payload=at_limit), limits)
    assert problems_of(body(userId="u", eventType="LOGIN", payload={"a": [[[1]]]}), limits) == [
        Problem("payload", "must not nest deeper than 3 levels")
    ]


def test_payload_too_large_is_rejected() -> None:
    """A payload above max_payload_bytes as compact JSON is rejected; at the limit it passes."""
    limits = default_limits(max_payload_bytes=20)
    at_limit = {"k": "x" * 12}  # {"k":"xxxxxxxxxxxx"} is 20 bytes
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 20
    assert event_from_request(body(userId="u", eventType="LOGIN", payload=at_limit), limits)
    over = {"k": "x" * 13}
    assert problems_of(body(userId="u", eventType="LOGIN", payload=over), limits) == [
        Problem("payload", "must be at most 20 bytes as JSON")
    ]


def test_payload_size_counts_utf8_bytes() -> None:
    """The payload limit counts UTF-8 bytes, not characters."""
    limits = default_limits(max_payload_bytes=20)
    payload = {"k": "é" * 6}  # 14 characters of compact JSON, 20 bytes
    assert event_from_request(body(userId="u", eventType="LOGIN", payload=payload), limits)
    payload = {"k": "é" * 7}  # 15 characters, 22 bytes
    assert fields_of(body(userId="u", eventType="LOGIN", payload=payload), limits) == ["payload"]


# --- event_from_request: the body as a whole --------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"{'userId': 'u'}", b"userId=u", b'{"a":1} x'])
def test_body_not_json_is_rejected(raw: bytes) -> None:
    """A body that is not JSON is one problem about the body."""
    [problem] = problems_of(raw)
    assert problem.field == "body"
    assert problem.message.startswith("not valid JSON")


@pytest.mark.parametrize("raw", [b"[]", b'["LOGIN"]', b'"LOGIN"', b"1", b"null", b"true"])
def test_body_not_an_object_is_rejected(raw: bytes) -> None:
    """A JSON body that is not an object is rejected."""
    assert problems_of(raw) == [Problem("body", "must be a JSON object")]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"userId": "\xff", "eventType": "LOGIN"}',
        '{"userId": "ü", "eventType": "LOGIN"}'.encode("latin-1"),
        '{"userId": "u", "eventType": "LOGIN"}'.encode("utf-16"),
    ],
)
def test_body_not_utf8_is_rejected(raw: bytes) -> None:
    """A body that is not UTF-8 is rejected."""
    assert problems_of(raw) == [Problem("body", "not valid UTF-8")]


def test_duplicate_keys_are_rejected() -> None:
    """A duplicate key, at the top or nested in payload, is rejected."""
    assert problems_of(b'{"userId": "a", "userId": "b", "eventType": "LOGIN"}') == [
        Problem("body", "duplicate key 'userId'")
    ]
    raw = b'{"userId": "a", "eventType": "LOGIN", "payload": {"k": 1, "k": 2}}'
    assert problems_of(raw) == [Problem("body", "duplicate key 'k'")]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant: str) -> None:
    """NaN and Infinity, which Python's json accepts by default, are rejected."""
    raw = f'{{"userId": "u", "eventType": "LOGIN", "payload": {{"x": {constant}}}}}'.encode()
    assert problems_of(raw) == [Problem("body", f"{constant} is not valid JSON")]


@pytest.mark.parametrize("number", [str(2**63), str(-(2**63) - 1), "1" * 30, "9" * 5000])
def test_integers_beyond_int64_are_rejected(number: str) -> None:
    """An integer outside the int64 range, however long, is rejected."""
    raw = f'{{"userId": "u", "eventType": "LOGIN", "payload": {{"x": {number}}}}}'.encode()
    assert problems_of(raw) == [Problem("body", "number out of range")]


@pytest.mark.parametrize("number", [str(2**63 - 1), str(-(2**63))])
def test_int64_bounds_are_accepted(number: str) -> None:
    """The largest and smallest int64 are accepted."""
    raw = f'{{"userId": "u", "eventType": "LOGIN", "payload": {{"x": {number}}}}}'.encode()
    assert event_from_request(raw, LIMITS).payload == {"x": int(number)}


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1.5e400"])
def test_floats_out_of_range_are_rejected(number: str) -> None:
    """A float that overflows float64 is rejected rather than becoming infinity."""
    raw = f'{{"userId": "u", "eventType": "LOGIN", "payload": {{"x": {number}}}}}'.encode()
    assert problems_of(raw) == [Problem("body", "number out of range")]


def test_deeply_nested_body_is_a_clean_invalid_request() -> None:
    """A body of 100000 nested arrays is an InvalidRequest, not a RecursionError."""
    raw = b"[" * 100_000 + b"]" * 100_000
    assert problems_of(raw) == [Problem("body", "JSON nested too deeply")]


def test_unclosed_deep_nesting_is_a_clean_invalid_request() -> None:
    """100000 unclosed '[' is an InvalidRequest, not a RecursionError."""
    [problem] = problems_of(b"[" * 100_000)
    assert problem.field == "body"


def test_deeply_nested_payload_is_a_clean_invalid_request() -> None:
    """A payload nested 500 levels (below the parser's own limit) is rejected for its depth."""
    raw = b'{"userId": "u", "eventType": "LOGIN", "payload": {"a": ' + b"[" * 500 + b"]" * 500
    assert problems_of(raw + b"}}") == [Problem("payload", "must not nest deeper than 16 levels")]


def test_lone_surrogate_in_user_id_is_a_clean_invalid_request() -> None:
    """A userId with a lone surrogate escape is rejected instead of breaking to_json later."""
    with pytest.raises(InvalidRequest):
        event_from_request(b'{"userId": "\\ud800", "eventType": "LOGIN"}', LIMITS)


def test_lone_surrogate_in_payload_is_a_clean_invalid_request() -> None:
    """A payload with a lone surrogate escape is an InvalidRequest, not UnicodeEncodeError."""
    with pytest.raises(InvalidRequest):
        event_from_request(
            b'{"userId": "u", "eventType": "LOGIN", "payload": {"k": "\\udc00"}}', LIMITS
        )


def test_all_problems_are_listed_at_once() -> None:
    """userId, eventType and payload problems are reported together, in field order."""
    raw = body(userId="", eventType="SIGNUP", payload=[1])
    assert problems_of(raw) == [
        Problem("userId", "must not be empty"),
        Problem("eventType", "must be one of LOGIN, LOGOUT, PRODUCT_VIEW"),
        Problem("payload", "must be a JSON object"),
    ]


def test_invalid_request_message_joins_problems() -> None:
    """InvalidRequest's message names each field and its problem."""
    with pytest.raises(InvalidRequest, match=r"^userId: is required; eventType: is required$"):
        event_from_request(b"{}", LIMITS)


# --- decode_event -----------------------------------------------------------------------------


def test_decode_round_trip() -> None:
    """decode_event(e.to_json()) == e for an event made from a request."""
    event = event_from_request(
        body(userId="ü\n", eventType="PRODUCT_VIEW", payload={"n": [1, 2.5, None, "x"]}), LIMITS
    )
    assert decode_event(event.to_json(), LIMITS) == event


def test_decode_valid_document() -> None:
    """A complete document becomes an event with exactly its fields."""
    document = stored()
    event = decode_event(encoded(document), LIMITS)
    assert event.to_dict() == document


def test_decode_absent_or_null_payload_is_empty_object() -> None:
    """A stored event without payload, or with null, decodes with an empty payload."""
    without = stored()
    del without["payload"]
    assert decode_event(encoded(without), LIMITS).payload == {}
    assert decode_event(encoded(stored(payload=None)), LIMITS).payload == {}


def test_decode_tombstone() -> None:
    """A None value (a Kafka tombstone) is malformed."""
    with pytest.raises(MalformedEvent, match="tombstone"):
        decode_event(None, LIMITS)


def test_decode_not_utf8() -> None:
    """Bytes that are not UTF-8 are malformed."""
    with pytest.raises(MalformedEvent, match=r"^not valid UTF-8$"):
        decode_event(b"\xff\xfe{}", LIMITS)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{}{}"])
def test_decode_not_json(raw: bytes) -> None:
    """Bytes that are not JSON are malformed."""
    with pytest.raises(MalformedEvent, match=r"^not valid JSON"):
        decode_event(raw, LIMITS)


def test_decode_json_array() -> None:
    """A JSON array is malformed and the message says what it was."""
    with pytest.raises(MalformedEvent, match=r"^JSON list instead of an object$"):
        decode_event(encoded([stored()]), LIMITS)


def test_decode_json_string() -> None:
    """A JSON string is malformed and the message says what it was."""
    with pytest.raises(MalformedEvent, match=r"^JSON str instead of an object$"):
        decode_event(b'"LOGIN"', LIMITS)


@pytest.mark.parametrize("field", ["eventId", "userId", "eventType", "timestamp"])
def test_decode_missing_field(field: str) -> None:
    """Each of the four identity fields is required in a stored event."""
    document = stored()
    del document[field]
    with pytest.raises(MalformedEvent, match=f"^{field}: is required$"):
        decode_event(encoded(document), LIMITS)


def test_decode_missing_fields_all_named() -> None:
    """An empty object names every required field."""
    with pytest.raises(MalformedEvent) as caught:
        decode_event(b"{}", LIMITS)
    assert str(caught.value) == (
        "eventId: is required; timestamp: is required; userId: is required; eventType: is required"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eventId", 12),
        ("eventId", None),
        ("eventId", ["x"]),
        ("userId", 12),
        ("userId", None),
        ("eventType", 12),
        ("timestamp", 1_700_000_000),
        ("timestamp", None),
        ("payload", []),
        ("payload", "x"),
    ],
)
def test_decode_wrong_types(field: str, value: Any) -> None:
    """A field of the wrong JSON type is malformed and named."""
    with pytest.raises(MalformedEvent, match=f"^{field}: "):
        decode_event(encoded(stored(**{field: value})), LIMITS)


def test_decode_unknown_event_type() -> None:
    """An eventType outside the limits is malformed."""
    with pytest.raises(MalformedEvent, match=r"^eventType: must be one of"):
        decode_event(encoded(stored(eventType="SIGNUP")), LIMITS)
    narrow = default_limits(event_types=frozenset({"LOGOUT"}))
    with pytest.raises(MalformedEvent, match=r"^eventType: must be one of LOGOUT$"):
        decode_event(encoded(stored(eventType="LOGIN")), narrow)


NON_CANONICAL_UUIDS = [
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "{12345678-1234-5678-1234-567812345678}",
    "12345678123456781234567812345678",
    "12345678-1234-5678-1234-56781234567A",
]


@pytest.mark.parametrize("event_id", ["", "not-a-uuid", "1234", "g" * 32, *NON_CANONICAL_UUIDS])
def test_decode_bad_event_id(event_id: str) -> None:
    """An eventId that is not a UUID in canonical lowercase form is malformed."""
    with pytest.raises(MalformedEvent, match=r"^eventId: must be a UUID in canonical lowercase"):
        decode_event(encoded(stored(eventId=event_id)), LIMITS)


@pytest.mark.parametrize(
    "timestamp",
    ["", "yesterday", "2026-13-01T00:00:00Z", "21/11/2026", "2026-11-21", "2026-11-21T10:00:00"],
)
def test_decode_bad_timestamp(timestamp: str) -> None:
    """A timestamp that is not an ISO 8601 date-time with a time zone is malformed."""
    with pytest.raises(MalformedEvent, match=r"^timestamp: must be an ISO 8601 date-time with"):
        decode_event(encoded(stored(timestamp=timestamp)), LIMITS)


def test_decode_rejects_one_megabyte_payload() -> None:
    """A 1 MB payload breaks max_payload_bytes and is malformed."""
    document = stored(payload={"blob": "x" * 1024 * 1024})
    with pytest.raises(MalformedEvent, match=r"^payload: must be at most 32768 bytes as JSON$"):
        decode_event(encoded(document), LIMITS)


def test_decode_rejects_too_deep_payload() -> None:
    """A payload deeper than max_payload_depth is malformed."""
    document = stored(payload=nested(LIMITS.max_payload_depth + 1))
    with pytest.raises(MalformedEvent, match=r"^payload: must not nest deeper than 16 levels$"):
        decode_event(encoded(document), LIMITS)


def test_decode_deeply_nested_value_is_malformed() -> None:
    """100000 nested arrays are a MalformedEvent, not a RecursionError."""
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        decode_event(b"[" * 100_000 + b"]" * 100_000, LIMITS)


def test_decode_deeply_nested_payload_is_malformed() -> None:
    """A payload nested 500 levels is a MalformedEvent, not a RecursionError (poison pill)."""
    head = encoded(stored(payload=None)).removesuffix(b"null}")
    raw = head + b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}}"
    with pytest.raises(MalformedEvent, match=r"^payload: must not nest deeper"):
        decode_event(raw, LIMITS)


def test_decode_lone_surrogate_is_malformed() -> None:
    """A userId with a lone surrogate escape is malformed, so the store never fails to encode it."""
    raw = encoded(stored(userId="PLACEHOLDER")).replace(b"PLACEHOLDER", b"\\ud800")
    with pytest.raises(MalformedEvent):
        decode_event(raw, LIMITS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"eventId": "a", "eventId": "b"}', "duplicate key 'eventId'"),
        (b'{"x": NaN}', "NaN is not valid JSON"),
        (b'{"x": 1e999}', "number out of range"),
        (b'{"x": 99999999999999999999}', "number out of range"),
    ],
)
def test_decode_is_as_strict_as_the_http_door(raw: bytes, message: str) -> None:
    """Duplicate keys, NaN and out-of-range numbers are malformed in Kafka messages too."""
    with pytest.raises(MalformedEvent, match=f"^{re.escape(message)}$"):
        decode_event(raw, LIMITS)


def canonical(payload_text: str) -> bytes:
    """The canonical encoding of an event whose payload is written as ``payload_text``."""
    head = UserEvent(
        event_id=str(uuid.uuid4()),
        user_id="u1",
        event_type="LOGIN",
        timestamp="2026-11-21T10:33:25.123Z",
        payload={},
    ).to_json()
    assert head.endswith(b'"payload":{}}')
    return head[: -len(b"{}}")] + payload_text.encode() + b"}"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"page": "/home", "n": [1, 2.5, None, True, "x"], "deep": {"a": {"b": []}}},
        {"floats": [1e16, 5e-324, -0.0, 0.1, 1.7976931348623157e308, -2.5e-8]},
        {"ints": [2**63 - 1, -(2**63), 0, -1]},
        {"text": 'é ü \u2028 "quoted" \\ \n \u001b 😀', "ключ": "значение"},
    ],
)
def test_decode_reads_each_canonical_encoding_back_exactly(payload: dict[str, Any]) -> None:
    """An event's own encoding (what the service publishes) decodes to that event, its
    encoding the very bytes read."""
    event = UserEvent(
        event_id=str(uuid.uuid4()),
        user_id="ü\n\u0000",
        event_type="PRODUCT_VIEW",
        timestamp="2026-11-21T10:33:25.123+01:00",
        payload=payload,
    )
    decoded = decode_event(event.to_json(), LIMITS)
    assert decoded == event
    assert decoded.encoded == event.to_json()


@pytest.mark.parametrize(
    ("payload_text", "message"),
    [
        ('{"k":1,"k":1}', "duplicate key 'k'"),
        ('{"a":{"k":[],"k":[]}}', "duplicate key 'k'"),
        (f'{{"x":{2**63}}}', "number out of range"),
        (f'{{"x":[1,{{"y":{2**64 - 1}}}]}}', "number out of range"),
        (f'{{"x":{2**64}}}', "number out of range"),
        (f'{{"x":-{2**63 + 1}}}', "number out of range"),
    ],
)
def test_decode_is_strict_about_compact_encodings_too(payload_text: str, message: str) -> None:
    """Written exactly like a canonical encoding, a duplicate key or an integer outside int64
    (up to 2**64, which orjson reads) is still malformed, for the strict decoder's reason."""
    with pytest.raises(MalformedEvent, match=f"^{re.escape(message)}$"):
        decode_event(canonical(payload_text), LIMITS)


def test_decode_compact_duplicate_top_level_key_is_malformed() -> None:
    """A canonical encoding with a second eventId appended is malformed, not the last one."""
    raw = canonical("{}")[:-1] + b',"eventId":"00000000-0000-4000-8000-000000000000"}'
    with pytest.raises(MalformedEvent, match=r"^duplicate key 'eventId'$"):
        decode_event(raw, LIMITS)


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    # Around the edges of int64 and of orjson's uint64, where the two decoders differ.
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 1)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _strict_outcome(raw: bytes) -> tuple[str, Any]:
    """What the strict decoder alone makes of ``raw``: the event's fields and bytes, or why not."""
    try:
        event = _stored_event(_parse_json(raw), LIMITS)
    except MalformedEvent as malformed:
        return "malformed", str(malformed)
    return "event", (event.to_dict(), event.encoded)


def _outcome(raw: bytes) -> tuple[str, Any]:
    try:
        event = decode_event(raw, LIMITS)
    except MalformedEvent as malformed:
        return "malformed", str(malformed)
    return "event", (event.to_dict(), event.encoded)


@settings(max_examples=400, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5),
    ensure_ascii=st.booleans(),
    duplicate=st.booleans(),
)
def test_decode_agrees_with_the_strict_decoder(
    payload: dict[str, Any], ensure_ascii: bool, duplicate: bool
) -> None:
    """For compact payloads however written (escaped or not, with a key repeated or not,
    integers past int64 included), decode_event says exactly what the strict decoder says."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=ensure_ascii)
    if duplicate and payload:
        first = json.dumps(next(iter(payload)), ensure_ascii=ensure_ascii)
        text = f"{text[:-1]},{first}:null}}"
    raw = canonical(text)
    assert _outcome(raw) == _strict_outcome(raw)


# --- to_json ----------------------------------------------------------------------------------


def test_to_json_canonical_field_order() -> None:
    """to_json is compact UTF-8 with eventId, userId, eventType, timestamp, payload in order."""
    event = UserEvent(
        payload={"b": 1, "a": "é"},
        timestamp="2026-11-21T10:33:25.123Z",
        event_type="LOGIN",
        user_id="u1",
        event_id="8c1f4e0a-5a0e-4b8e-9d7e-0b0b0b0b0b0b",
    )
    assert (
        event.to_json()
        == (
            '{"eventId":"8c1f4e0a-5a0e-4b8e-9d7e-0b0b0b0b0b0b","userId":"u1","eventType":"LOGIN",'
            '"timestamp":"2026-11-21T10:33:25.123Z","payload":{"b":1,"a":"é"}}'
        ).encode()
    )


def test_to_json_is_the_same_whatever_order_a_document_had() -> None:
    """A stored document with its keys shuffled re-encodes to the canonical order."""
    document = stored()
    shuffled = dict(reversed(list(document.items())))
    event = decode_event(encoded(shuffled), LIMITS)
    assert list(json.loads(event.to_json())) == [
        "eventId",
        "userId",
        "eventType",
        "timestamp",
        "payload",
    ]
    assert event.to_json() == json.dumps(document, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "payload",
    [{}, {"b": 1, "a": "é"}, {"n": [1, 2.5, None, True, {"x": "😀"}]}, {"s": '\u2028"\\'}],
)
def test_the_one_encoding_equals_a_fresh_canonical_dump(payload: dict[str, Any]) -> None:
    """The bytes made from validation's payload encoding are exactly the canonical JSON of the
    event, through either door and for a directly built event alike."""
    document = stored(payload=payload)
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    consumed = decode_event(encoded(document), LIMITS)
    assert consumed.encoded == expected
    direct = UserEvent(
        event_id=document["eventId"],
        user_id=document["userId"],
        event_type=document["eventType"],
        timestamp=document["timestamp"],
        payload=payload,
    )
    assert direct.encoded == expected
    posted = event_from_request(body(userId="u", eventType="LOGIN", payload=payload), LIMITS)
    assert json.loads(posted.encoded) == posted.to_dict()
    assert posted.to_json() is posted.encoded


@pytest.mark.parametrize(
    "number",
    [1e16, 1e-7, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 2**63 - 1, -(2**63), 10**18],
    ids=repr,
)
def test_a_payload_number_keeps_its_value_through_both_doors(number: float) -> None:
    """Whatever notation a number is written in, it reads back as the same value, and the
    consumer's encoding of a posted event is the posted one, byte for byte."""
    posted = event_from_request(
        body(userId="u", eventType="LOGIN", payload={"n": number, "l": [number]}), LIMITS
    )
    assert json.loads(posted.encoded)["payload"] == {"n": number, "l": [number]}
    assert repr(json.loads(posted.encoded)["payload"]["n"]) == repr(number)  # -0.0 stays -0.0
    assert decode_event(posted.encoded, LIMITS).encoded == posted.encoded


def test_a_payload_deeper_than_the_fast_encoder_takes_is_encoded_all_the_same() -> None:
    """Nesting past orjson's own limit (254) is still encoded, when the limits allow it."""
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"d": deep}
    limits = default_limits(max_payload_depth=400, max_payload_bytes=10_000)
    event = event_from_request(body(userId="u", eventType="LOGIN", payload=deep), limits)
    assert json.loads(event.encoded)["payload"] == deep


def test_payload_at_the_byte_limit_is_measured_on_its_encoding() -> None:
    """The limit counts the payload's compact UTF-8 bytes: one byte more is a problem."""
    limits = default_limits(max_payload_bytes=12)
    fits = {"k": "éé"}  # {"k":"éé"} is 12 bytes
    assert len(json.dumps(fits, separators=(",", ":"), ensure_ascii=False).encode()) == 12
    assert event_from_request(body(userId="u", eventType="LOGIN", payload=fits), limits)
    assert problems_of(body(userId="u", eventType="LOGIN", payload={"k": "ééé"}), limits) == [
        Problem("payload", "must be at most 12 bytes as JSON")
    ]


@pytest.mark.parametrize(
    "user_id",
    [
        "\u200b",  # zero-width space (Cf)
        "\ufeff",  # byte order mark (Cf)
        "\u200d\u2060\u200e",  # zero-width joiner, word joiner, left-to-right mark (Cf)
        "\u00a0\u3000",  # no-break space, ideographic space (Zs)
        "\u2028",  # line separator (Zl)
        "\u0301\u034f",  # combining marks without a base (Mn)
        "\u3164",  # Hangul filler: a letter that draws nothing
        "\x00\x7f",  # controls (Cc)
    ],
    ids=["zwsp", "bom", "joiners", "spaces", "line-separator", "marks", "filler", "controls"],
)
def test_user_id_of_invisible_characters_is_empty(user_id: str) -> None:
    """A userId that prints as nothing counts as empty, through either door."""
    assert problems_of(body(userId=user_id, eventType="LOGIN")) == [
        Problem("userId", "must not be empty")
    ]


@pytest.mark.parametrize("user_id", ["\u200bu", "é", "😀", "用户"])
def test_user_id_with_one_visible_character_is_accepted(user_id: str) -> None:
    """Invisible characters beside a visible one are left alone."""
    assert event_from_request(body(userId=user_id, eventType="LOGIN"), LIMITS).user_id == user_id
