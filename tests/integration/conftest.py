"""Integration fixtures: a real broker, the real service process, real HTTP, independent clients.

Fixtures and hooks only; what they are built from lives in the ``support`` package
(tests/support).

Two modes:

- **Default**: the session starts a fresh broker of the kind ``TEST_BROKER`` names (``tansu``,
  the default, ``kafka-zk`` or ``kafka-kraft``; see support/brokers.py), or uses
  ``KAFKA_BOOTSTRAP_SERVERS`` when it is set, and each test starts the service as a subprocess
  (``python -m actors``) on its own topic and consumer group, with fast consumer-group timings
  and a free HTTP port. Nothing is ever skipped in this mode; a broker that cannot be had fails
  the tests.
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

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.apache_kafka import KafkaBrokerError
from support.brokers import Broker, OwnBrokerProcess, selected_kind, start_broker
from support.faults import OwnBroker, ProxiedBroker
from support.kafka_tools import KafkaTools, wait_for_broker
from support.proxy import TcpProxy
from support.services import Services, Spawn

from actors.devtools.local_broker import LocalBrokerError, free_port
from actors.runtime.settings import SETTINGS

HERE = Path(__file__).resolve().parent

#: Bound on any single test; the whole integration run should take well under two minutes.
TEST_TIMEOUT = 90

_DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}


# --- marking and reporting -------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration is an integration test with a bounded run time.

    Tests marked ``durable_broker`` (a broker restart that keeps the log) are deselected, not
    skipped, when the suite runs on Tansu, whose memory storage forgets everything on a
    restart: the run says how many were deselected, and CI runs them on the Kafka legs.
    """
    durable = selected_kind() != "tansu"
    kept, deselected = [], []
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))
            if item.get_closest_marker("durable_broker") is not None and not durable:
                deselected.append(item)
                continue
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


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


# --- the broker (the session's broker and app_url are in tests/conftest.py) -----------------


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


@pytest.fixture(scope="session")
def kafka(broker: Broker) -> Iterator[KafkaTools]:
    """Independent producer and reader on the test broker."""
    tools = KafkaTools(broker.bootstrap_servers)
    yield tools
    tools.close()


# --- the service -----------------------------------------------------------------------------


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


@pytest.fixture
def proxied_broker(service: Services, tmp_path: Path) -> Iterator[ProxiedBroker]:
    """A fresh broker of the suite's kind reachable only through a cuttable proxy; the services
    this test spawned are stopped before it (with the path restored, so that they stop
    promptly)."""
    if service.external:
        pytest.skip("cuts the path between the service and its broker; APP_URL is external")
    proxy_port, broker_port = free_port(), free_port()
    with TcpProxy(listen_port=proxy_port, target_port=broker_port) as proxy:
        own = _own_broker(selected_kind(), tmp_path, port=broker_port, advertised_port=proxy_port)
        try:
            address = f"127.0.0.1:{proxy_port}"
            wait_for_broker(address)
            if not own.alive():
                pytest.fail(f"the proxied broker exited (code {own.process.returncode})")
            tools = KafkaTools(address)
            try:
                yield ProxiedBroker(broker=own, proxy=proxy, kafka=tools)
            finally:
                proxy.restore()
                service.close()
                tools.close()
        finally:
            own.stop()


@pytest.fixture(params=[selected_kind()])
def stallable_broker(
    request: pytest.FixtureRequest, service: Services, tmp_path: Path
) -> Iterator[OwnBroker]:
    """A fresh broker of the suite's kind (``TEST_BROKER``, the test id) that the test may
    pause and resume, or (Apache Kafka) stop and start again; the services this test spawned
    are stopped before it (with the broker running again)."""
    if service.external:
        pytest.skip("pauses the service's broker; APP_URL is external")
    broker = _own_broker(request.param, tmp_path)
    try:
        wait_for_broker(broker.bootstrap_servers)
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


def _own_broker(
    kind: str, log_dir: Path, *, port: int = 0, advertised_port: int | None = None
) -> OwnBrokerProcess:
    """A broker of a test's own, or the test fails (never skips) naming why."""
    try:
        return start_broker(kind, log_dir=log_dir, port=port, advertised_port=advertised_port)
    except (KafkaBrokerError, LocalBrokerError) as error:
        pytest.fail(f"could not start a {kind} broker: {error}", pytrace=False)
