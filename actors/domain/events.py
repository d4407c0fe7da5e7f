"""The UserEvent: its shape, its validation and its one canonical JSON encoding.

Two doors let events in and both are hostile: the HTTP body a client sends
(:func:`event_from_request`) and the bytes a Kafka message carries (:func:`decode_event`). Both
parse JSON strictly (UTF-8 only, no duplicate keys, no NaN or out-of-range numbers, bounded
nesting) and apply the same :class:`Limits`, so an event the service accepted over HTTP is always
one its consumer accepts.

Each event is encoded exactly once, when it is made: :attr:`UserEvent.encoded` holds its canonical
bytes, built from the payload bytes that validation measured. The publisher sends those bytes,
the HTTP actor answers with them and the store keeps them, so no path encodes an event twice.

Synopsis::

    # The service builds its limits from the settings (LimitSettings.limits()).
    limits = Limits(event_types=frozenset({"LOGIN"}), max_user_id_length=64,
                    max_payload_depth=4, max_payload_bytes=1024)
    event = event_from_request(b'{"userId": "u1", "eventType": "LOGIN"}', limits)
    event.to_json()            # b'{"eventId":"...","userId":"u1",...}'
    decode_event(event.to_json(), limits) == event
"""

from __future__ import annotations

import datetime
import json
import json.encoder
import math
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import orjson

from actors.domain.ids import new_uuid

__all__ = [
    "EVENT_ID_BYTES",
    "EVENT_TYPES",
    "EventFilter",
    "InvalidRequest",
    "Limits",
    "MalformedEvent",
    "Problem",
    "UserEvent",
    "batch_from_request",
    "decode_event",
    "event_from_document",
    "event_from_request",
    "new_event",
    "restamp",
    "utc_timestamp",
    "utc_timestamp_at",
]

#: Every eventType the service knows; the EVENT_TYPES setting may narrow it.
EVENT_TYPES = frozenset({"LOGIN", "LOGOUT", "PRODUCT_VIEW"})

_INT64 = 2**63


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds applied to every event, whichever door it comes through.

    No defaults here: the values are settings (``LimitSettings.limits()`` in
    ``actors.runtime.settings`` builds them), declared once with their variables.
    """

    event_types: frozenset[str]
    max_user_id_length: int
    max_payload_depth: int
    max_payload_bytes: int


@attrs.frozen(kw_only=True, eq=False)
class UserEvent:
    """One user-activity event, valid by construction through this module's functions.

    ``payload`` is a JSON object; treat it as read-only.
    """

    event_id: str
    user_id: str
    event_type: str
    timestamp: str
    payload: Mapping[str, Any]

    #: The canonical encoding: compact UTF-8 JSON with the five fields in a fixed order. Made
    #: once, here; the validating functions pass the payload bytes they already measured.
    encoded: bytes = attrs.field(
        repr=False,
        default=attrs.Factory(
            lambda self: _encode(
                self.event_id,
                self.user_id,
                self.event_type,
                self.timestamp,
                _payload_bytes(self.payload),
            ),
            takes_self=True,
        ),
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "eventId": self.event_id,
            "userId": self.user_id,
            "eventType": self.event_type,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }

    def to_json(self) -> bytes:
        """The canonical encoding (:attr:`encoded`), made when the event was."""
        return self.encoded

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # payload is a mutable mapping


@attrs.frozen
class Problem:
    """One thing wrong with a request: the field it concerns (or ``body``) and why."""

    field: str
    message: str


class InvalidRequest(ValueError):
    """The HTTP body cannot become an event; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


class MalformedEvent(ValueError):
    """A Kafka message is not a valid UserEvent; the message says why in a few words."""


