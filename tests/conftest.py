"""Suite-wide rules and the session's broker.

The broker fixtures (``app_url``, ``broker``) live here because two suites use them: the
integration tests and the Kafka half of the port contract suite (tests/contract).

In CI (``CI`` set) a skipped integration test is turned into a failure: the integration suite
must really run against a broker there, never quietly pass by skipping. Only a run against an
external stack (``APP_URL`` set, see scripts/compose-test) may skip the tests that need to stop
or kill the service process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.apache_kafka import KafkaBrokerError, start_kafka
from support.brokers import Broker, selected_kind
from support.kafka_tools import wait_for_broker

from actors.devtools.local_broker import LocalBrokerError, start_local_broker


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    against_own_stack = not os.environ.get("APP_URL")  # an external stack may skip, see below
    if (
        in_ci
        and against_own_stack
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("integration") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI: {report.longrepr}"
    return report


@pytest.fixture(scope="session")
def app_url() -> str | None:
    """``APP_URL`` when the tests drive an externally run service, else ``None``."""
    return os.environ.get("APP_URL", "").strip().rstrip("/") or None


@pytest.fixture(scope="session")
def broker(app_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh broker of the kind ``TEST_BROKER``
    names (Tansu by default) for this session; fails (never skips) when no broker can be had."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        wait_for_broker(configured)
        yield Broker(configured)
        return
    if app_url is not None:
        pytest.fail(
            "APP_URL is set but KAFKA_BOOTSTRAP_SERVERS is not: the tests need the broker the "
            "external service uses",
            pytrace=False,
        )
    kind = selected_kind()
    if kind != "tansu":
        folder = tmp_path_factory.mktemp("broker")
        try:
            kafka = start_kafka(kind, data_dir=folder / "data", log_dir=folder)
        except KafkaBrokerError as error:
            pytest.fail(f"could not start the {kind} broker: {error}", pytrace=False)
        try:
            yield Broker(kafka.bootstrap_servers, kind)
        finally:
            kafka.close()  # Kafka, then ZooKeeper; the data folder is removed
        return
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with log_path.open("wb") as output:
        try:
            local = start_local_broker(output=output)
        except LocalBrokerError as error:
            pytest.fail(f"could not start the local broker: {error}", pytrace=False)
    try:
        wait_for_broker(local.bootstrap_servers)
        if not local.alive():  # Tansu on a busy port panics and exits 0; someone else answered
            pytest.fail(
                f"the local broker exited (code {local.process.returncode}) after start-up; "
                f"see {log_path}",
                pytrace=False,
            )
        yield Broker(local.bootstrap_servers, "tansu")
    finally:
        local.stop()  # SIGINT: Tansu exits at once (SIGTERM waits for clients)
