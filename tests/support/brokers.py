"""Brokers: which kind the suite runs on, the session's broker, and brokers of a test's own,
which it may pause (``SIGSTOP``), continue (``SIGCONT``) and stop.

``TEST_BROKER`` chooses the kind for the whole integration suite: ``tansu`` (the default, a
Kafka-compatible broker in memory), ``kafka-zk`` (Apache Kafka 3.4 with ZooKeeper, as in
docker-compose.yml) or ``kafka-kraft`` (the newest Apache Kafka 4.x in KRaft mode); see
``apache_kafka.py``.

A paused broker process keeps its sockets: connections stay open and new ones are accepted by
the kernel, but nothing is answered. That is a broker *stall* (a long GC pause, a frozen VM), a
different fault from a cut network path (see ``proxy.py``): requests in flight time out on the
client while the broker may still act on them later.

Each kind of broker is one entry of :data:`BROKER_KINDS`.

Synopsis::

    broker = start_broker(selected_kind(), log_dir=tmp_path)
    broker.pause()       # SIGSTOP
    broker.resume()      # SIGCONT
    broker.stop()        # and, for Apache Kafka, its ZooKeeper; data folder removed
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from actors.devtools.local_broker import start_local_broker

from .apache_kafka import KafkaBroker, start_kafka

__all__ = [
    "BROKER_KINDS",
    "Broker",
    "OwnBrokerProcess",
    "selected_kind",
    "start_broker",
]


@attrs.frozen
class Broker:
    """The session's broker, which answered ``list_topics()``, and its kind (``external`` for
    ``KAFKA_BOOTSTRAP_SERVERS``)."""

    bootstrap_servers: str
    kind: str = "external"


@attrs.define
class OwnBrokerProcess:
    """One broker process: where to reach it, and how to pause, continue and stop it.

    ``kafka`` is set for Apache Kafka (to stop and start the same broker again)."""

    kind: str
    bootstrap_servers: str
    _process: subprocess.Popen[bytes]
    _stop: Callable[[], None]
    kafka: KafkaBroker | None = None
    paused: bool = False

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The broker's process (for Apache Kafka, the latest one started)."""
        if self.kafka is not None and self.kafka.kafka is not None:
            return self.kafka.kafka
        return self._process

    def pause(self) -> None:
        """Stop the process where it stands (``SIGSTOP``): nothing is answered until resume."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let the process run again (``SIGCONT``); harmless when it is not paused."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Continue (a stopped process would not act on the stop signal), then stop it."""
        self.resume()
        self._stop()


def _start_tansu(log_dir: Path, port: int, advertised_port: int | None) -> OwnBrokerProcess:
    """A fresh Tansu (memory storage)."""
    with (log_dir / "tansu-own.log").open("ab") as output:
        local = start_local_broker(port, advertised_port=advertised_port, output=output)
    return OwnBrokerProcess("tansu", local.bootstrap_servers, local.process, local.stop)


def _kafka_starter(kind: str) -> Callable[[Path, int, int | None], OwnBrokerProcess]:
    def start(log_dir: Path, port: int, advertised_port: int | None) -> OwnBrokerProcess:
        """A fresh Apache Kafka (and ZooKeeper) with its data folder under ``log_dir``."""
        kafka = start_kafka(
            kind,
            data_dir=log_dir / f"{kind}-data",
            log_dir=log_dir,
            port=port or None,
            advertised_port=advertised_port,
        )
        assert kafka.kafka is not None
        return OwnBrokerProcess(kind, kafka.bootstrap_servers, kafka.kafka, kafka.close, kafka)

    return start


#: Every kind of broker, by name (``TEST_BROKER``, and the test id of the stall tests).
BROKER_KINDS: Mapping[str, Callable[[Path, int, int | None], OwnBrokerProcess]] = {
    "tansu": _start_tansu,
    "kafka-zk": _kafka_starter("kafka-zk"),
    "kafka-kraft": _kafka_starter("kafka-kraft"),
}


def selected_kind() -> str:
    """The kind ``TEST_BROKER`` names (``tansu`` when unset).

    Raises:
        ValueError: an unknown kind.
    """
    kind = os.environ.get("TEST_BROKER", "").strip() or "tansu"
    if kind not in BROKER_KINDS:
        raise ValueError(f"TEST_BROKER={kind!r}: expected one of {', '.join(BROKER_KINDS)}")
    return kind


def start_broker(
    kind: str, *, log_dir: Path, port: int = 0, advertised_port: int | None = None
) -> OwnBrokerProcess:
    """Start a fresh broker of ``kind`` (on ``port``, or a free one), which tells clients to
    connect to ``advertised_port`` (a proxy) if given. Tansu accepts connections but may not
    answer yet; Apache Kafka has answered a metadata request."""
    return BROKER_KINDS[kind](log_dir, port, advertised_port)
