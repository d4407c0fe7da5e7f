"""The idempotency ledger: every rule of the IETF draft, expiry and eviction, in virtual time."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from actors.domain.events import utc_timestamp
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
from actors.idempotency import BYTES_PER_KEY, IdempotencyLedger, run_idempotency_ledger
from actors.runtime.health import ActorState, Health

TTL = 60.0


def digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def created() -> Replay:
    return Replay(event_id=str(uuid.uuid4()), timestamp=utc_timestamp())


BODY, OTHER = digest(b'{"userId":"u1"}'), digest(b'{"userId":"u2"}')


def test_a_new_key_is_claimed_then_in_flight_until_settled() -> None:
    """The first claim wins; a repeat before it settles is InFlight."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL)
    assert ledger.claim("k", BODY, 0) == Claimed()
    assert ledger.claim("k", BODY, 1) == InFlight()


def test_a_repeat_after_success_replays_the_same_event() -> None:
    """Settled with its event, the key answers Replay with that eventId and timestamp."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL)
    event = created()
    ledger.claim("k", BODY, 0)
    ledger.settle("k", event, 1)
    assert ledger.claim("k", BODY, 2) == event
    assert ledger.claim("k", BODY, 3) == event


@pytest.mark.parametrize("settled", [False, True], ids=["in-flight", "answered"])
def test_the_same_key_with_another_body_is_key_reused(settled: bool) -> None:
    """Another body under a known key is KeyReused, in flight or answered, and changes
    nothing for the original body."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL)
    event = created()
    ledger.claim("k", BODY, 0)
    if settled:
        ledger.settle("k", event, 0)
    assert ledger.claim("k", OTHER, 1) == KeyReused()
    assert ledger.claim("k", BODY, 2) == (event if settled else InFlight())


def test_a_failed_first_attempt_is_forgotten() -> None:
    """Settled without an event (a 5xx), the key is free: the retry is a new attempt."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL)
    ledger.claim("k", BODY, 0)
    ledger.settle("k", None, 1)
    assert len(ledger) == 0
    assert ledger.claim("k", OTHER, 2) == Claimed()


def test_an_answered_key_expires_ttl_after_its_answer() -> None:
    """Just before ttl after the answer it still replays; at ttl it is a new key."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL)
    event = created()
    ledger.claim("k", BODY, 0)
    ledger.settle("k", event, 5)
    assert ledger.claim("k", BODY, 5 + TTL - 0.001) == event
    assert ledger.claim("k", BODY, 5 + TTL) == Claimed()


def test_expiry_frees_room_for_new_keys() -> None:
    """Expired keys no longer count against max_keys."""
    ledger = IdempotencyLedger(max_keys=2, ttl=TTL)
    for key in ("a", "b"):
        ledger.claim(key, BODY, 0)
        ledger.settle(key, created(), 0)
    assert ledger.claim("c", BODY, TTL) == Claimed()
    assert (len(ledger), ledger.evicted) == (1, 0)


def test_a_full_ledger_evicts_the_oldest_answered_key() -> None:
    """At max_keys a new key pushes out the oldest answered one, which is then new again."""
    ledger = IdempotencyLedger(max_keys=2, ttl=TTL)
    first, second = created(), created()
    ledger.claim("a", BODY, 0)
    ledger.settle("a", first, 1)
    ledger.claim("b", BODY, 2)
    ledger.settle("b", second, 3)
    assert ledger.claim("c", BODY, 4) == Claimed()
    assert ledger.evicted == 1
    assert ledger.claim("b", BODY, 5) == second
    assert ledger.claim("a", BODY, 6) == Claimed()  # "b", the oldest answered, makes room
    assert ledger.evicted == 2
    assert ledger.claim("b", BODY, 7) == LedgerFull()  # "c" and "a" in flight: no room


def test_keys_in_flight_are_never_evicted() -> None:
    """With every key in flight there is no room: LedgerFull, and the keys stay in flight."""
    ledger = IdempotencyLedger(max_keys=2, ttl=TTL)
    ledger.claim("a", BODY, 0)
    ledger.claim("b", BODY, 0)
    assert ledger.claim("c", BODY, 1) == LedgerFull()
    assert ledger.claim("a", BODY, 2) == InFlight()


def test_a_fingerprint_must_be_a_sha256_digest() -> None:
    """Anything but 32 bytes is a bug of the caller, not a request to answer."""
    with pytest.raises(ValueError, match="32-byte"):
        IdempotencyLedger(max_keys=1, ttl=TTL).claim("k", b"short", 0)


