"""The Apache Kafka brokers of the integration suite run docker-compose.yml's broker settings.

``support/apache_kafka.py`` writes the compose file's Kafka service settings as
server.properties keys; this keeps the two in step, so that the broker the suite's ``kafka-zk``
leg exercises is configured as the compose stack's.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support.apache_kafka import (
    COMPOSE_BROKER_SETTINGS,
    COMPOSE_ZOOKEEPER_SETTINGS,
    KRAFT_BROKER_SETTINGS,
    TEST_ONLY_SETTINGS,
    ZK_DISTRIBUTION,
    cluster_id_from,
)

from .container_files import parse_listeners, read_compose, service_environment

#: Settings whose values are addresses: the same listeners, on this machine's free ports.
ADDRESSES = {"listeners", "advertised.listeners", "zookeeper.connect"}

#: Settings that exist only with ZooKeeper (KRaft has no broker.id either: node.id), and the
#: listener layout, which KRaft's single node has its own of (a CONTROLLER listener).
NOT_KRAFT = {
    "zookeeper.connect",
    "broker.id",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
}


def _server_property(variable: str) -> str:
    """``KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS`` -> ``group.initial.rebalance.delay.ms``, as
    Confluent's images translate their environment."""
    return variable.removeprefix("KAFKA_").lower().replace("_", ".")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose()


@pytest.fixture(scope="module")
def compose_kafka(compose: dict[str, Any]) -> dict[str, str]:
    environment = service_environment(compose["services"]["kafka"])
    return {_server_property(name): value for name, value in environment.items()}


def test_every_compose_kafka_setting_is_the_fixtures(compose_kafka: dict[str, str]) -> None:
    """The kafka-zk broker has exactly the compose Kafka service's settings, with the same
    values except the addresses, which name the same listeners."""
    assert set(COMPOSE_BROKER_SETTINGS) == set(compose_kafka)
    for key, value in compose_kafka.items():
        if key not in ADDRESSES:
            assert COMPOSE_BROKER_SETTINGS[key] == value, key
    for key in ("listeners", "advertised.listeners"):
        ours = COMPOSE_BROKER_SETTINGS[key].format(
            port=1, internal_port=2, advertised_port=3, zookeeper_port=4
        )
        assert list(parse_listeners(ours)) == list(parse_listeners(compose_kafka[key])), key


def test_zookeeper_is_the_compose_files(compose: dict[str, Any]) -> None:
    """ZooKeeper runs with the compose file's tick time, and the broker connects to its client
    port."""
    environment = service_environment(compose["services"]["zookeeper"])
    assert set(environment) == {"ZOOKEEPER_CLIENT_PORT", "ZOOKEEPER_TICK_TIME"}
    assert COMPOSE_ZOOKEEPER_SETTINGS["tickTime"] == environment["ZOOKEEPER_TICK_TIME"]
    assert COMPOSE_ZOOKEEPER_SETTINGS["clientPort"] == "{zookeeper_port}"
    assert COMPOSE_BROKER_SETTINGS["zookeeper.connect"].endswith(":{zookeeper_port}")


def test_kraft_broker_shares_the_compose_group_and_replication_settings(
    compose_kafka: dict[str, str],
) -> None:
    """The KRaft broker has every compose setting that is not about ZooKeeper or listeners,
    with the same value."""
    for key, value in compose_kafka.items():
        if key not in ADDRESSES | NOT_KRAFT:
            assert KRAFT_BROKER_SETTINGS.get(key) == value, key


def test_test_only_settings_override_nothing_of_the_compose_file(
    compose_kafka: dict[str, str],
) -> None:
    """What only the tests set is apart from what the compose file sets."""
    assert not set(TEST_ONLY_SETTINGS) & set(compose_kafka)
    assert not set(TEST_ONLY_SETTINGS) & set(KRAFT_BROKER_SETTINGS)


def test_zookeeper_broker_is_the_compose_images_kafka_version(compose: dict[str, Any]) -> None:
    """cp-kafka 7.4.x is Apache Kafka 3.4.x: the kafka-zk leg runs a 3.4 broker."""
    image = compose["services"]["kafka"]["image"]
    assert image.startswith("confluentinc/cp-kafka:7.4."), image
    assert ZK_DISTRIBUTION.version.startswith("3.4."), ZK_DISTRIBUTION.version


def test_a_kraft_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage's parser reads ``-t -abc…`` as an option; one UUID in 64 encodes so."""
    dashed = b"\xf8" + bytes(15)  # base64url "-A…"
    plain = bytes(16)
    assert base64.urlsafe_b64encode(dashed).startswith(b"-")
    assert cluster_id_from([dashed, plain]) == base64.urlsafe_b64encode(plain).decode().rstrip("=")
