"""The supervisor: the only place that creates the channels and wires the actors together.

Start-up goes from the bottom of the dependency chain to the top, and shutdown in exactly the
reverse order, which nested nurseries express directly::

    store            <- consumer (Put)            <- HTTP (ReadEvents)
    publisher        <- HTTP (PublishRequest)

    start:    store, HTTP (answering 503 until the rest runs), [topic], consumer, publisher
    shutdown: HTTP stops intake (hypercorn's trigger), in-flight requests finish
              -> publisher inbox closed: it drains, flushes, returns
              -> consumer cancelled: it commits what the store confirmed, leaves the group
              -> store inbox closed: it drains and returns

The consumer and publisher are restarted with backoff when they fail; too many failures in a
window end the service with an error so that an orchestrator can restart the process.
"""

from __future__ import annotations

import collections
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio
from trio_util import move_on_when

from actors.backoff import Backoff
from actors.consumer import run_consumer
from actors.events import Limits
from actors.health import ActorState, Health
from actors.http import HttpOptions, create_app, run_http
from actors.http_server import BindError, ServerOptions
from actors.logs import log_fields
from actors.messages import PublishRequest, StoreCommand
from actors.ports import ConsumerPort, ProducerPort
from actors.publisher import run_publisher
from actors.settings import Settings
from actors.store import run_store

__all__ = [
    "ACTORS",
    "KafkaPorts",
    "RestartPolicy",
    "TooManyRestarts",
    "run_service",
    "supervise",
]

log = logging.getLogger(__name__)

ACTORS = ("store", "consumer", "publisher", "http")

#: Room in the store's inbox; the consumer waits on each Put, so this only absorbs bursts of
#: listings and puts arriving together.
STORE_INBOX_SIZE = 64


class TooManyRestarts(Exception):
    """An actor failed more often than the restart policy allows."""


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """Restart with ``backoff``; give up after ``max_failures`` within ``window`` seconds."""

    backoff: Backoff
    max_failures: int
    window: float


@attrs.frozen(kw_only=True)
class KafkaPorts:
    """How the actors get their Kafka clients; unit tests pass in-memory ones."""

    open_producer: Callable[[], ProducerPort]
    open_consumer: Callable[[], ConsumerPort]
    create_topic: Callable[[str], Awaitable[bool]]


def kafka_ports(settings: Settings) -> KafkaPorts:
    """Ports backed by confluent-kafka, built from ``settings``."""
    from actors import kafka  # the only importer of confluent_kafka; tests can avoid it

    return KafkaPorts(
        open_producer=lambda: kafka.KafkaProducer(kafka.producer_config(settings)),
        open_consumer=lambda: kafka.KafkaConsumer(kafka.consumer_config(settings), settings.topic),
        create_topic=partial(kafka.create_topic, settings),
    )


