"""The idempotency ledger actor: the only owner of the Idempotency-Key values this process saw.

It follows the IETF HTTP API draft "The Idempotency-Key HTTP Header Field": the first request
with a key claims it; a repeat with the same body after that request answered ``201`` is
answered with the same event and publishes nothing; a repeat while it is still in flight is
``409``; the same key with another body is ``422``; a first request that failed (``5xx``) is
forgotten, so its retry is a new attempt.

The ledger remembers, per key, only what a replay needs: the SHA-256 of the body, the eventId
and the timestamp (the rest of the event follows from the identical body). It is bounded by a
number of keys and by a time to live, and it is per process: a restart forgets every key.
Commands arrive one at a time through the inbox, so "look up, then claim" needs no lock::

    Claim(key, fingerprint, reply)   -> Claimed | Replay | InFlight | KeyReused | LedgerFull
    Settle(key, created=Replay(...)) -> remembered until now + ttl
    Settle(key, created=None)        -> forgotten
    ClaimMany(((key, fingerprint), ...), reply) -> one outcome per claim, in order
    SettleMany(((key, created), ...))

The keyed items of one batch are claimed and settled with one message each way; within it
they are claimed in order, so a key that two items of one batch carry is in flight for the
second (409) or, with another body, reused (422).
"""

from __future__ import annotations

import collections
import struct
import uuid
from typing import TypeVar

import trio

from actors.domain.messages import (
    Claim,
    Claimed,
    ClaimMany,
    ClaimOutcome,
    InFlight,
    KeyReused,
    LedgerCommand,
    LedgerFull,
    Replay,
    Settle,
    SettleMany,
)
from actors.runtime.health import ActorState, Health

__all__ = ["BYTES_PER_KEY", "IdempotencyLedger", "run_idempotency_ledger"]

ACTOR = "idempotency"

T = TypeVar("T")

#: Memory one remembered key costs with a 36-character key (a UUID, as most clients send):
#: the key string (85), its record of digest, eventId, expiry and timestamp in one bytes
#: object (113) and its entry in the ordered index (about 100): 298 measured with tracemalloc
#: on CPython 3.11 (tests/unit/test_idempotency.py measures it again). A 255-character key
#: costs 219 B more. ``IDEMPOTENCY_MAX_KEYS`` at its default of 100,000 is about 31 MB.
BYTES_PER_KEY = 310


#: Length of a fingerprint: a SHA-256 digest of the request body.
FINGERPRINT_BYTES = 32

#: An answered key's record in one bytes object (one allocation instead of five): the body's
#: digest, the eventId as 16 bytes, the expiry time, then the timestamp's ASCII.
_ANSWERED = struct.Struct(f"={FINGERPRINT_BYTES}s16sd")


def _pack(fingerprint: bytes, created: Replay, expires_at: float) -> bytes:
    event_id = uuid.UUID(created.event_id).bytes
    return _ANSWERED.pack(fingerprint, event_id, expires_at) + created.timestamp.encode()


def _expiry(record: bytes) -> float:
    expires_at: float = _ANSWERED.unpack_from(record)[2]
    return expires_at


def _fingerprint(record: bytes) -> bytes:
    return record[:FINGERPRINT_BYTES]


def _created(record: bytes) -> Replay:
    _, event_id, _ = _ANSWERED.unpack_from(record)
    timestamp = record[_ANSWERED.size :].decode()
    return Replay(event_id=str(uuid.UUID(bytes=event_id)), timestamp=timestamp)


