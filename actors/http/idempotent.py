"""Requests with an ``Idempotency-Key``: the HTTP side of the idempotency ledger actor.

The ledger decides (claim), the request does the work, and the outcome is recorded (settle)
even when the client has gone meanwhile: a publish that reached the broker must be remembered,
or the client's retry would publish a second event.

Synopsis::

    outcome = await claim_key(ledger, key, fingerprint(body))   # None: the ledger is busy
    ...                                                         # publish when Claimed
    await settle_key(ledger, key, Replay(event_id=..., timestamp=...))  # or None on failure

    outcomes = await claim_keys(ledger, ((key, item_fingerprint(item)), ...))  # a batch's items
    await settle_keys(ledger, ((key, Replay(...) or None), ...))
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

import trio

from actors.domain.messages import (
    Claim,
    ClaimMany,
    ClaimOutcome,
    LedgerCommand,
    Replay,
    Settle,
    SettleMany,
)

__all__ = [
    "LEDGER_SECONDS",
    "claim_key",
    "claim_keys",
    "fingerprint",
    "item_fingerprint",
    "settle_key",
    "settle_keys",
]

T = TypeVar("T")

#: How long a request waits for the ledger before it answers 503.
LEDGER_SECONDS = 2.0


def fingerprint(body: bytes) -> bytes:
    """The body's SHA-256: the same key with another body is refused (422)."""
    return hashlib.sha256(body).digest()


def item_fingerprint(item: dict[str, Any]) -> bytes:
    """A batch item's digest: of its canonical JSON (keys sorted, no spaces), so that the same
    item sent again in another batch, spaced or ordered differently, is the same request.
    Prefixed so that it never equals a ``POST /events/generate`` body's: a key used on both
    routes is a reused key (422)."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(b"batch item\n" + canonical.encode()).digest()


async def claim_key(
    ledger: trio.MemorySendChannel[LedgerCommand], key: str, digest: bytes
) -> ClaimOutcome | None:
    """The ledger's answer for ``key``, or ``None`` when its inbox is full or it did not
    answer within :data:`LEDGER_SECONDS` (the request gets 503). A claim whose answer finds
    the caller gone is withdrawn by the ledger itself."""
    send, receive = trio.open_memory_channel[ClaimOutcome](1)
    return await _ask(ledger, Claim(key=key, fingerprint=digest, reply=send), receive)


async def claim_keys(
    ledger: trio.MemorySendChannel[LedgerCommand], claims: tuple[tuple[str, bytes], ...]
) -> tuple[ClaimOutcome, ...] | None:
    """The ledger's answer for each ``(key, digest)`` in order, in one round trip; ``None``
    as for :func:`claim_key`."""
    send, receive = trio.open_memory_channel[tuple[ClaimOutcome, ...]](1)
    return await _ask(ledger, ClaimMany(claims=claims, reply=send), receive)


async def _ask(
    ledger: trio.MemorySendChannel[LedgerCommand],
    command: LedgerCommand,
    receive: trio.MemoryReceiveChannel[T],
) -> T | None:
    with receive:
        try:
            ledger.send_nowait(command)
        except trio.WouldBlock:
            return None
        with trio.move_on_after(LEDGER_SECONDS):
            return await receive.receive()
    return None


async def settle_key(
    ledger: trio.MemorySendChannel[LedgerCommand], key: str, created: Replay | None
) -> None:
    """Record how the claimed request ended.

    Cancellation: shielded and bounded by :data:`LEDGER_SECONDS`, so a client that left does
    not leave its key in flight.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(LEDGER_SECONDS):
        await ledger.send(Settle(key=key, created=created))


async def settle_keys(
    ledger: trio.MemorySendChannel[LedgerCommand], settled: tuple[tuple[str, Replay | None], ...]
) -> None:
    """Record how each claimed item of a batch ended, as :func:`settle_key` does."""
    with trio.CancelScope(shield=True), trio.move_on_after(LEDGER_SECONDS):
        await ledger.send(SettleMany(settled=settled))
