"""What a client may ask of the listings and the stream: query parameters, cursors, headers.

Every problem of a request is found at once and reported together (``400`` with ``problems``),
as for event bodies. Cursors are opaque to clients: a store position, encoded so that nobody
builds one by hand, and so that its meaning may change without breaking links already given.

Synopsis::

    query = listing_query(request.args, limits)      # raises InvalidRequest listing problems
    query.limit, query.start, query.wanted            # 50, 1234, EventFilter(user_id="u1")
    encode_cursor(1234)                               # "AAAAAAAABNI"
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence

import attrs

from actors.domain.events import EventFilter, InvalidRequest, Limits, Problem

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "MAX_PAGE_LIMIT",
    "ListingQuery",
    "checked_idempotency_key",
    "decode_cursor",
    "encode_cursor",
    "event_filter",
    "idempotency_key",
    "is_plain_listing",
    "last_event_id",
    "listing_query",
]

#: The most events one page may ask for (``limit``).
MAX_PAGE_LIMIT = 1000

#: The longest Idempotency-Key accepted, in characters.
IDEMPOTENCY_KEY_MAX = 255

#: The query parameters of ``GET /events/processed``; with none of them the listing is the
#: whole array, as it always was (other parameters are ignored, as they always were).
LISTING_PARAMETERS = ("limit", "after", "userId", "eventType")

_POSITION = struct.Struct(">Q")


def encode_cursor(position: int) -> str:
    """The ``after=`` value that resumes a listing at store position ``position``."""
    return base64.urlsafe_b64encode(_POSITION.pack(position)).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int | None:
    """The store position of a cursor made by :func:`encode_cursor`; ``None`` for anything
    else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _POSITION.size or encode_cursor(_POSITION.unpack(raw)[0]) != cursor:
        return None
    position: int = _POSITION.unpack(raw)[0]
    return position


@attrs.frozen(kw_only=True)
class ListingQuery:
    """A listing's parameters: ``limit=None`` is the whole (filtered) listing, streamed."""

    limit: int | None
    start: int | None
    wanted: EventFilter


Arguments = Mapping[str, Sequence[str]]


def _single(arguments: Arguments, name: str, problems: list[Problem]) -> str | None:
    values = list(arguments.get(name, ()))
    if len(values) > 1:
        problems.append(Problem(name, "must be given at most once"))
        return None
    return values[0] if values else None


def is_plain_listing(arguments: Arguments) -> bool:
    """Whether the listing is asked for without any of its parameters."""
    return not any(name in arguments for name in LISTING_PARAMETERS)


def event_filter(arguments: Arguments, limits: Limits, problems: list[Problem]) -> EventFilter:
    """The ``userId`` and ``eventType`` filters; their problems are added to ``problems``."""
    user_id = _single(arguments, "userId", problems)
    if user_id is not None and not 1 <= len(user_id) <= limits.max_user_id_length:
        problems.append(Problem("userId", f"must be 1 to {limits.max_user_id_length} characters"))
        user_id = None
    event_type = _single(arguments, "eventType", problems)
    if event_type is not None and event_type not in limits.event_types:
        problems.append(
            Problem("eventType", f"must be one of {', '.join(sorted(limits.event_types))}")
        )
        event_type = None
    return EventFilter(user_id=user_id, event_type=event_type)


def listing_query(arguments: Arguments, limits: Limits) -> ListingQuery:
    """Parse ``limit``, ``after``, ``userId`` and ``eventType``.

    Raises:
        InvalidRequest: listing every problem found.
    """
    problems: list[Problem] = []
    limit = None
    if (raw_limit := _single(arguments, "limit", problems)) is not None:
        digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4
        if digits and 1 <= int(raw_limit) <= MAX_PAGE_LIMIT:
            limit = int(raw_limit)
        else:
            problems.append(Problem("limit", f"must be an integer from 1 to {MAX_PAGE_LIMIT}"))
    start = None
    if (cursor := _single(arguments, "after", problems)) is not None:
        start = decode_cursor(cursor)
        if start is None:
            problems.append(Problem("after", "must be a cursor from a Link header"))
    wanted = event_filter(arguments, limits, problems)
    if problems:
        raise InvalidRequest(problems)
    return ListingQuery(limit=limit, start=start, wanted=wanted)


#: Largest Last-Event-ID: a store position fits in 63 bits.
_MAX_POSITION = 2**63 - 1


def last_event_id(values: Sequence[str], problems: list[Problem]) -> int | None:
    """The ``Last-Event-ID`` header of a stream request: the position of the last event the
    client received, a non-negative integer."""
    if not values:
        return None
    if len(values) > 1:
        problems.append(Problem("Last-Event-ID", "must be given at most once"))
        return None
    raw = values[0].strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_POSITION:
        problems.append(Problem("Last-Event-ID", "must be an id this stream sent"))
        return None
    return int(raw)


def idempotency_key(values: Sequence[str], problems: list[Problem]) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 visible ASCII characters."""
    if not values:
        return None
    if len(values) > 1:
        problems.append(Problem("Idempotency-Key", "must be given at most once"))
        return None
    return checked_idempotency_key(values[0], "Idempotency-Key", problems)


def checked_idempotency_key(key: object, field: str, problems: list[Problem]) -> str | None:
    """``key`` when it is a valid idempotency key (a string of 1 to 255 visible ASCII
    characters), else ``None`` with a problem about ``field``: the header, or a batch item's
    ``idempotencyKey``."""
    if (
        isinstance(key, str)
        and 1 <= len(key) <= IDEMPOTENCY_KEY_MAX
        and all("!" <= character <= "~" for character in key)
    ):
        return key
    problems.append(Problem(field, f"must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"))
    return None