class IdempotencyLedger:
    """Keys in flight and keys answered, bounded by ``max_keys`` and ``ttl`` seconds.

    Keys in flight are never evicted for room: their requests settle them within the publish
    timeout. One that is not settled within ``in_flight_limit`` seconds (its request's
    settlement was lost) is forgotten, so no key stays in flight for good. Answered keys expire
    ``ttl`` after their answer and, when a new key finds the ledger full, the oldest answered
    key makes room. Times are :func:`trio.current_time` values.
    """

    def __init__(self, *, max_keys: int, ttl: float, in_flight_limit: float = 60.0) -> None:
        self.max_keys = max_keys
        self.ttl = ttl
        self.in_flight_limit = in_flight_limit
        # key -> (fingerprint, claimed at), oldest claim first.
        self._in_flight: collections.OrderedDict[str, tuple[bytes, float]] = (
            collections.OrderedDict()
        )
        # Ordered by expiry: every entry lives ttl from its answer, so the oldest is first.
        self._answered: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._answered)

    def claim(self, key: str, fingerprint: bytes, now: float) -> ClaimOutcome:
        """What to do with a request carrying ``key`` and a body whose SHA-256 digest is
        ``fingerprint``; :class:`Claimed` makes the key in flight until :meth:`settle`."""
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"a fingerprint is a {FINGERPRINT_BYTES}-byte SHA-256 digest")
        self._expire(now)
        if (pending := self._in_flight.get(key)) is not None:
            return InFlight() if pending[0] == fingerprint else KeyReused()
        if (answered := self._answered.get(key)) is not None:
            return _created(answered) if _fingerprint(answered) == fingerprint else KeyReused()
        if len(self) >= self.max_keys:
            if not self._answered:
                return LedgerFull()
            self._answered.popitem(last=False)
            self.evicted += 1
        self._in_flight[key] = (fingerprint, now)
        return Claimed()

    def settle(self, key: str, created: Replay | None, now: float) -> None:
        """Remember ``created`` for the key in flight, or forget the key when ``None``."""
        pending = self._in_flight.pop(key, None)
        if pending is None or created is None:
            return
        self._answered[key] = _pack(pending[0], created, now + self.ttl)

    def _expire(self, now: float) -> None:
        while self._in_flight:
            key, (_, claimed_at) = next(iter(self._in_flight.items()))
            if claimed_at + self.in_flight_limit > now:
                break
            del self._in_flight[key]
        while self._answered:
            key, oldest = next(iter(self._answered.items()))
            if _expiry(oldest) > now:
                return
            del self._answered[key]


async def run_idempotency_ledger(
    *,
    inbox: trio.MemoryReceiveChannel[LedgerCommand],
    health: Health,
    max_keys: int,
    ttl: float,
    in_flight_limit: float = 60.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer claims and record settlements in arrival order until the inbox is closed.

    A claim whose answer cannot be delivered (the caller stopped waiting) is withdrawn at
    once: nobody would settle it.

    Cancellation: safe at any await; each command is applied whole.
    """
    ledger = IdempotencyLedger(max_keys=max_keys, ttl=ttl, in_flight_limit=in_flight_limit)
    health.report(ACTOR, ActorState.RUNNING)
    health.gauge("idempotency_keys", 0)
    task_status.started()
    async for command in inbox:
        now = trio.current_time()
        evicted_before = ledger.evicted
        match command:
            case Claim(key=key, fingerprint=fingerprint, reply=channel):
                outcome = ledger.claim(key, fingerprint, now)
                _answer_claims(ledger, health, ((key, outcome),), channel, outcome, now)
            case ClaimMany(claims=claims, reply=many_channel):
                keys = tuple(key for key, _ in claims)
                outcomes = tuple(ledger.claim(key, digest, now) for key, digest in claims)
                keyed = tuple(zip(keys, outcomes, strict=True))
                _answer_claims(ledger, health, keyed, many_channel, outcomes, now)
            case Settle(key=key, created=created):
                ledger.settle(key, created, now)
            case SettleMany(settled=settled):
                for key, created in settled:
                    ledger.settle(key, created, now)
        if ledger.evicted != evicted_before:
            health.count("idempotency_keys_evicted", ledger.evicted - evicted_before)
        health.gauge("idempotency_keys", len(ledger))
    health.report(ACTOR, ActorState.STOPPED)


def _answer_claims(
    ledger: IdempotencyLedger,
    health: Health,
    outcomes: tuple[tuple[str, ClaimOutcome], ...],
    channel: trio.MemorySendChannel[T],
    answer: T,
    now: float,
) -> None:
    """Send ``answer``; when it cannot be delivered (the caller stopped waiting), withdraw the
    claims it made, since nobody would settle them."""
    replays = sum(1 for _, outcome in outcomes if isinstance(outcome, Replay))
    if replays:
        health.count("idempotent_replays", replays)
    try:
        channel.send_nowait(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        for key, outcome in outcomes:
            if isinstance(outcome, Claimed):
                ledger.settle(key, None, now)