def test_bytes_per_key_covers_what_a_key_really_costs() -> None:
    """tracemalloc: 21,900 answered 36-character keys cost at most BYTES_PER_KEY each."""
    count = 21_900
    keys = [str(uuid.uuid4()) for _ in range(count)]
    answers = [(str(uuid.uuid4()), utc_timestamp()) for _ in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        ledger = IdempotencyLedger(max_keys=count, ttl=TTL)
        before = tracemalloc.get_traced_memory()[0]
        for key, (event_id, timestamp) in zip(keys, answers, strict=True):
            copied = "".join(key)  # made under tracing, as a request's header value is
            ledger.claim(copied, digest(copied.encode()), 0)
            ledger.settle(copied, Replay(event_id=event_id, timestamp=timestamp), 0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"measured {grown / count:.1f} B per remembered key")
    assert len(ledger) == count
    assert 150 < grown / count <= BYTES_PER_KEY


# --- the actor -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_ledger(
    max_keys: int = 10,
) -> AsyncIterator[tuple[trio.MemorySendChannel[LedgerCommand], Health]]:
    """The ledger actor on a fresh inbox, with its health; on exit the inbox is closed and the
    actor has returned."""
    health = Health(("idempotency",))
    send, receive = trio.open_memory_channel[LedgerCommand](8)
    ledger = functools.partial(
        run_idempotency_ledger, inbox=receive, health=health, max_keys=max_keys, ttl=TTL
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger)
        async with send:
            yield send, health


async def claim(
    inbox: trio.MemorySendChannel[LedgerCommand], key: str, fingerprint: bytes
) -> ClaimOutcome:
    send, receive = trio.open_memory_channel[ClaimOutcome](1)
    await inbox.send(Claim(key=key, fingerprint=fingerprint, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def test_actor_applies_the_rules_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through its inbox: claim, settle, replay, expiry after exactly ttl; counters and the
    key gauge follow."""
    event = created()
    async with running_ledger() as (send, health):
        assert health.state("idempotency").value is ActorState.RUNNING
        assert await claim(send, "k", BODY) == Claimed()
        await send.send(Settle(key="k", created=event))
        answered_at = trio.current_time()
        await trio.sleep(TTL - 1)
        assert await claim(send, "k", BODY) == event
        assert health.gauges["idempotency_keys"] == 1
        await trio.sleep_until(answered_at + TTL)
        assert await claim(send, "k", BODY) == Claimed()
    assert health.counters["idempotent_replays"] == 1
    assert health.state("idempotency").value is ActorState.STOPPED


async def test_actor_counts_evictions(autojump_clock: trio.testing.MockClock) -> None:
    """A key pushed out by a full ledger is counted in idempotency_keys_evicted."""
    async with running_ledger(max_keys=1) as (send, health):
        await claim(send, "a", BODY)
        await send.send(Settle(key="a", created=created()))
        assert await claim(send, "b", BODY) == Claimed()
    assert health.counters["idempotency_keys_evicted"] == 1


def test_a_key_left_in_flight_is_forgotten_after_the_in_flight_limit() -> None:
    """A claim never settled (its settlement was lost) stops blocking the key after
    in_flight_limit seconds: the next request is a new attempt."""
    ledger = IdempotencyLedger(max_keys=10, ttl=TTL, in_flight_limit=7)
    ledger.claim("k", BODY, 0)
    assert ledger.claim("k", BODY, 6.999) == InFlight()
    assert ledger.claim("k", BODY, 7) == Claimed()


async def test_a_claim_whose_caller_stopped_waiting_is_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ledger answers a claim to a caller that closed its reply channel, sees the answer
    undelivered, and withdraws the claim: the same key is then claimable at once."""
    async with running_ledger() as (send, _):
        gone_send, gone_receive = trio.open_memory_channel[ClaimOutcome](1)
        gone_receive.close()
        await send.send(Claim(key="k", fingerprint=BODY, reply=gone_send))
        assert await claim(send, "k", BODY) == Claimed()


async def claim_many(
    inbox: trio.MemorySendChannel[LedgerCommand], *claims: tuple[str, bytes]
) -> tuple[ClaimOutcome, ...]:
    send, receive = trio.open_memory_channel[tuple[ClaimOutcome, ...]](1)
    await inbox.send(ClaimMany(claims=claims, reply=send))
    with receive, trio.fail_after(1):
        return await receive.receive()


async def test_a_batch_of_claims_is_answered_in_order_by_the_same_rules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ClaimMany answers each claim as a Claim would, in order: within one batch a repeated key
    is in flight (same body) or reused (another body); SettleMany records each outcome, so the
    next batch replays the succeeded key and claims the failed one anew."""
    event = created()
    async with running_ledger() as (send, health):
        first = await claim_many(send, ("a", BODY), ("b", BODY), ("a", BODY), ("b", OTHER))
        assert first == (Claimed(), Claimed(), InFlight(), KeyReused())
        await send.send(SettleMany(settled=(("a", event), ("b", None))))
        again = await claim_many(send, ("a", BODY), ("b", BODY), ("a", OTHER))
        assert again == (event, Claimed(), KeyReused())
        assert health.gauges["idempotency_keys"] == 2
    assert health.counters["idempotent_replays"] == 1


async def test_a_batch_of_claims_whose_caller_stopped_waiting_is_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every key a ClaimMany claimed is withdrawn when its answer cannot be delivered; keys
    it found answered stay answered."""
    event = created()
    async with running_ledger() as (send, _):
        assert await claim(send, "done", BODY) == Claimed()
        await send.send(Settle(key="done", created=event))
        gone_send, gone_receive = trio.open_memory_channel[tuple[ClaimOutcome, ...]](1)
        gone_receive.close()
        claims = (("x", BODY), ("y", BODY), ("done", BODY))
        await send.send(ClaimMany(claims=claims, reply=gone_send))
        assert await claim_many(send, *claims) == (Claimed(), Claimed(), event)
