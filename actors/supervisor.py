"""The supervisor: the only place that creates the channels and wires the actors together.

Start-up goes from the bottom of the dependency chain to the top, and shutdown in exactly the
reverse order, which nested nurseries express directly::

    store            <- consumer (PutMany)        <- HTTP (ReadEvents, GetEvent, Subscribe)
    idempotency      <- HTTP (Claim, Settle)
    publisher        <- HTTP (PublishRequest, PublishBatch)

    start:    store, idempotency, HTTP (answering 503 until the rest runs), [topic], consumer,
              publisher
    shutdown: HTTP stops intake (hypercorn's trigger) and ends its event streams, in-flight
              requests finish
              -> idempotency and publisher inboxes closed: they drain; the publisher flushes
              -> consumer cancelled: it commits what the store confirmed, leaves the group
              -> store inbox closed: it drains and returns

The consumer and publisher are restarted with backoff when they fail; too many failures in a
window end the service with an error so that an orchestrator can restart the process.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

import trio
from trio_util import move_on_when

from actors.consumer import run_consumer
from actors.domain.messages import LedgerCommand, PublisherCommand, StoreCommand
from actors.http.app import HttpOptions, create_app, run_http
from actors.http.batch import BatchOptions
from actors.http.server import BindError, ServerOptions
from actors.idempotency import run_idempotency_ledger
from actors.kafka.ports import KafkaPorts
from actors.kafka.topics import ensure_topics
from actors.publisher import run_publisher
from actors.runtime.health import ActorState, Health
from actors.runtime.logs import log_fields
from actors.runtime.metrics import Metrics
from actors.runtime.settings import KafkaSettings, Settings
from actors.runtime.signals import watch_signals
from actors.runtime.supervision import TooManyRestarts, innermost, supervise_actor
from actors.store import StreamOptions, run_store

__all__ = ["ACTORS", "http_options", "run_service", "server_options", "supervise"]

log = logging.getLogger(__name__)

ACTORS = ("store", "idempotency", "consumer", "publisher", "http")

#: The actors restarted when they fail (the others end the service).
RESTARTABLE = ("consumer", "publisher")

#: Room in the store's inbox; the consumer waits on each Put, so this only absorbs bursts of
#: listings and puts arriving together.
STORE_INBOX_SIZE = 64

#: Room in the idempotency ledger's inbox: a claim and a settlement per keyed request in
#: flight; a full inbox answers a keyed POST 503 at once.
LEDGER_INBOX_SIZE = 256


async def run_service(
    settings: Settings,
    *,
    stop: trio.Event,
    ports: KafkaPorts,
    health: Health | None = None,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until ``stop`` is set, then shut them down in order.

    ``metrics`` (one per service) is handed to every actor, which records its own
    observations there; it also reads ``health`` and the mailboxes when scraped.

    Reports the HTTP binds through ``task_status`` as soon as HTTP listens, which is before the
    broker is known to answer: until then ``/health`` and ``POST`` answer 503 with the reason.

    Raises:
        TooManyRestarts: an actor kept failing.
    """
    health = health or Health(ACTORS)
    metrics = metrics or Metrics(restartable=RESTARTABLE)
    publish_backoff = settings.publish.retry_backoff()
    limits = settings.limits.limits()
    store_send, store_receive = trio.open_memory_channel[StoreCommand](STORE_INBOX_SIZE)
    publish_send, publish_receive = trio.open_memory_channel[PublisherCommand](
        settings.publish.queue_size
    )
    ledger_send, ledger_receive = trio.open_memory_channel[LedgerCommand](LEDGER_INBOX_SIZE)
    metrics.watch_health(health)
    metrics.watch_mailbox("store", store_send)
    metrics.watch_mailbox("publisher", publish_send)
    metrics.watch_mailbox("idempotency", ledger_send)
    consumer = partial(
        run_consumer,
        open_consumer=ports.open_consumer,
        open_dead_letter_producer=ports.open_producer,
        dlq_topic=settings.kafka.dlq_topic,
        store=store_send,
        limits=limits,
        batch_size=settings.kafka.consumer_batch_size,
        backoff=publish_backoff,
        replace_producer_after=settings.publish.replace_producer_after,
        health=health,
        metrics=metrics,
    )
    publisher = partial(
        run_publisher,
        inbox=publish_receive,
        open_producer=ports.open_producer,
        topic=settings.kafka.topic,
        backoff=publish_backoff,
        replace_producer_after=settings.publish.replace_producer_after,
        health=health,
        metrics=metrics,
    )
    app = create_app(
        publish=publish_send,
        store=store_send,
        health=health,
        options=http_options(settings),
        ledger=ledger_send,
        stopping=stop,
        metrics=metrics,
    )
    supervised = partial(
        supervise_actor,
        policy=settings.supervision.restart_policy(),
        health=health,
        metrics=metrics,
    )

    waiting = f"waiting for the broker at {settings.kafka.bootstrap_servers}"
    for actor in ("consumer", "publisher"):
        health.report(actor, ActorState.STARTING, waiting)

    async with trio.open_nursery() as store_nursery:
        await store_nursery.start(
            partial(
                run_store,
                inbox=store_receive,
                health=health,
                max_events=settings.store.max_events,
                max_bytes=settings.store.max_bytes,
                streams=StreamOptions(
                    max_subscribers=settings.streams.max_subscribers,
                    buffer_events=settings.streams.buffer_events,
                ),
            )
        )
        # The ledger's inbox is closed once HTTP stopped; it ends long before the store.
        await store_nursery.start(
            partial(
                run_idempotency_ledger,
                inbox=ledger_receive,
                health=health,
                max_keys=settings.idempotency.max_keys,
                ttl=settings.idempotency.ttl_seconds,
                # Longer than any request's publish deadline: a claim still in flight then
                # lost its settlement, and stops blocking its key.
                in_flight_limit=settings.publish.timeout + 10,
            )
        )
        async with trio.open_nursery() as consumer_nursery:
            async with trio.open_nursery() as publisher_nursery:
                async with trio.open_nursery() as http_nursery:
                    binds = await http_nursery.start(
                        partial(
                            run_http,
                            app=app,
                            options=server_options(settings),
                            shutdown_trigger=stop.wait,
                        )
                    )
                    health.report("http", ActorState.RUNNING)
                    log_fields(log, logging.INFO, "http started", binds=binds)
                    task_status.started(binds)
                    # NOTE: HTTP answers (503 naming the broker) while the broker is awaited,
                    # and a stop during the wait ends start-up at once.
                    async with move_on_when(stop.wait):
                        await ensure_topics(
                            settings.kafka.topics(),
                            create_topic=ports.create_topic,
                            backoff=publish_backoff,
                            bootstrap_servers=settings.kafka.bootstrap_servers,
                        )
                    if not stop.is_set():
                        await consumer_nursery.start(supervised, "consumer", consumer)
                        await publisher_nursery.start(supervised, "publisher", publisher)
                        log_fields(log, logging.INFO, "service started", binds=binds)
                health.report("http", ActorState.STOPPED)
                log_fields(log, logging.INFO, "shutdown: http stopped; draining publisher")
                ledger_send.close()
                publish_send.close()
            log_fields(log, logging.INFO, "shutdown: publisher done; stopping consumer")
            consumer_nursery.cancel_scope.cancel()
        log_fields(log, logging.INFO, "shutdown: consumer done; stopping store")
        store_send.close()
    log_fields(log, logging.INFO, "shutdown complete")


