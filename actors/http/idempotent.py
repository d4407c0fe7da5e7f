"""Requests with an ``Idempotency-Key``: the HTTP side of the idempotency ledger actor.

The ledger decides (claim), the request does the work, and the outcome is recorded (settle)
even when the client has gone meanwhile: a publish that reached the broker must be remembered,
or the client's retry would publish a second event.

Synopsis::

    outcome = await claim_key(ledger, key, fingerprint(body))   # None: the ledger is busy
    ...                                                         # publish when Claimed
    await settle_key(ledger, key, Replay(event_id=..., timestamp=...))  # or None on failure
"""

from __future__ import annotations

import hashlib

import trio

from actors.domain.messages import Claim, ClaimOutcome, LedgerCommand, Replay, Settle

__all__ = ["LEDGER_SECONDS", "claim_key", "fingerprint", "settle_key"]

#: How long a request waits for the ledger before it answers 503.
LEDGER_SECONDS = 2.0


def fingerprint(body: bytes) -> bytes:
    """The body's SHA-256: the same key with another body is refused (422)."""
    return hashlib.sha256(body).digest()


async def claim_key(
    ledger: trio.MemorySendChannel[LedgerCommand], key: str, digest: bytes
) -> ClaimOutcome | None:
    """The ledger's answer for ``key``, or ``None`` when its inbox is full or it did not
    answer within :data:`LEDGER_SECONDS` (the request gets 503). A claim whose answer finds
    the caller gone is withdrawn by the ledger itself."""
    send, receive = trio.open_memory_channel[ClaimOutcome](1)
    try:
        ledger.send_nowait(Claim(key=key, fingerprint=digest, reply=send))
    except trio.WouldBlock:
        return None
    with receive, trio.move_on_after(LEDGER_SECONDS):
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