def utc_timestamp(now: datetime.datetime | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, e.g. ``2026-11-21T10:33:25.123Z``."""
    if now is None:
        return utc_timestamp_at(time.time())
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{now.microsecond // 1000:03d}Z"
    )


#: The formatted second of the last :func:`utc_timestamp_at` call: every event and log line
#: is stamped, and formatting a date is most of the cost, so each second is formatted once.
_last_second: tuple[int, str] = (-1, "")


def utc_timestamp_at(epoch_seconds: float) -> str:
    """:func:`utc_timestamp` of a moment given as seconds since the epoch (``time.time()``)."""
    global _last_second
    milliseconds = int(epoch_seconds * 1000)
    second, millisecond = divmod(milliseconds, 1000)
    if _last_second[0] != second:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return f"{_last_second[1]}{millisecond:03d}Z"


def new_event(
    *,
    user_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    payload_bytes: bytes | None = None,
) -> UserEvent:
    """Stamp a client's fields with a fresh eventId (UUID4) and the current UTC time.

    ``payload_bytes`` is ``payload`` already encoded (compact JSON), when the caller has it.

    Raises:
        UnicodeEncodeError: a string holds a lone surrogate, which JSON can carry and UTF-8
            cannot (:func:`event_from_request` reports it as an invalid body).
    """
    return _make(
        event_id=new_uuid(),
        user_id=user_id,
        event_type=event_type,
        timestamp=utc_timestamp(),
        payload=payload,
        payload_bytes=payload_bytes,
    )


def _make(
    *,
    event_id: str,
    user_id: str,
    event_type: str,
    timestamp: str,
    payload: Mapping[str, Any],
    payload_bytes: bytes | None,
) -> UserEvent:
    if payload_bytes is None:
        payload_bytes = _payload_bytes(payload)
    return UserEvent(
        event_id=event_id,
        user_id=user_id,
        event_type=event_type,
        timestamp=timestamp,
        payload=payload,
        encoded=_encode(event_id, user_id, event_type, timestamp, payload_bytes),
    )


def restamp(event: UserEvent, *, event_id: str, timestamp: str) -> UserEvent:
    """``event`` with another identity: what an earlier request with the same body was given.

    A replayed idempotent request answers with the event it created then, whose fields other
    than these two follow from the (identical) body.
    """
    return _make(
        event_id=event_id,
        user_id=event.user_id,
        event_type=event.event_type,
        timestamp=timestamp,
        payload=event.payload,
        payload_bytes=None,
    )


def event_from_request(body: bytes, limits: Limits) -> UserEvent:
    """Validate a POST body and build the event from it.

    Client-supplied ``eventId`` and ``timestamp`` are ignored: the service always makes its own.

    Raises:
        InvalidRequest: listing every problem found, not only the first.
    """
    try:
        document = _parse_json(body)
    except MalformedEvent as error:
        raise InvalidRequest([Problem("body", str(error))]) from None
    return event_from_document(document, limits)


def event_from_document(document: Any, limits: Limits) -> UserEvent:
    """Validate one already parsed request event (a POST body, or one item of a batch) and
    build the event from it, by the rules of :func:`event_from_request`.

    Raises:
        InvalidRequest: listing every problem found.
    """
    if not isinstance(document, dict):
        raise InvalidRequest([Problem("body", "must be a JSON object")])
    problems, payload_bytes = _field_problems(document, limits, require_identity=False)
    if problems:
        raise InvalidRequest(problems)
    try:
        return new_event(
            user_id=document["userId"],
            event_type=document["eventType"],
            payload=document.get("payload") or {},
            payload_bytes=payload_bytes,
        )
    except UnicodeEncodeError as error:
        raise InvalidRequest([Problem("body", _not_json(error))]) from None


def batch_from_request(body: bytes) -> list[Any]:
    """The items of a batch body ``{"events": [...]}``, each still to be validated on its own
    (:func:`event_from_document`).

    The whole body is parsed strictly, as a single event's is, so a body that is not UTF-8 or
    not strict JSON (a duplicate key, a number out of range) anywhere is refused whole.

    Raises:
        InvalidRequest: the body is not strict JSON, not an object with an ``events`` list, or
            the list is empty.
    """
    try:
        document = _parse_json(body)
    except MalformedEvent as error:
        raise InvalidRequest([Problem("body", str(error))]) from None
    if not isinstance(document, dict):
        raise InvalidRequest([Problem("body", "must be a JSON object")])
    items = document.get("events")
    if not isinstance(items, list):
        raise InvalidRequest([Problem("events", "is required and must be a list of events")])
    if not items:
        raise InvalidRequest([Problem("events", "must hold at least one event")])
    return items


def decode_event(value: bytes | None, limits: Limits) -> UserEvent:
    """Turn a Kafka message value into an event, or say in a few words why it is not one.

    Raises:
        MalformedEvent: for a tombstone, bytes that are not UTF-8 JSON, a JSON value that is
            not an object, or an object that breaks the schema or the limits.
    """
    if value is None:
        raise MalformedEvent("null value (tombstone)")
    canonical = _canonical_event(value, limits)
    if canonical is not None:
        return canonical
    return _stored_event(_parse_json(value), limits)


def _canonical_event(value: bytes, limits: Limits) -> UserEvent | None:
    """The event ``value`` is the canonical encoding of, as every event this service publishes
    is; ``None`` for anything else, which the strict decoder then judges.

    # NOTE: orjson parses an event in a fifth of the time the strict decoder takes, but it is
    # not strict: it keeps the last of duplicate keys and reads integers up to 2**64. Bytes
    # equal to the canonical encoding re-made from what orjson read hold each key once (the
    # encoding writes every key once) and only numbers written as orjson writes the values it
    # read, so the one thing left to check is an integer in [2**63, 2**64).
    """
    try:
        event = _stored_event(orjson.loads(value), limits)
    except (orjson.JSONDecodeError, MalformedEvent):
        return None
    if event.encoded != value or _holds_uint64(event.payload):
        return None
    return event


def _stored_event(document: Any, limits: Limits) -> UserEvent:
    """The event a parsed Kafka message holds.

    Raises:
        MalformedEvent: ``document`` is not an object, or breaks the schema or the limits.
    """
    if not isinstance(document, dict):
        raise MalformedEvent(f"JSON {type(document).__name__} instead of an object")
    problems, payload_bytes = _field_problems(document, limits, require_identity=True)
    if problems:
        raise MalformedEvent("; ".join(f"{p.field}: {p.message}" for p in problems))
    try:
        return _make(
            event_id=document["eventId"],
            user_id=document["userId"],
            event_type=document["eventType"],
            timestamp=document["timestamp"],
            payload=document.get("payload") or {},
            payload_bytes=payload_bytes,
        )
    except UnicodeEncodeError as error:
        raise MalformedEvent(_not_json(error)) from None


def _holds_uint64(payload: Mapping[str, Any]) -> bool:
    """Whether the payload holds an integer of at least 2**63 (orjson reads those up to 2**64;
    the strict decoder refuses them, as it does any integer outside int64)."""
    stack: list[Any] = [payload]
    while stack:
        item = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append(child)
            elif type(child) is int and child >= _INT64:
                return True
    return False


def _field_problems(
    document: dict[str, Any], limits: Limits, *, require_identity: bool
) -> tuple[list[Problem], bytes | None]:
    """Every problem of the document, field by field, and the payload's bytes when it is valid:
    measuring the payload against the limit encodes it, and the event reuses that encoding."""
    problems = []
    for field, check, required in _STORED_CHECKS if require_identity else _REQUEST_CHECKS:
        if field not in document:
            if required:
                problems.append(Problem(field, "is required"))
            continue
        message = check(document[field], limits)
        if message:
            problems.append(Problem(field, message))
    if any(problem.field == "payload" for problem in problems):
        return problems, None
    try:
        payload_bytes = _payload_bytes(document.get("payload") or {})
    except UnicodeEncodeError:
        return problems, None  # the event's own encoding reports it, as for any other field
    if len(payload_bytes) > limits.max_payload_bytes:
        message = f"must be at most {limits.max_payload_bytes} bytes as JSON"
        return [*problems, Problem("payload", message)], None
    return problems, payload_bytes


def _user_id_problem(value: Any, limits: Limits) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    # Most userIds start with a visible ASCII character; only the others need Unicode data.
    if not ("!" <= value[:1] <= "~" or any(_visible(character) for character in value)):
        return "must not be empty"
    if len(value) > limits.max_user_id_length:
        return f"must be at most {limits.max_user_id_length} characters"
    return None


#: Unicode categories that draw nothing by themselves: controls, format characters (zero-width
#: spaces, joiners, BOM, bidi marks), separators, combining marks, unassigned and private use.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})

#: Letters and symbols that render as blank space although their category says otherwise.
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _visible(character: str) -> bool:
    """Whether ``character`` shows up when printed: a userId made only of invisible characters
    looks empty in every log and UI, so it counts as empty."""
    return not (
        character.isspace()
        or character in _BLANK_CHARACTERS
        or unicodedata.category(character) in _INVISIBLE_CATEGORIES
    )


def _event_type_problem(value: Any, limits: Limits) -> str | None:
    if not isinstance(value, str) or value not in limits.event_types:
        return f"must be one of {', '.join(sorted(limits.event_types))}"
    return None


def _payload_problem(value: Any, limits: Limits) -> str | None:
    if value is None:
        return None  # an explicit null means "no payload"
    if not isinstance(value, dict):
        return "must be a JSON object"
    if _deeper_than(value, limits.max_payload_depth):
        return f"must not nest deeper than {limits.max_payload_depth} levels"
    return None  # its size is measured on its encoding, in _field_problems


#: The canonical spelling of a UUID, ``str(uuid.UUID(...))``: lowercase hex, 8-4-4-4-12.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _event_id_problem(value: Any, limits: Limits) -> str | None:
    # Only the canonical lowercase spelling: the store deduplicates on the string, so one UUID
    # written two ways must not count as two events.
    if not isinstance(value, str) or _CANONICAL_UUID.fullmatch(value) is None:
        return "must be a UUID in canonical lowercase form"
    return None


def _timestamp_problem(value: Any, limits: Limits) -> str | None:
    message = "must be an ISO 8601 date-time with a time zone"
    if not isinstance(value, str) or "T" not in value:
        return message
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return message
    return None if moment.tzinfo is not None else message


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (``{}`` is one level).

    Iterative, and stops at the first branch past the limit: a hostile payload nested
    thousands of levels deep must not exhaust the stack.
    """
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                if level >= limit:
                    return True
                stack.append((child, level + 1))
    return False


def _encode(
    event_id: str, user_id: str, event_type: str, timestamp: str, payload_bytes: bytes
) -> bytes:
    """The canonical bytes: the five fields in order, compact, the payload as
    :func:`_payload_bytes` writes it."""
    # encode_basestring is what json.dumps(ensure_ascii=False) uses for a string, minus the
    # call's overhead, which is most of the cost for strings this short.
    head = (
        f'{{"eventId":{_string(event_id)},"userId":{_string(user_id)},'
        f'"eventType":{_string(event_type)},"timestamp":{_string(timestamp)},"payload":'
    )
    return head.encode() + payload_bytes + b"}"


#: Where every canonical encoding holds its eventId: after ``{"eventId":"``, the 36 characters
#: of a canonical UUID (both doors require one).
EVENT_ID_BYTES = slice(len('{"eventId":"'), len('{"eventId":"') + 36)

#: Where ``"userId":`` starts in every canonical encoding: after the eventId and ``",``.
_USER_ID_AT = EVENT_ID_BYTES.stop + len('",')

_EVENT_TYPE_FIELD = b',"eventType":'


@attrs.frozen
class EventFilter:
    """Which events a listing or a stream wants: one userId, one eventType, or both.

    It reads the canonical encoding instead of decoding it, so a store can filter its bytes
    without keeping anything per event: ``"userId"`` always starts at the same offset, and the
    first ``,"eventType":`` after it is the field itself, because inside the userId's JSON
    string every quote is escaped.

    Synopsis::

        wanted = EventFilter(user_id="u1", event_type="LOGIN")
        wanted.matches(event.encoded)      # True for u1's LOGIN events
    """

    user_id: str | None = None
    event_type: str | None = None
    _user_field: bytes | None = attrs.field(init=False, repr=False, eq=False)
    _type_field: bytes | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        user = None if self.user_id is None else f'"userId":{_compact(self.user_id)},'
        kind = None if self.event_type is None else f"{_compact(self.event_type)},"
        object.__setattr__(self, "_user_field", None if user is None else user.encode())
        object.__setattr__(
            self,
            "_type_field",
            None if kind is None else _EVENT_TYPE_FIELD + kind.encode(),
        )

    @property
    def everything(self) -> bool:
        return self.user_id is None and self.event_type is None

    def matches(self, encoded: bytes) -> bool:
        """Whether the event with this canonical encoding is wanted."""
        if self._user_field is not None and not encoded.startswith(self._user_field, _USER_ID_AT):
            return False
        if self._type_field is None:
            return True
        at = encoded.find(_EVENT_TYPE_FIELD, _USER_ID_AT)
        return at >= 0 and encoded.startswith(self._type_field, at)


def _payload_bytes(payload: Mapping[str, Any]) -> bytes:
    """The payload's compact JSON in UTF-8, every object's keys in their order.

    # NOTE: orjson encodes a payload in a tenth of the time the standard encoder takes, which
    # was the largest single cost of a batch event. What it refuses (a lone surrogate, nesting
    # past its own limit) goes to the standard encoder, whose error the callers already turn
    # into a problem. Floats may be written differently by the two (``1e16``, ``1e+16``): the
    # same value, and one process only ever encodes a payload with the same one.
    """
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return _compact(payload).encode()


def _not_json(error: UnicodeEncodeError) -> str:
    return f"not valid JSON ({_first_line(error)})"


_string: Callable[[str], str] = json.encoder.encode_basestring


_Check = tuple[str, Callable[[Any, Limits], str | None], bool]

#: The field checks of a request event (field, check, required), in the order problems are
#: listed; a stored event (read from Kafka) has its identity checked first.
_REQUEST_CHECKS: tuple[_Check, ...] = (
    ("userId", _user_id_problem, True),
    ("eventType", _event_type_problem, True),
    ("payload", _payload_problem, False),
)
_STORED_CHECKS: tuple[_Check, ...] = (
    ("eventId", _event_id_problem, True),
    ("timestamp", _timestamp_problem, True),
    *_REQUEST_CHECKS,
)

# One encoder and one decoder for every event: json.dumps and json.loads with options build a
# new one per call, which costs as much as encoding or parsing a small event.
_COMPACT_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _compact(value: Any) -> str:
    return _COMPACT_ENCODER.encode(value)


def _parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, finite numbers in the int64/float64 range."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("not valid UTF-8") from None
    if text.startswith("\ufeff"):  # json.loads refuses a BOM; the decoder leaves that to it
        raise MalformedEvent(f"not valid JSON ({_BOM_REFUSED})")
    try:
        # NOTE: JSON allows escaped lone surrogates ("\ud800") that no UTF-8 encoder accepts;
        # the event's one encoding rejects them (see _make's callers), not a second one here.
        document = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise MalformedEvent("JSON nested too deeply") from None
    except MalformedEvent:
        raise
    except ValueError as error:  # JSONDecodeError, int-conversion limits
        raise MalformedEvent(f"not valid JSON ({_first_line(error)})") from None
    return document


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise MalformedEvent(f"duplicate key {key!r}")
        seen.add(key)
    return dict(pairs)


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise MalformedEvent("number out of range")
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise MalformedEvent("number out of range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedEvent("number out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise MalformedEvent(f"{name} is not valid JSON")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


#: What json.loads says of a leading byte order mark.
_BOM_REFUSED = "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"

_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_int=_bounded_int,
    parse_float=_finite_float,
    parse_constant=_reject_constant,
)
