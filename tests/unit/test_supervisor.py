"""The supervisor: restarts with backoff on virtual time, and the whole service over fake ports.

``run_service`` starts a real hypercorn server on a loopback socket. That is compatible with
``autojump_clock`` as long as nothing waits on real I/O while the clock may jump; the one test
that talks HTTP freezes virtual time around the request (``autojump_threshold = inf``), so
hypercorn's keep-alive and Quart's body timeouts cannot fire while the bytes travel.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from fakes import FakeConsumer, FakeProducer, FakeTopics, RecordingHealth, fake_ports
from http_wire import body_of, exchange, frozen

from actors.kafka.ports import KafkaFatalError
from actors.runtime.backoff import Backoff, no_jitter
from actors.runtime.health import ActorState, Health
from actors.runtime.settings import Settings, load_settings
from actors.runtime.supervision import RestartPolicy
from actors.supervisor import (
    ACTORS,
    KafkaPorts,
    TooManyRestarts,
    http_options,
    run_service,
    server_options,
    supervise,
    supervise_actor,
)

TOPIC = "user-activity-events"
DLQ_TOPIC = "user-activity-events.dlq"


def approx(value: object) -> object:
    """Exact virtual times, allowing only float rounding."""
    return pytest.approx(value, abs=1e-9)


def policy(*, max_failures: int = 5, window: float = 100.0) -> RestartPolicy:
    """Restart delays of exactly 1, 2, 4, ... seconds."""
    return RestartPolicy(
        backoff=Backoff(initial=1.0, maximum=60.0, jitter=no_jitter),
        max_failures=max_failures,
        window=window,
    )


class Flaky:
    """An actor whose first ``failures`` incarnations raise ``run_for`` seconds after starting.

    Later incarnations run ``run_for`` seconds and return normally. ``fail_before_started``
    makes the failing incarnations raise before reporting ``task_status.started()``.
    """

    def __init__(
        self,
        health: Health,
        *,
        failures: int,
        run_for: float = 0.0,
        fail_before_started: bool = False,
    ) -> None:
        self.health = health
        self.failures = failures
        self.run_for = run_for
        self.fail_before_started = fail_before_started
        self.starts: list[float] = []

    async def __call__(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.starts.append(trio.current_time())
        incarnation = len(self.starts)
        failing = incarnation <= self.failures
        if failing and self.fail_before_started:
            await trio.lowlevel.checkpoint()
            raise RuntimeError(f"incarnation {incarnation} failed to start")
        self.health.report("worker", ActorState.RUNNING)
        task_status.started()
        await trio.sleep(self.run_for)
        if failing:
            raise RuntimeError(f"incarnation {incarnation} failed")


# --- supervise_actor ------------------------------------------------------------------------


async def test_failing_actor_is_restarted_after_exact_backoff_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three failures: restarts after 1, 2 and 4 s, then the actor's normal return ends it."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=3)
    await supervise_actor("worker", actor, policy=policy(), health=health)
    assert actor.starts == [0.0, 1.0, 3.0, 7.0]
    assert trio.current_time() == 7.0
    assert health.journal == [
        "worker running",
        "worker restarting",
        "worker running",
        "worker restarting",
        "worker running",
        "worker restarting",
        "worker running",
    ]


async def test_restarting_is_reported_with_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While it waits to restart, health says RESTARTING and when the next try comes."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=2)
    await supervise_actor("worker", actor, policy=policy(), health=health)
    restarting = [
        (detail, at) for name, state, detail, at in health.reports if state is ActorState.RESTARTING
    ]
    assert [at for _, at in restarting] == [0.0, 1.0]
    assert [detail.split("; ")[1] for detail, _ in restarting] == [
        "retry in 1.00 s",
        "retry in 2.00 s",
    ]


async def test_restarting_detail_names_the_actors_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The RESTARTING detail names what the actor raised (RuntimeError), for /health readers."""
    health = RecordingHealth(["worker"])
    await supervise_actor("worker", Flaky(health, failures=1), policy=policy(), health=health)
    [detail] = [d for _, state, d, _ in health.reports if state is ActorState.RESTARTING]
    assert detail == "RuntimeError; retry in 1.00 s"


async def test_started_is_reported_once_by_the_first_incarnation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``nursery.start`` returns when an incarnation first starts, not again on restarts."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=2, run_for=5.0, fail_before_started=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(supervise_actor, "worker", actor, policy=policy(), health=health)
        )
        # Two incarnations died before starting (restarts after 1 s and 2 s).
        assert trio.current_time() == 3.0
        assert actor.starts == [0.0, 1.0, 3.0]
    assert trio.current_time() == 8.0


async def test_too_many_failures_within_the_window_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The third failure within 10 s raises TooManyRestarts instead of restarting again."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=100)
    with pytest.raises(TooManyRestarts, match="worker failed 3 times within 10 s") as raised:
        await supervise_actor(
            "worker", actor, policy=policy(max_failures=3, window=10.0), health=health
        )
    assert actor.starts == [0.0, 1.0, 3.0]
    assert trio.current_time() == 3.0
    assert isinstance(raised.value.__cause__, Exception)


async def test_failures_spread_wider_than_the_window_are_not_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failures 3 s apart never count two within a 2.5 s window: restart, and keep the delay."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=4, run_for=2.0)
    await supervise_actor("worker", actor, policy=policy(max_failures=2, window=2.5), health=health)
    # Each failure is alone in its window, so every restart waits the first delay (1 s).
    assert actor.starts == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert trio.current_time() == 14.0


async def test_cancelled_actor_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    """Cancellation (shutdown) is not a failure: no restart, no RESTARTING."""
    health = RecordingHealth(["worker"])
    actor = Flaky(health, failures=0, run_for=100.0)
    with trio.move_on_after(5):
        await supervise_actor("worker", actor, policy=policy(), health=health)
    assert actor.starts == [0.0]
    assert health.journal == ["worker running"]


# --- run_service over fake ports ------------------------------------------------------------


def service_settings(**overrides: str) -> Settings:
    return load_settings(
        {"HTTP_HOST": "127.0.0.1", "HTTP_PORT": "0", "KAFKA_TOPIC": TOPIC, **overrides}
    )


def test_options_handed_to_http_come_from_the_settings() -> None:
    """The HTTP routes and server get the limits, bounds and timeouts the settings give."""
    settings = service_settings(
        MAX_PAYLOAD_DEPTH="3",
        MAX_BODY_BYTES="2048",
        PUBLISH_TIMEOUT_MS="2500",
        HTTP_MAX_LISTINGS="2",
        HTTP_BODY_READ_SECONDS="7",
        HTTP_KEEP_ALIVE_SECONDS="9",
        HTTP_MAX_CONNECTIONS="64",
        SHUTDOWN_TIMEOUT_MS="3000",
    )
    routes = http_options(settings)
    assert routes.limits == settings.limits.limits()
    assert routes.limits.max_payload_depth == 3
    assert (routes.max_body_bytes, routes.publish_timeout) == (2048, 2.5)
    assert (routes.max_listings, routes.body_read_timeout) == (2, 7)
    server = server_options(settings)
    assert (server.host, server.port) == ("127.0.0.1", 0)
    assert (server.keep_alive_timeout, server.max_connections) == (9, 64)
    assert server.graceful_timeout == 3.0  # 2.5 s + 1 s, capped by the 3 s shutdown


async def wait_for_state(health: Health, actor: str, state: ActorState) -> None:
    with trio.fail_after(30):
        await health.state(actor).wait_value(state)


async def wait_until_healthy(health: Health) -> None:
    for actor in ACTORS:
        await wait_for_state(health, actor, ActorState.RUNNING)


async def http_get(
    clock: trio.testing.MockClock, bind: str, path: str, *, post: bytes | None = None
) -> tuple[int, Any]:
    """One real HTTP/1.1 GET (or POST of a JSON body), with virtual time frozen while the
    bytes travel."""
    match = re.fullmatch(r"http://([\d.]+):(\d+)", bind)
    assert match is not None
    if post is None:
        request = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    else:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(post)}\r\n\r\n"
        ).encode() + post
    with frozen(clock):
        stream = await trio.open_tcp_stream(match[1], int(match[2]))
    async with stream:
        response = await exchange(clock, stream, request)
    status = int(response.split(maxsplit=2)[1])
    return status, json.loads(body_of(response))


async def start_service(
    nursery: trio.Nursery,
    settings: Settings,
    ports: KafkaPorts,
    health: Health,
    stop: trio.Event,
) -> list[str]:
    binds: list[str] = await nursery.start(
        functools.partial(run_service, settings, stop=stop, ports=ports, health=health)
    )
    return binds


async def test_service_starts_and_reports_its_binds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run_service reports the real HTTP bind (port 0 resolved) once every actor runs."""
    health = RecordingHealth(ACTORS)
    stop = trio.Event()
    topics = FakeTopics()
    async with trio.open_nursery() as nursery:
        binds = await start_service(
            nursery,
            service_settings(KAFKA_DLQ_TOPIC=DLQ_TOPIC),
            fake_ports(topics=topics),
            health,
            stop,
        )
        [bind] = binds
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", bind)
        assert match is not None
        assert int(match[1]) > 0
        await wait_until_healthy(health)
        assert topics.created == [TOPIC, DLQ_TOPIC]
        stop.set()
    assert all(health.state(actor).value is ActorState.STOPPED for actor in ACTORS)


async def test_ensure_topics_retries_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """create_topic failing three times is retried after jittered 0.1, 0.2, 0.4 s delays."""
    journal: list[str] = []
    health = RecordingHealth(ACTORS)
    stop = trio.Event()
    topics = FakeTopics(failures=3, journal=journal)
    ports = fake_ports(topics=topics, consumers=[FakeConsumer(journal=journal)])
    async with trio.open_nursery() as nursery:
        await start_service(nursery, service_settings(), ports, health, stop)
        await wait_until_healthy(health)
        stop.set()
    names = [name for name, _ in topics.attempts]
    times = [at for _, at in topics.attempts]
    assert names == [TOPIC] * 4
    assert topics.created == [TOPIC]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # run_service uses equal jitter: each delay lies in the upper half of 0.1, 0.2, 0.4 s.
    for gap, nominal in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert nominal / 2 - 1e-9 <= gap <= nominal + 1e-9
    # The consumer did not subscribe before the topic existed.
    assert journal.index(f"create_topic {TOPIC}") < journal.index("consumer.consume")


async def test_shutdown_runs_in_order(autojump_clock: trio.testing.MockClock) -> None:
    """On stop: HTTP stops, the publisher flushes and returns, the consumer closes, the store
    stops, each only after the one before."""
    journal: list[str] = []
    health = RecordingHealth(ACTORS, journal)
    stop = trio.Event()
    consumer = FakeConsumer(journal=journal)
    dead_letters = FakeProducer(journal=journal, name="dlq")
    producer = FakeProducer(journal=journal, name="producer")
    # The consumer (and its dead-letter producer) start before the publisher.
    ports = fake_ports(producers=[dead_letters, producer], consumers=[consumer])
    async with trio.open_nursery() as nursery:
        await start_service(
            nursery, service_settings(KAFKA_DLQ_TOPIC=DLQ_TOPIC), ports, health, stop
        )
        await wait_until_healthy(health)
        journal.clear()
        stop.set()
    # The idempotency ledger stops beside the publisher: after HTTP, before the consumer.
    ledger_at = journal.index("idempotency stopped")
    assert journal.index("http stopped") < ledger_at < journal.index("consumer.close")
    assert [e for e in journal if e not in {"consumer.consume", "idempotency stopped"}] == [
        "http stopped",
        "producer.flush",
        "publisher stopped",
        "consumer.close",
        "dlq.flush",
        "consumer stopped",
        "store stopped",
    ]
    assert len(consumer.closes) == 1


async def test_publisher_crash_restarts_it_and_http_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A crashing publisher is restarted with a new producer; HTTP never stops meanwhile."""
    health = RecordingHealth(ACTORS)
    stop = trio.Event()
    crashing, replacement = FakeProducer(), FakeProducer()
    opened: list[FakeProducer] = []

    def open_producer() -> FakeProducer:
        producer = [crashing, replacement][len(opened)]
        opened.append(producer)
        return producer

    settings = service_settings(RESTART_BACKOFF_MS="200")
    async with trio.open_nursery() as nursery:
        [bind] = await start_service(
            nursery, settings, fake_ports(producers=open_producer), health, stop
        )
        await wait_until_healthy(health)
        # NOTE: not KafkaFatalError: a fatal producer is replaced inside the actor.
        crashing.crash_next_poll(RuntimeError("a bug in the publisher"))
        await wait_for_state(health, "publisher", ActorState.RESTARTING)
        await wait_for_state(health, "publisher", ActorState.RUNNING)
        assert opened == [crashing, replacement]
        status, body = await http_get(autojump_clock, bind, "/health")
        assert status == 200
        assert body["status"] == "ok"
        stop.set()
    assert [entry for entry in health.journal if entry.startswith("http ")] == [
        "http running",
        "http stopped",
    ]
    assert [entry for entry in health.journal if entry.startswith("publisher ")] == [
        "publisher running",
        "publisher stopped",  # the crashed incarnation's exit
        "publisher restarting",
        "publisher running",
        "publisher stopped",
    ]
    assert replacement.flushes  # the new publisher drained on shutdown


async def test_http_answers_while_the_broker_is_missing_and_all_recovers_by_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no broker, HTTP is up at once: /health 503 naming the broker, POST 503 with
    Retry-After, the listing 200 and empty. Once the broker answers, all runs by itself."""
    health = RecordingHealth(ACTORS)
    stop = trio.Event()
    topics = FakeTopics(failures=10)
    settings = service_settings(KAFKA_BOOTSTRAP_SERVERS="kafka.invalid:9092")
    async with trio.open_nursery() as nursery:
        [bind] = await start_service(nursery, settings, fake_ports(topics=topics), health, stop)
        assert trio.current_time() == 0
        assert health.state("http").value is ActorState.RUNNING
        status, body = await http_get(autojump_clock, bind, "/health")
        assert status == 503
        waiting = "waiting for the broker at kafka.invalid:9092"
        assert body["actors"]["publisher"] == {"state": "starting", "detail": waiting}
        assert body["actors"]["consumer"] == {"state": "starting", "detail": waiting}
        event = b'{"userId": "u1", "eventType": "LOGIN"}'
        status, body = await http_get(autojump_clock, bind, "/events/generate", post=event)
        assert (status, body["message"]) == (503, waiting)
        assert await http_get(autojump_clock, bind, "/events/processed") == (200, [])
        await wait_until_healthy(health)
        assert topics.calls.value == 11
        status, _ = await http_get(autojump_clock, bind, "/events/generate", post=event)
        assert status == 201
        stop.set()


async def test_stop_while_waiting_for_the_broker_returns_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stop during start-up (broker still unreachable) ends run_service at once."""
    health = RecordingHealth(ACTORS)
    stop = trio.Event()
    topics = FakeTopics(failures=1_000_000)
    ports = fake_ports(topics=topics)
    with trio.move_on_after(60) as gave_up:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    run_service, service_settings(), stop=stop, ports=ports, health=health
                )
            )
            await topics.calls.wait_value(lambda calls: calls >= 5)
            stopped_at = trio.current_time()
            stop.set()
    assert not gave_up.cancelled_caught
    assert trio.current_time() == stopped_at
    assert health.state("store").value is ActorState.STOPPED


def always_fatal_consumers() -> Callable[[], FakeConsumer]:
    opened: list[FakeConsumer] = []

    def open_consumer() -> FakeConsumer:
        consumer = FakeConsumer()
        consumer.fail_next_consume(KafkaFatalError("_FATAL: fenced"))
        opened.append(consumer)
        return consumer

    open_consumer.opened = opened  # type: ignore[attr-defined]
    return open_consumer


async def test_supervise_returns_1_when_an_actor_keeps_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that fails at every start makes supervise() give up with exit status 1."""
    open_consumer = always_fatal_consumers()
    settings = service_settings(RESTART_MAX_FAILURES="3", RESTART_BACKOFF_MS="100")
    status = await supervise(settings, fake_ports(consumers=open_consumer))
    assert status == 1
    opened: list[FakeConsumer] = open_consumer.opened  # type: ignore[attr-defined]
    assert len(opened) == 3
    assert all(len(consumer.closes) == 1 for consumer in opened)


async def test_run_service_raises_too_many_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run_service itself ends with TooManyRestarts (in a group) when the consumer keeps dying."""
    health = RecordingHealth(ACTORS)
    settings = service_settings(RESTART_MAX_FAILURES="2", RESTART_BACKOFF_MS="100")
    with pytest.RaisesGroup(TooManyRestarts, flatten_subgroups=True):
        await run_service(
            settings,
            stop=trio.Event(),
            ports=fake_ports(consumers=always_fatal_consumers()),
            health=health,
        )
    assert "consumer restarting" in health.journal


async def test_taken_http_port_is_a_configuration_error_before_any_broker_call(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port already listened on ends supervise() with status 2 and one stderr line naming
    HTTP_PORT, before the broker is ever asked for anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        topics = FakeTopics()
        status = await supervise(service_settings(HTTP_PORT=str(port)), fake_ports(topics=topics))
    assert status == 2
    assert capsys.readouterr().err == (
        f"configuration error: HTTP_PORT={port}: address already in use\n"
    )
    assert topics.calls.value == 0