def http_options(settings: Settings) -> HttpOptions:
    """What the HTTP routes need: the event limits, the publish deadline, request bounds."""
    return HttpOptions(
        limits=settings.limits.limits(),
        publish_timeout=settings.publish.timeout,
        max_body_bytes=settings.limits.max_body_bytes,
        max_listings=settings.http.max_listings,
        body_read_timeout=settings.http.body_read_seconds,
        batch=BatchOptions(
            max_events=settings.limits.max_batch_events,
            max_bytes=settings.limits.max_batch_bytes,
            # A batch as large as allowed must fit; else as many events as the inbox holds.
            max_waiting_events=max(settings.publish.queue_size, settings.limits.max_batch_events),
        ),
        stream_lifetime=settings.streams.lifetime,
    )


def server_options(settings: Settings) -> ServerOptions:
    """Where the HTTP server listens, its connection bounds and its shutdown grace."""
    return ServerOptions(
        host=settings.http.host,
        port=settings.http.port,
        keep_alive_timeout=settings.http.keep_alive_seconds,
        max_connections=settings.http.max_connections,
        graceful_timeout=settings.http_graceful_timeout,
        send_timeout=settings.http.send_seconds,
    )


async def supervise(settings: Settings, ports: KafkaPorts | None = None) -> int:
    """The service's whole life, from start-up to the end of shutdown; returns an exit status.

    0 after a graceful shutdown, 1 when the shutdown deadline cut it short or an actor kept
    failing, 2 when the HTTP address cannot be listened on (a configuration error).
    """
    stop = trio.Event()
    service = trio.CancelScope()
    status = 0
    async with trio.open_nursery() as root:
        root.start_soon(watch_signals, stop, service, settings.supervision.shutdown_timeout)
        with service:
            try:
                await run_service(settings, stop=stop, ports=ports or _kafka_ports(settings.kafka))
            except* BindError as group:
                # A configuration error like any other: one line naming the variable, status 2.
                print(f"configuration error: {innermost(group)}", file=sys.stderr)
                status = 2
            except* TooManyRestarts as group:
                for error in group.exceptions:
                    log_fields(log, logging.CRITICAL, "giving up", reason=str(innermost(error)))
                status = 1
        if service.cancelled_caught:
            log_fields(log, logging.ERROR, "shutdown deadline exceeded; remaining work cancelled")
            status = 1
        root.cancel_scope.cancel()
    return status


def _kafka_ports(settings: KafkaSettings) -> KafkaPorts:
    """The confluent-kafka adapters, imported only when used: unit tests never load them."""
    from actors.kafka.adapters import kafka_ports

    return kafka_ports(settings)