async def supervise_actor(
    name: str,
    actor: Callable[..., Awaitable[None]],
    *,
    policy: RestartPolicy,
    health: Health,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``actor`` and restart it when it fails, until it returns normally.

    ``task_status.started()`` is reported once, when the first incarnation has started.

    Raises:
        TooManyRestarts: after ``policy.max_failures`` failures within ``policy.window``.
    """
    failures: collections.deque[float] = collections.deque()
    started = False
    while True:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(actor)
                if not started:
                    started = True
                    task_status.started()
        except Exception as failure:
            error = _innermost(failure)
            now = trio.current_time()
            failures.append(now)
            while failures and failures[0] <= now - policy.window:
                failures.popleft()
            giving_up = len(failures) >= policy.max_failures
            delay = policy.backoff.delay(len(failures))
            log.exception(
                "actor %s failed",
                name,
                exc_info=error,
                extra={
                    "structured_fields": {
                        "actor": name,
                        "failures": len(failures),
                        "retryIn": None if giving_up else round(delay, 3),
                    }
                },
            )
            if giving_up:
                raise TooManyRestarts(
                    f"{name} failed {len(failures)} times within {policy.window:g} s"
                ) from error
            health.report(
                name, ActorState.RESTARTING, f"{type(error).__name__}; retry in {delay:.2f} s"
            )
            await trio.sleep(delay)
        else:
            return


def _innermost(error: Exception) -> Exception:
    """The actor's own error, out of the single-member groups that nurseries wrap it in."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def ensure_topics(settings: Settings, ports: KafkaPorts, backoff: Backoff) -> None:
    """Create the topic (and the dead-letter topic) if missing, retrying until the broker
    answers: without the topic the consumer cannot subscribe."""
    names = [settings.topic] + ([settings.dlq_topic] if settings.dlq_topic else [])
    for name in names:
        attempt = 1
        while True:
            try:
                created = await ports.create_topic(name)
                break
            except Exception as error:  # noqa: BLE001 - any refusal is retried, loudly
                delay = backoff.delay(attempt)
                log_fields(
                    log,
                    logging.WARNING,
                    "broker not reachable; retrying",
                    bootstrapServers=settings.bootstrap_servers,
                    topic=name,
                    reason=str(error),
                    retryIn=round(delay, 2),
                )
                attempt += 1
                await trio.sleep(delay)
        log_fields(log, logging.INFO, "topic ready", topic=name, created=created)


async def run_service(
    settings: Settings,
    *,
    stop: trio.Event,
    ports: KafkaPorts,
    health: Health | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until ``stop`` is set, then shut them down in order.

    Reports the HTTP binds through ``task_status`` as soon as HTTP listens, which is before the
    broker is known to answer: until then ``/health`` and ``POST`` answer 503 with the reason.

    Raises:
        TooManyRestarts: an actor kept failing.
    """
    health = health or Health(ACTORS)
    policy = RestartPolicy(
        backoff=Backoff(
            initial=settings.restart_backoff_ms / 1000,
            maximum=settings.restart_backoff_ms / 1000 * 32,
        ),
        max_failures=settings.restart_max_failures,
        window=settings.restart_window_ms / 1000,
    )
    publish_backoff = Backoff(
        initial=settings.publish_retry_backoff_ms / 1000,
        maximum=settings.publish_retry_backoff_max_ms / 1000,
    )
    limits = Limits(
        event_types=settings.event_types,
        max_user_id_length=settings.max_user_id_length,
        max_payload_depth=settings.max_payload_depth,
        max_payload_bytes=settings.max_payload_bytes,
    )
    store_send, store_receive = trio.open_memory_channel[StoreCommand](STORE_INBOX_SIZE)
    publish_send, publish_receive = trio.open_memory_channel[PublishRequest](
        settings.publish_queue_size
    )
    consumer = partial(
        run_consumer,
        open_consumer=ports.open_consumer,
        open_dead_letter_producer=ports.open_producer,
        dlq_topic=settings.dlq_topic,
        store=store_send,
        limits=limits,
        batch_size=settings.consumer_batch_size,
        backoff=publish_backoff,
        replace_producer_after=settings.producer_replace_after_ms / 1000,
        health=health,
    )
    publisher = partial(
        run_publisher,
        inbox=publish_receive,
        open_producer=ports.open_producer,
        topic=settings.topic,
        backoff=publish_backoff,
        replace_producer_after=settings.producer_replace_after_ms / 1000,
        health=health,
    )
    app = create_app(
        publish=publish_send,
        store=store_send,
        health=health,
        options=HttpOptions(
            limits=limits,
            publish_timeout=settings.publish_timeout_ms / 1000,
            max_body_bytes=settings.max_body_bytes,
            max_listings=settings.http_max_listings,
            body_read_timeout=settings.http_body_read_seconds,
        ),
    )
    supervised = partial(supervise_actor, policy=policy, health=health)

    waiting = f"waiting for the broker at {settings.bootstrap_servers}"
    for actor in ("consumer", "publisher"):
        health.report(actor, ActorState.STARTING, waiting)

    async with trio.open_nursery() as store_nursery:
        await store_nursery.start(
            partial(
                run_store,
                inbox=store_receive,
                health=health,
                max_events=settings.store_max_events,
                max_bytes=settings.store_max_bytes,
            )
        )
        async with trio.open_nursery() as consumer_nursery:
            async with trio.open_nursery() as publisher_nursery:
                async with trio.open_nursery() as http_nursery:
                    binds = await http_nursery.start(
                        partial(
                            run_http,
                            app=app,
                            options=ServerOptions(
                                host=settings.http_host,
                                port=settings.http_port,
                                keep_alive_timeout=settings.http_keep_alive_seconds,
                                max_connections=settings.http_max_connections,
                                graceful_timeout=min(
                                    settings.publish_timeout_ms / 1000 + 1,
                                    settings.shutdown_timeout_ms / 1000,
                                ),
                            ),
                            shutdown_trigger=stop.wait,
                        )
                    )
                    health.report("http", ActorState.RUNNING)
                    log_fields(log, logging.INFO, "http started", binds=binds)
                    task_status.started(binds)
                    # NOTE: HTTP answers (503 naming the broker) while the broker is awaited,
                    # and a stop during the wait ends start-up at once.
                    async with move_on_when(stop.wait):
                        await ensure_topics(settings, ports, publish_backoff)
                    if not stop.is_set():
                        await consumer_nursery.start(supervised, "consumer", consumer)
                        await publisher_nursery.start(supervised, "publisher", publisher)
                        log_fields(log, logging.INFO, "service started", binds=binds)
                health.report("http", ActorState.STOPPED)
                log_fields(log, logging.INFO, "shutdown: http stopped; draining publisher")
                publish_send.close()
            log_fields(log, logging.INFO, "shutdown: publisher done; stopping consumer")
            consumer_nursery.cancel_scope.cancel()
        log_fields(log, logging.INFO, "shutdown: consumer done; stopping store")
        store_send.close()
    log_fields(log, logging.INFO, "shutdown complete")


async def _watch_signals(stop: trio.Event, service: trio.CancelScope, deadline: float) -> None:
    """First SIGTERM/SIGINT: graceful stop with a deadline. Second: stop now."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stop.is_set():
                log_fields(
                    log,
                    logging.INFO,
                    "shutdown requested",
                    signal=signal.Signals(signum).name,
                    deadlineSeconds=deadline,
                )
                stop.set()
                service.deadline = trio.current_time() + deadline
            else:
                log_fields(log, logging.WARNING, "second signal; stopping at once")
                service.cancel()


async def supervise(settings: Settings, ports: KafkaPorts | None = None) -> int:
    """The service's whole life, from start-up to the end of shutdown; returns an exit status.

    0 after a graceful shutdown, 1 when the shutdown deadline cut it short or an actor kept
    failing, 2 when the HTTP address cannot be listened on (a configuration error).
    """
    stop = trio.Event()
    service = trio.CancelScope()
    status = 0
    async with trio.open_nursery() as root:
        root.start_soon(_watch_signals, stop, service, settings.shutdown_timeout_ms / 1000)
        with service:
            try:
                await run_service(settings, stop=stop, ports=ports or kafka_ports(settings))
            except* BindError as group:
                # A configuration error like any other: one line naming the variable, status 2.
                print(f"configuration error: {_innermost(group)}", file=sys.stderr)
                status = 2
            except* TooManyRestarts as group:
                for error in group.exceptions:
                    log_fields(log, logging.CRITICAL, "giving up", reason=str(_innermost(error)))
                status = 1
        if service.cancelled_caught:
            log_fields(log, logging.ERROR, "shutdown deadline exceeded; remaining work cancelled")
            status = 1
        root.cancel_scope.cancel()
    return status
