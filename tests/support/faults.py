"""Brokers a test may fault: one behind a cuttable proxy, one it may pause.

Synopsis::

    proxied.proxy.cut(); proxied.proxy.restore()         # ProxiedBroker: a cut network path
    own.broker.pause(); own.broker.resume()              # OwnBroker: a stalled broker process
"""

from __future__ import annotations

import attrs

from .brokers import OwnBrokerProcess
from .kafka_tools import KafkaTools
from .proxy import TcpProxy

__all__ = ["OwnBroker", "ProxiedBroker"]


@attrs.frozen
class ProxiedBroker:
    """A broker of its own (of the suite's kind) behind a :class:`TcpProxy` that a test may
    cut and restore.

    The broker advertises the proxy's address, so every client (the service's and ``kafka``, an
    independent reader and producer) reaches it only through the proxy. Read with ``kafka``
    only while the proxy forwards.
    """

    broker: OwnBrokerProcess
    proxy: TcpProxy
    kafka: KafkaTools

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.proxy.listen_port}"


@attrs.frozen
class OwnBroker:
    """A broker process of this test's own (so it may be paused, or for Apache Kafka stopped
    and started again) and a client set on it."""

    broker: OwnBrokerProcess
    kafka: KafkaTools

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers
