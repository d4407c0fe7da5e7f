"""Integration fixtures: a real broker, the real service process, real HTTP, independent clients.

Two modes:

- **Default**: the session starts a fresh Tansu broker (or uses ``KAFKA_BOOTSTRAP_SERVERS`` when
  it is set), and each test starts the service as a subprocess (``python -m actors``) on its own
  topic and consumer group, with fast consumer-group timings and a free HTTP port. Nothing is
  ever skipped in this mode; a broker that cannot be had fails the tests.
- **External** (``APP_URL`` set, e.g. a compose stack): no process is spawned; ``service()``
  returns a handle on ``APP_URL``, the broker is ``KAFKA_BOOTSTRAP_SERVERS`` and the topic and
  group are the service's configured ones. Tests that stop, restart or kill the process, or read
  its stdout, request :func:`process_control`, which skips in this mode only.

Synopsis::

    def test_something(service: Services, kafka: KafkaTools, topic: str) -> None:
        app = service()                                   # healthy, ready to use
        body = app.post_event(user_id="u1")
        app.wait_processed({body["eventId"]})
        kafka.produce(topic, [(b"u1", b"not json")])

    def test_restart(process_control: Spawn) -> None:
        first = process_control(env={"SHUTDOWN_TIMEOUT_MS": "2000"})
        assert first.terminate() == 0
        second = process_control()                        # same topic and group
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
import httpx
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from actors.devtools.local_broker import (
    LocalBroker,
    LocalBrokerError,
    free_port,
    start_local_broker,
)
from actors.runtime.settings import SETTINGS

__all__ = [
    "Broker",
    "KafkaTools",
    "ServiceHandle",
    "ServiceProcess",
    "Services",
    "Spawn",
    "wait_until",
]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]

#: How long a spawned service may take to answer ``GET /health`` with 200 (topic created,
#: consumer group joined: about 1 s of that is Tansu holding the first JoinGroup).
HEALTH_TIMEOUT = 30.0

#: Bound on any single test; the whole integration run should take well under two minutes.
TEST_TIMEOUT = 90

#: Settings every spawned service gets (see the broker notes: fast group timings and fetches).
FAST_SETTINGS = {
    "HTTP_HOST": "127.0.0.1",
    "KAFKA_SESSION_TIMEOUT_MS": "1000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    "KAFKA_FETCH_WAIT_MAX_MS": "100",
}

_DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}

T = TypeVar("T")


# --- marking and reporting -------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration is an integration test with a bounded run time."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


_SERVICES = pytest.StashKey["Services"]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On a failure, show the tail of every service process the test started."""
    report = yield
    services = item.stash.get(_SERVICES, None)
    if report.failed and services is not None:
        for process in services.processes:
            report.sections.append((f"{process.name} output (tail)", process.log_tail()))
    return report


# --- waiting ---------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T | None], timeout: float, *, what: str, interval: float = 0.05
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; bounded.

    Raises:
        AssertionError: naming ``what`` and the last value seen, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last {value!r}"
            )
        time.sleep(interval)


# --- the broker ------------------------------------------------------------------------------


@attrs.frozen
class Broker:
    """A broker that answered ``list_topics()``; ``local`` is set when this session started it."""

    bootstrap_servers: str
    local: LocalBroker | None = None


def _wait_for_broker(bootstrap_servers: str, timeout: float = 20.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=2)
        except KafkaException as error:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"broker {bootstrap_servers} did not answer list_topics() within "
                    f"{timeout:g} s: {error}",
                    pytrace=False,
                )
            time.sleep(0.05)
        else:
            return


@pytest.fixture(scope="session")
def app_url() -> str | None:
    """``APP_URL`` when the tests drive an externally run service, else ``None``."""
    return os.environ.get("APP_URL", "").strip().rstrip("/") or None


@pytest.fixture(scope="session")
def broker(app_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh Tansu for this session; fails (never
    skips) when no broker can be had."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        _wait_for_broker(configured)
        yield Broker(configured)
        return
    if app_url is not None:
        pytest.fail(
            "APP_URL is set but KAFKA_BOOTSTRAP_SERVERS is not: the tests need the broker the "
            "external service uses",
            pytrace=False,
        )
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with log_path.open("wb") as output:
        try:
            local = start_local_broker(output=output)
        except LocalBrokerError as error:
            pytest.fail(f"could not start the local broker: {error}", pytrace=False)
    try:
        _wait_for_broker(local.bootstrap_servers)
        if not local.alive():  # Tansu on a busy port panics and exits 0; someone else answered
            pytest.fail(
                f"the local broker exited (code {local.process.returncode}) after start-up; "
                f"see {log_path}",
                pytrace=False,
            )
        yield Broker(local.bootstrap_servers, local)
    finally:
        local.stop()  # SIGINT: Tansu exits at once (SIGTERM waits for clients)


@pytest.fixture
def topic(app_url: str | None) -> str:
    """A fresh topic name per test; the service's configured topic in external mode."""
    if app_url is not None:
        return os.environ.get("KAFKA_TOPIC", _DEFAULTS["KAFKA_TOPIC"])
    return f"it-{uuid.uuid4().hex}"


@pytest.fixture
def group(app_url: str | None) -> str:
    """A fresh consumer group per test; the service's configured group in external mode."""
    if app_url is not None:
        return os.environ.get("KAFKA_CONSUMER_GROUP", _DEFAULTS["KAFKA_CONSUMER_GROUP"])
    return f"it-group-{uuid.uuid4().hex}"


# --- independent Kafka clients ---------------------------------------------------------------


class KafkaTools:
    """A producer and readers that share nothing with the service but the broker."""

    def __init__(self, bootstrap_servers: str, *, message_max_bytes: int | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        # Idempotent so that messages of one key land in the order they were produced.
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
        }
        if message_max_bytes is not None:
            config["message.max.bytes"] = message_max_bytes
        self._producer = Producer(config)

    def produce(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], timeout: float = 10
    ) -> list[tuple[int, int]]:
        """Put ``(key, value)`` pairs on ``topic`` as raw bytes, in order, and wait for the acks.

        Returns:
            ``(partition, offset)`` of each message, in the order given.
        """
        return self.produce_with_headers(
            topic, [(key, value, []) for key, value in messages], timeout
        )

    def produce_with_headers(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
        timeout: float = 10,
    ) -> list[tuple[int, int]]:
        """Like :meth:`produce`, for ``(key, value, headers)`` records."""
        reports: list[tuple[KafkaError | None, Message] | None] = [None] * len(records)

        def delivered(index: int, error: KafkaError | None, message: Message) -> None:
            reports[index] = (error, message)

        for index, (key, value, headers) in enumerate(records):
            self._producer.produce(
                topic,
                key=key,
                value=value,
                headers=headers or None,
                on_delivery=partial(delivered, index),
            )
        left = self._producer.flush(timeout)
        assert left == 0, f"{left} message(s) not delivered to {topic} within {timeout:g} s"
        positions = []
        for index, report in enumerate(reports):
            assert report is not None
            error, message = report
            assert error is None, f"the broker refused message {index} for {topic}: {error}"
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            positions.append((partition, offset))
        return positions

    def produce_events(self, topic: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Produce events as the service would: compact JSON, keyed by userId."""
        self.produce(
            topic,
            [
                (str(event["userId"]).encode(), json.dumps(event, separators=(",", ":")).encode())
                for event in events
            ],
        )

    def read(
        self,
        topic: str,
        *,
        count: int | None = None,
        until: Callable[[list[Message]], bool] | None = None,
        timeout: float = 10,
    ) -> list[Message]:
        """Read ``topic`` from the beginning of every partition until ``count`` messages (or
        ``until(messages)``) or ``timeout``; returns what was read.

        Uses its own group id, never committed, and assigns the partitions directly: no group
        join (which Tansu holds for a second), and nothing the service's group could see.
        """
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"it-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=5).topics[topic]
            assert metadata.error is None, f"topic {topic}: {metadata.error}"
            consumer.assign(
                [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            )
            messages: list[Message] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    assert message.error() is None, f"consume error: {message.error()}"
                    messages.append(message)
                if count is not None and len(messages) >= count:
                    break
                if until is not None and until(messages):
                    break
            return messages
        finally:
            consumer.close()

    def close(self) -> None:
        self._producer.flush(5)


@pytest.fixture(scope="session")
def kafka(broker: Broker) -> Iterator[KafkaTools]:
    """Independent producer and reader on the test broker."""
    tools = KafkaTools(broker.bootstrap_servers)
    yield tools
    tools.close()


# --- the service -----------------------------------------------------------------------------


@attrs.define
class ServiceHandle:
    """Real HTTP to a running service, spawned or external."""

    base_url: str
    topic: str
    group: str
    name: str = "service"
    http: httpx.Client = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.http = self._new_client()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=10.0,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )

    def drop_connections(self) -> None:
        """Close the pooled keep-alive connections; later requests open new ones."""
        self.http.close()
        self.http = self._new_client()

    def health(self) -> httpx.Response:
        return self.http.get("/health")

    def post_event(
        self, *, user_id: str, event_type: str = "LOGIN", payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /events/generate; asserts 201 and returns the body."""
        body: dict[str, Any] = {"userId": user_id, "eventType": event_type}
        if payload is not None:
            body["payload"] = payload
        response = self.http.post("/events/generate", json=body)
        assert response.status_code == 201, f"{response.status_code}: {response.text}"
        created: dict[str, Any] = response.json()
        return created

    def processed(self) -> list[dict[str, Any]]:
        """GET /events/processed; asserts 200."""
        response = self.http.get("/events/processed")
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        events: list[dict[str, Any]] = response.json()
        return events

    def wait_processed(self, event_ids: set[str], timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until every id in ``event_ids`` is listed; returns the whole listing."""

        def listing() -> list[dict[str, Any]] | None:
            events = self.processed()
            return events if event_ids <= {event["eventId"] for event in events} else None

        return wait_until(listing, timeout, what=f"{len(event_ids)} event(s) in {self.name}")

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
        last = "no answer"
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            try:
                response = self.http.get("/health", timeout=1.0)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if response.status_code == 200:
                    status: dict[str, Any] = response.json()
                    return status
                last = f"{response.status_code} {response.text}"
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} at {self.base_url} not healthy within {timeout:g} s; last "
                    f"answer: {last}{self._diagnostics()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def _check_running(self) -> None:
        """Spawned processes fail fast when the process died."""

    def _diagnostics(self) -> str:
        return ""

    def close(self) -> None:
        self.http.close()


@attrs.define
class ServiceProcess(ServiceHandle):
    """A service this test started: its process, its output file, and how to stop it."""

    process: subprocess.Popen[bytes] = attrs.field(kw_only=True)
    log_path: Path = attrs.field(kw_only=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, wait for the exit and return the exit code.

        Raises:
            AssertionError: the process was still running ``timeout`` seconds later (it is
                killed first).
        """
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running {timeout:g} s after SIGTERM; killed"
            ) from None

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (``-9`` unless it had already exited)."""
        if self.alive():
            self.process.kill()
        return self.process.wait()

    def stop(self) -> None:
        """Teardown: gracefully if it can, by force if it must; never raises."""
        with contextlib.suppress(AssertionError):
            self.terminate()
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of output, without the access lines of polling GETs."""
        kept = [
            line
            for line in self.log_text().splitlines()
            if not ('"actors.http.access"' in line and '"method": "GET"' in line)
        ]
        return "\n".join(kept[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far; other output (tracebacks) is left out."""
        parsed = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    parsed.append(record)
        return parsed

    def wait_for_logs(
        self, match: Callable[[dict[str, Any]], bool], *, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` log lines satisfy ``match``; returns all that do."""

        def matching() -> list[dict[str, Any]] | None:
            found = [line for line in self.log_lines() if match(line)]
            return found if len(found) >= count else None

        return wait_until(matching, timeout, what=f"{count} matching log line(s) of {self.name}")

    def children(self) -> list[int]:
        """Pids whose parent is this process (Linux /proc)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # pid (comm) state ppid ...; comm may hold spaces and parentheses
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def _check_running(self) -> None:
        if not self.alive():
            pytest.fail(
                f"{self.name} exited with code {self.process.returncode} before it was healthy"
                f"{self._diagnostics()}",
                pytrace=False,
            )

    def _diagnostics(self) -> str:
        return f"\n--- {self.name} output ({self.log_path}), last lines:\n{self.log_tail()}"


class Spawn(Protocol):
    """Start another service process (see :meth:`Services.spawn`)."""

    def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        wait_healthy: bool = True,
        bootstrap_servers: str | None = None,
    ) -> ServiceProcess: ...


class Services:
    """The ``service`` fixture: starts services for one test and stops them all afterwards.

    Every process of a test shares the test's topic and consumer group, so a second
    ``spawn()`` after ``terminate()`` is a restart.
    """

    def __init__(
        self,
        *,
        broker: Broker,
        topic: str,
        group: str,
        tmp_path: Path,
        app_url: str | None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.group = group
        self.tmp_path = tmp_path
        self.app_url = app_url
        self.processes: list[ServiceProcess] = []
        self._external: ServiceHandle | None = None

    @property
    def external(self) -> bool:
        return self.app_url is not None

    def __call__(self, env: Mapping[str, str] | None = None) -> ServiceHandle:
        """A healthy service: a new process, or in external mode the one at ``APP_URL``."""
        if self.app_url is None:
            return self.spawn(env)
        if env:
            raise RuntimeError(
                "settings cannot be changed on an external service; request process_control"
            )
        if self._external is None:
            self._external = ServiceHandle(
                base_url=self.app_url, topic=self.topic, group=self.group, name="external service"
            )
            self._external.wait_healthy()
        return self._external

    def environment(
        self, port: int, overrides: Mapping[str, str], bootstrap_servers: str | None
    ) -> dict[str, str]:
        """The child's environment: none of the service's variables leak in from ours."""
        env = {key: value for key, value in os.environ.items() if key not in _DEFAULTS}
        env.pop("APP_URL", None)
        env |= FAST_SETTINGS | {
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers or self.broker.bootstrap_servers,
            "KAFKA_TOPIC": self.topic,
            "KAFKA_CONSUMER_GROUP": self.group,
            "HTTP_PORT": str(port),
        }
        return env | dict(overrides)

    def spawn(
        self,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        wait_healthy: bool = True,
        bootstrap_servers: str | None = None,
        module: str = "actors",
    ) -> ServiceProcess:
        """Start ``python -m actors`` with the test's settings plus ``env``.

        Args:
            env: extra or overriding variables (``HTTP_PORT`` included, if a test must).
            args: command-line arguments, e.g. ``("--local-broker",)``.
            wait_healthy: wait (bounded) until ``GET /health`` answers 200.
            bootstrap_servers: another address for the broker, e.g. a proxy in front of it.
            module: the module to run instead of ``actors`` (a test's fault-injecting wrapper).
        """
        if self.app_url is not None:
            raise RuntimeError("cannot spawn with APP_URL set; request process_control")
        overrides = dict(env or {})
        port = int(overrides.get("HTTP_PORT") or free_port())
        number = len(self.processes) + 1
        log_path = self.tmp_path / f"service-{number}.log"
        with log_path.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO_ROOT,
                env=self.environment(port, overrides, bootstrap_servers),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        handle = ServiceProcess(
            base_url=f"http://127.0.0.1:{port}",
            topic=self.topic,
            group=self.group,
            name=f"{module} {number} (pid {process.pid})",
            process=process,
            log_path=log_path,
        )
        self.processes.append(handle)
        if wait_healthy:
            handle.wait_healthy()
        return handle

    def close(self) -> None:
        for process in self.processes:
            process.stop()
            process.close()
        if self._external is not None:
            self._external.close()


@pytest.fixture
def service(
    request: pytest.FixtureRequest,
    broker: Broker,
    topic: str,
    group: str,
    tmp_path: Path,
    app_url: str | None,
) -> Iterator[Services]:
    """Factory of running services on this test's topic and group; stops them all at the end."""
    services = Services(broker=broker, topic=topic, group=group, tmp_path=tmp_path, app_url=app_url)
    request.node.stash[_SERVICES] = services
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
def process_control(service: Services) -> Spawn:
    """Spawn service processes the test may stop, restart, kill or read the output of.

    Skips only in external mode (``APP_URL``), where the process is not the tests' to control.
    """
    if service.external:
        pytest.skip(
            "needs to start/stop the service process or read its stdout; APP_URL points at an "
            "externally managed service"
        )
    return service.spawn


# --- fault injection -------------------------------------------------------------------------

# NOTE: imported here rather than at the top so that this section stays self-contained.

from confluent_kafka import ConsumerGroupTopicPartitions  # noqa: E402

from .brokers import BROKER_KINDS, StallableBroker, start_stallable  # noqa: E402
from .proxy import TcpProxy  # noqa: E402


@attrs.frozen
class ProxiedBroker:
    """A Tansu of its own behind a :class:`TcpProxy` that a test may cut and restore.

    The broker advertises the proxy's address, so every client (the service's and ``kafka``, an
    independent reader and producer) reaches it only through the proxy. Read with ``kafka``
    only while the proxy forwards.
    """

    local: LocalBroker
    proxy: TcpProxy
    kafka: KafkaTools

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.proxy.listen_port}"


@pytest.fixture
def proxied_broker(service: Services, tmp_path: Path) -> Iterator[ProxiedBroker]:
    """A fresh broker reachable only through a cuttable proxy; the services this test spawned
    are stopped before it (with the path restored, so that they stop promptly)."""
    if service.external:
        pytest.skip("cuts the path between the service and its broker; APP_URL is external")
    proxy_port = free_port()
    with (tmp_path / "tansu-proxied.log").open("wb") as output:
        local = start_local_broker(advertised_port=proxy_port, output=output)
    try:
        with TcpProxy(listen_port=proxy_port, target_port=local.port) as proxy:
            address = f"127.0.0.1:{proxy_port}"
            _wait_for_broker(address)
            if not local.alive():
                pytest.fail(f"the proxied broker exited (code {local.process.returncode})")
            tools = KafkaTools(address)
            try:
                yield ProxiedBroker(local=local, proxy=proxy, kafka=tools)
            finally:
                proxy.restore()
                service.close()
                tools.close()
    finally:
        local.stop()


@attrs.frozen
class OwnBroker:
    """A broker process of this test's own (so it may be paused) and a client set on it."""

    broker: StallableBroker
    kafka: KafkaTools

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers


@pytest.fixture(params=sorted(BROKER_KINDS))
def stallable_broker(
    request: pytest.FixtureRequest, service: Services, tmp_path: Path
) -> Iterator[OwnBroker]:
    """A fresh broker of each kind in ``BROKER_KINDS`` that the test may pause and resume; the
    services this test spawned are stopped before it (with the broker running again)."""
    if service.external:
        pytest.skip("pauses the service's broker; APP_URL is external")
    broker = start_stallable(request.param, log_dir=tmp_path)
    try:
        _wait_for_broker(broker.bootstrap_servers)
        if not broker.alive():
            pytest.fail(f"the {broker.kind} broker exited (code {broker.process.returncode})")
        tools = KafkaTools(broker.bootstrap_servers)
        try:
            yield OwnBroker(broker, tools)
        finally:
            broker.resume()
            service.close()
            tools.close()
    finally:
        broker.stop()


def spawn_module(
    services: Services,
    module: str,
    env: Mapping[str, str] | None = None,
    *,
    wait_healthy: bool = True,
    bootstrap_servers: str | None = None,
) -> ServiceProcess:
    """Like :meth:`Services.spawn`, but run ``python -m module`` (a test's wrapper around
    ``actors.__main__.main`` that injects a fault) instead of ``python -m actors``."""
    if services.external:
        pytest.skip("runs a fault-injecting build of the service; APP_URL is external")
    return services.spawn(
        env, wait_healthy=wait_healthy, bootstrap_servers=bootstrap_servers, module=module
    )


def committed_offsets(bootstrap_servers: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions without a commit
    are left out), as the broker reports it now."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    partitions = admin.list_topics(topic, timeout=5).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, partition) for partition in partitions]
    )
    answer = admin.list_consumer_group_offsets([request], request_timeout=5)[group].result()
    return {
        position.partition: position.offset
        for position in answer.topic_partitions
        if position.error is None and position.offset >= 0
    }


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux ``/proc/PID/status`` ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
