"""Topic provisioning: the service's topics exist before the consumer subscribes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from actors.runtime.backoff import Backoff
from actors.runtime.logs import log_fields

__all__ = ["ensure_topics"]

log = logging.getLogger(__name__)


async def ensure_topics(
    names: Sequence[str],
    *,
    create_topic: Callable[[str], Awaitable[bool]],
    backoff: Backoff,
    bootstrap_servers: str,
) -> None:
    """Create each of ``names`` if missing, retrying until the broker answers: without the
    topic the consumer cannot subscribe. ``bootstrap_servers`` only names the broker in logs."""
    for name in names:
        attempt = 1
        while True:
            try:
                created = await create_topic(name)
                break
            except Exception as error:  # noqa: BLE001 - any refusal is retried, loudly
                delay = backoff.delay(attempt)
                log_fields(
                    log,
                    logging.WARNING,
                    "broker not reachable; retrying",
                    bootstrapServers=bootstrap_servers,
                    topic=name,
                    reason=str(error),
                    retryIn=round(delay, 2),
                )
                attempt += 1
                await trio.sleep(delay)
        log_fields(log, logging.INFO, "topic ready", topic=name, created=created)
